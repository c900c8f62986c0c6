/**
 * Watches this host's wall clock against its monotonic clock and reports a jump (NTP stepping the
 * clock, an operator's `date -s`, a VM host resumed from suspend with a stale clock) as a
 * clock-jump event, which raises an alarm.
 *
 * fitha's own timing never reads the wall clock (leases, heartbeats and grace periods run on
 * monotonic clocks and on etcd's server-side TTLs), so a jump breaks no decision. It does make this
 * host's event times and logs disagree with the others', which misleads whoever reconstructs an
 * incident from them, and it usually means time synchronisation is broken: worth an operator's look.
 */
import type { Clock } from "../core/clock.ts";
import { logger } from "../log.ts";

const log = logger("agent");

/** How often the clocks are compared: a jump is reported within this. */
export const clockCheckIntervalMs = 10_000;
/**
 * Divergence between the two clocks over one interval that counts as a jump. NTP slews small
 * errors at most 0.5 ms/s (5 ms per interval) and a busy machine delays a check by far less than
 * this, so only a step of the clock gets near it.
 */
export const clockJumpThresholdMs = 2_000;

export interface ClockWatchOptions {
  readonly clock: Clock;
  readonly now: () => Date;
  /** Called with how far the wall clock moved beyond (+) or short of (−) the monotonic clock. */
  readonly onJump: (jumpMs: number, reason: string) => void;
}

/** How far the wall clock moved beyond (+) or short of (−) the monotonic clock between two readings. */
export function wallClockJumpMs(before: { monoMs: number; wallMs: number }, after: { monoMs: number; wallMs: number }): number {
  return after.wallMs - before.wallMs - (after.monoMs - before.monoMs);
}

export class ClockWatch {
  readonly #stopped = Promise.withResolvers<void>();
  #stopping = false;
  readonly done: Promise<void>;

  constructor(readonly options: ClockWatchOptions) {
    this.done = this.#run();
  }

  async stop(): Promise<void> {
    this.#stopping = true;
    this.#stopped.resolve();
    await this.done;
  }

  async #run(): Promise<void> {
    const { clock, now, onJump } = this.options;
    const read = () => ({ monoMs: clock.nowMs(), wallMs: now().getTime() });
    let before = read();
    while (!this.#stopping) {
      await Promise.race([clock.sleep(clockCheckIntervalMs), this.#stopped.promise]);
      if (this.#stopping) return;
      const after = read();
      const jumpMs = wallClockJumpMs(before, after);
      const previous = before;
      before = after;
      if (Math.abs(jumpMs) < clockJumpThresholdMs) continue;
      const seconds = (ms: number) => `${(ms / 1000).toFixed(1)} s`;
      const reason = `the wall clock jumped ${jumpMs > 0 ? "forward" : "back"} ${seconds(Math.abs(jumpMs))} (it moved ${seconds(after.wallMs - previous.wallMs)} while ${seconds(after.monoMs - previous.monoMs)} passed): fitha's timing is unaffected (monotonic clocks), but this host's event and log times are off; check time synchronisation (chronyc tracking, timedatectl)`;
      log.warn("clock jump", { jump_ms: Math.round(jumpMs) });
      onJump(jumpMs, reason);
    }
  }
}
