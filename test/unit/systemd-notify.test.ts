/**
 * The notify protocol's logic on virtual time with a recording transport: what the environment
 * means, which messages go out and when, keep-alives only while the daemon's loop moves, and a
 * service manager that cannot be reached never failing the daemon. (Real datagrams from a real
 * lockd: test/lease/lockd-notify.test.ts.)
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { Writable } from "node:stream";
import { keepServiceInformed, notifyEnvironment, SystemdNotifier, type NotifyTransport } from "../../src/cli/systemd-notify.ts";
import { VirtualClock } from "../../src/core/clock.ts";
import { configureLogging } from "../../src/log.ts";

const logLines: string[] = [];
beforeAll(() =>
  configureLogging({
    level: "info",
    format: "json",
    stream: new Writable({
      write: (chunk, _encoding, done) => {
        logLines.push(String(chunk));
        done();
      },
    }),
  }),
);
afterAll(() => configureLogging({ level: "info", format: "human" }));

function recorder(failing: () => boolean = () => false): NotifyTransport & { sent: string[] } {
  const sent: string[] = [];
  return {
    sent,
    send(message) {
      if (failing()) throw new Error("sendto @x: Resource temporarily unavailable (EAGAIN)");
      sent.push(message);
    },
    close() {},
  };
}

test("the environment: no socket means no notifications; the watchdog pings at half its timeout, only for its own pid", () => {
  expect(notifyEnvironment({}, 42)).toEqual({ socket: undefined, watchdogPingIntervalMs: undefined });
  expect(notifyEnvironment({ WATCHDOG_USEC: "20000000" }, 42)).toEqual({ socket: undefined, watchdogPingIntervalMs: undefined });
  expect(notifyEnvironment({ NOTIFY_SOCKET: "/run/systemd/notify" }, 42)).toEqual({ socket: "/run/systemd/notify", watchdogPingIntervalMs: undefined });
  expect(notifyEnvironment({ NOTIFY_SOCKET: "@abstract", WATCHDOG_USEC: "20000000" }, 42)).toEqual({ socket: "@abstract", watchdogPingIntervalMs: 10_000 });
  expect(notifyEnvironment({ NOTIFY_SOCKET: "@abstract", WATCHDOG_USEC: "20000000", WATCHDOG_PID: "42" }, 42).watchdogPingIntervalMs).toBe(10_000);
  // Meant for another process (a parent that started us): not ours to feed.
  expect(notifyEnvironment({ NOTIFY_SOCKET: "@abstract", WATCHDOG_USEC: "20000000", WATCHDOG_PID: "41" }, 42).watchdogPingIntervalMs).toBeUndefined();
  expect(notifyEnvironment({ NOTIFY_SOCKET: "@abstract", WATCHDOG_USEC: "nonsense" }, 42).watchdogPingIntervalMs).toBeUndefined();
});

test("messages: READY with its status, STATUS only when it changed and on one line, STOPPING; WATCHDOG only when enabled", () => {
  const transport = recorder();
  const notifier = new SystemdNotifier(transport, undefined);
  notifier.ready("serving");
  notifier.status("serving");
  notifier.status("host lease warn\n(late)");
  notifier.watchdog();
  notifier.stopping("stopping on SIGTERM");
  expect(transport.sent).toEqual(["READY=1\nSTATUS=serving\n", "STATUS=host lease warn (late)\n", "STOPPING=1\nSTATUS=stopping on SIGTERM\n"]);

  const watched = recorder();
  new SystemdNotifier(watched, 500).watchdog();
  expect(watched.sent).toEqual(["WATCHDOG=1\n"]);
});

test("keep-alives go out while the daemon's loop moves and stop while it looks stuck; status changes follow", async () => {
  const clock = new VirtualClock();
  const transport = recorder();
  const notifier = new SystemdNotifier(transport, 500);
  let stall: string | undefined;
  let status = "leader";
  const informing = keepServiceInformed(notifier, clock, { stalled: () => stall, status: () => status });
  await clock.advance(1_000);
  const pings = () => transport.sent.filter((m) => m === "WATCHDOG=1\n").length;
  expect(pings()).toBe(3); // at 0, 500 and 1000 ms
  expect(transport.sent).toContain("STATUS=leader\n");

  stall = "the renewal loop has not moved for 5000 ms";
  const before = pings();
  await clock.advance(2_000);
  expect(pings()).toBe(before);
  expect(logLines.filter((l) => l.includes("looks stuck"))).toHaveLength(1); // logged once, not per tick

  stall = undefined;
  status = "standby";
  await clock.advance(500);
  expect(pings()).toBe(before + 1);
  expect(transport.sent.at(-1)).toBe("STATUS=standby\n");
  await informing.stop();
});

test("a service manager that cannot be reached never fails the daemon: the failure is logged once per run of failures", () => {
  logLines.length = 0;
  let failing = true;
  const transport = recorder(() => failing);
  const notifier = new SystemdNotifier(transport, 500);
  notifier.ready("serving");
  notifier.watchdog();
  notifier.watchdog();
  expect(logLines.filter((l) => l.includes("cannot notify the service manager"))).toHaveLength(1);
  expect(logLines[0]).toContain("EAGAIN");
  failing = false;
  notifier.watchdog();
  expect(transport.sent).toEqual(["WATCHDOG=1\n"]);
  failing = true;
  notifier.watchdog();
  expect(logLines.filter((l) => l.includes("cannot notify the service manager"))).toHaveLength(2);
});

test("without NOTIFY_SOCKET everything is a no-op and no loop runs", async () => {
  const notifier = new SystemdNotifier(undefined, undefined);
  notifier.ready("x");
  notifier.watchdog();
  notifier.stopping("y");
  const clock = new VirtualClock();
  let asked = 0;
  const informing = keepServiceInformed(notifier, clock, { stalled: () => (asked++, undefined), status: () => "" });
  await clock.advance(5_000);
  expect(asked).toBe(0);
  await informing.stop();
});
