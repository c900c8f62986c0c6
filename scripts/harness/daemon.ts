/**
 * A fitha daemon in a namespace, supervised as systemd would with Restart=on-failure: one that
 * exits on its own with a failure (lockd does when its host lease is lost for good) is started
 * again after `restartDelayMs`. A kill by the harness (a fault: SIGKILL) leaves it down until
 * `start()`, so that a scenario decides when it comes back. SIGSTOP/SIGCONT pass through.
 */
import { closeSync, openSync } from "node:fs";
import { terminate } from "../../test/helpers/terminate.ts";
import { inNamespace } from "./namespace-command.ts";

export const restartDelayMs = 1_000;
/**
 * Quick failures in a row after which the harness stops restarting (a daemon that cannot start at
 * all), like systemd's start limit; a process that ran for quickFailureMs starts the count anew.
 */
const maxRestarts = 20;
const quickFailureMs = 10_000;
const stopGraceMs = 3_000;

export class Daemon {
  #process: Bun.Subprocess | undefined;
  #wanted = false;
  #restarts = 0;
  readonly #listeners: Array<(pid: number) => void> = [];

  constructor(
    readonly name: string,
    readonly netns: string,
    /** Read at every start: a command line can change (a host's new hypervisor after a power cycle). */
    readonly command: () => readonly string[],
    readonly logFile: string,
  ) {}

  get running(): boolean {
    return this.#process !== undefined && this.#process.exitCode === null && this.#process.signalCode === null;
  }

  /** Called with the pid of every process this daemon starts (cgroups follow restarts). */
  onStart(listener: (pid: number) => void): void {
    this.#listeners.push(listener);
  }

  start(): void {
    if (this.running) return;
    this.#wanted = true;
    // Appended to: the log of every incarnation stays, as journald keeps them.
    const log = openSync(this.logFile, "a");
    let child: Bun.Subprocess;
    try {
      child = inNamespace(this.netns, this.command(), { stdout: "ignore", stderr: log });
    } finally {
      closeSync(log);
    }
    this.#process = child;
    const startedMs = performance.now();
    for (const listener of this.#listeners) listener(child.pid);
    void child.exited.then(() => {
      if (this.#process !== child || !this.#wanted) return;
      if (performance.now() - startedMs >= quickFailureMs) this.#restarts = 0;
      if (child.exitCode === 0 || ++this.#restarts > maxRestarts) return;
      // Restart=on-failure, RestartSec=1.
      setTimeout(() => {
        if (this.#process === child && this.#wanted) this.start();
      }, restartDelayMs);
    });
  }

  /** A fault: SIGKILL, and down until start(). Resolves once the process is gone. */
  async kill(): Promise<void> {
    this.#wanted = false;
    const child = this.#process;
    child?.kill("SIGKILL");
    await child?.exited;
  }

  pause(): void {
    this.#process?.kill("SIGSTOP");
  }

  resume(): void {
    this.#process?.kill("SIGCONT");
  }

  /** Teardown: SIGCONT (a stopped process cannot act on SIGTERM), SIGTERM, then SIGKILL. */
  async stop(): Promise<void> {
    this.#wanted = false;
    const child = this.#process;
    if (child === undefined) return;
    child.kill("SIGCONT");
    await terminate(child, stopGraceMs);
  }
}
