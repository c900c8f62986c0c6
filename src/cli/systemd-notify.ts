/**
 * systemd's notify protocol (sd_notify(3)) for the daemons, which run as Type=notify services
 * (scripts/systemd/): READY=1 once a daemon really serves, STATUS= lines for `systemctl status`,
 * STOPPING=1 at shutdown, and WATCHDOG=1 keep-alives while the daemon's own loop makes progress
 * (WatchdogSec=: systemd kills and restarts a daemon whose keep-alives stop).
 *
 * Each message is one datagram of KEY=VALUE lines to the unix socket systemd names in
 * $NOTIFY_SOCKET (a path, or "@name" for an abstract address). Without $NOTIFY_SOCKET (run by
 * hand, by tests, by the harness) every call is a no-op. A send never throws into the daemon:
 * the service manager being unreachable is no reason for a lease daemon to stop, so a failure is
 * logged (once per run of failures) and the daemon goes on.
 */
import { close, sendUnixDatagram, unixDatagramSocket } from "../../ffi/libc.ts";
import type { Clock } from "../core/clock.ts";
import { logger } from "../log.ts";

const log = logger("systemd");

/** Where the messages go; throws on failure (the notifier catches). */
export interface NotifyTransport {
  send(message: string): void;
  close(): void;
}

/** The datagram socket of a real service manager. */
export function unixTransport(address: string): NotifyTransport {
  let fd: number | undefined;
  return {
    send(message) {
      fd ??= unixDatagramSocket();
      sendUnixDatagram(fd, address, Buffer.from(message, "utf8"));
    },
    close() {
      if (fd !== undefined) close(fd);
      fd = undefined;
    },
  };
}

/** What systemd told this process through its environment. */
export interface NotifyEnvironment {
  /** $NOTIFY_SOCKET; undefined when not run by a service manager that listens. */
  readonly socket: string | undefined;
  /** Half of $WATCHDOG_USEC (as sd_watchdog_enabled(3) advises), when the watchdog is meant for this process. */
  readonly watchdogPingIntervalMs: number | undefined;
}

/**
 * Reads $NOTIFY_SOCKET, $WATCHDOG_USEC and $WATCHDOG_PID. The watchdog counts only when
 * $WATCHDOG_PID is absent or this process's pid (otherwise it was meant for a parent that ran us).
 */
export function notifyEnvironment(env: Readonly<Record<string, string | undefined>>, pid: number): NotifyEnvironment {
  const socket = env["NOTIFY_SOCKET"] === undefined || env["NOTIFY_SOCKET"] === "" ? undefined : env["NOTIFY_SOCKET"];
  const usec = Number(env["WATCHDOG_USEC"]);
  const watchdogPid = env["WATCHDOG_PID"];
  const forUs = watchdogPid === undefined || watchdogPid === "" || Number(watchdogPid) === pid;
  const watchdogPingIntervalMs = socket !== undefined && forUs && Number.isSafeInteger(usec) && usec > 0 ? usec / 1000 / 2 : undefined;
  return { socket, watchdogPingIntervalMs };
}

/** A STATUS= value is one line. */
function oneLine(text: string): string {
  return text.replaceAll(/[\r\n]+/g, " ");
}

export class SystemdNotifier {
  #lastStatus: string | undefined;
  #failing = false;

  constructor(
    readonly transport: NotifyTransport | undefined,
    readonly watchdogPingIntervalMs: number | undefined,
  ) {}

  /**
   * From this process's environment, which it then removes (like sd_notify's unset_environment):
   * a process fitha starts must not talk to systemd in this service's name.
   */
  static fromProcess(): SystemdNotifier {
    const { socket, watchdogPingIntervalMs } = notifyEnvironment(process.env, process.pid);
    for (const name of ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"]) delete process.env[name];
    return new SystemdNotifier(socket === undefined ? undefined : unixTransport(socket), watchdogPingIntervalMs);
  }

  get enabled(): boolean {
    return this.transport !== undefined;
  }

  ready(status: string): void {
    this.#lastStatus = oneLine(status);
    this.#send(`READY=1\nSTATUS=${this.#lastStatus}`);
  }

  /** Sends STATUS= only when it changed. */
  status(status: string): void {
    const line = oneLine(status);
    if (line === this.#lastStatus) return;
    this.#lastStatus = line;
    this.#send(`STATUS=${line}`);
  }

  stopping(status: string): void {
    this.#lastStatus = oneLine(status);
    this.#send(`STOPPING=1\nSTATUS=${this.#lastStatus}`);
  }

  watchdog(): void {
    if (this.watchdogPingIntervalMs !== undefined) this.#send("WATCHDOG=1");
  }

  close(): void {
    this.transport?.close();
  }

  #send(message: string): void {
    if (this.transport === undefined) return;
    try {
      this.transport.send(`${message}\n`);
      if (this.#failing) log.info("talking to the service manager again");
      this.#failing = false;
    } catch (error) {
      if (!this.#failing) log.warn("cannot notify the service manager (systemd); going on without it", { error: error instanceof Error ? error.message : String(error) });
      this.#failing = true;
    }
  }
}

/** What a daemon tells the keep-alive loop on each tick. */
export interface ServiceHealth {
  /** Why the daemon's own loop looks stuck (no WATCHDOG=1 then), or undefined while it makes progress. */
  stalled(): string | undefined;
  /** The STATUS= line now (sent when it changed). */
  status(): string;
}

/** How often STATUS= is refreshed when no watchdog asks for more. */
const statusIntervalMs = 1_000;

/**
 * While the daemon runs: every tick (half the watchdog timeout, at most a second), WATCHDOG=1 if
 * `health.stalled()` finds the daemon's loop moving, and STATUS= when it changed. A keep-alive
 * sent from a timer alone would only prove the event loop turns; asking the daemon whether its
 * own loop made progress lets systemd also replace a daemon whose loop is wedged (a promise that
 * never settles). Resolves `stop()` once the loop has ended.
 */
export function keepServiceInformed(notifier: SystemdNotifier, clock: Clock, health: ServiceHealth): { stop(): Promise<void> } {
  if (!notifier.enabled) return { stop: async () => {} };
  const tickMs = Math.min(statusIntervalMs, notifier.watchdogPingIntervalMs ?? statusIntervalMs);
  let stopped = false;
  let wake: (() => void) | undefined;
  let stallLogged = false;
  const loop = (async () => {
    while (!stopped) {
      const stall = health.stalled();
      if (stall === undefined) {
        notifier.watchdog();
        if (stallLogged) log.info("the daemon's loop moves again: keep-alives to systemd's watchdog resume");
        stallLogged = false;
      } else if (!stallLogged) {
        log.error("no keep-alive to systemd's watchdog: the daemon's loop looks stuck (systemd restarts it at WatchdogSec)", { why: stall });
        stallLogged = true;
      }
      notifier.status(health.status());
      await Promise.race([clock.sleep(tickMs), new Promise<void>((resolve) => (wake = resolve))]);
    }
  })();
  return {
    async stop() {
      stopped = true;
      wake?.();
      await loop;
    },
  };
}
