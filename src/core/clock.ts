/**
 * Time, injected. Decision and lease logic never read the wall clock or call setTimeout
 * themselves: they take a Clock, so the daemons run them on the machine's monotonic clock, tests
 * and the simulator on virtual time, and the same code is exercised in all three.
 *
 * All times are milliseconds on a monotonic clock local to one host: they are compared only with
 * other readings of the same clock on the same host, never across hosts (no clock sync needed).
 */
export interface Clock {
  /** Milliseconds since an arbitrary fixed point; never goes backwards. */
  nowMs(): number;
  /** Resolves after `ms` milliseconds of this clock. */
  sleep(ms: number): Promise<void>;
}

/**
 * The process's monotonic clock. (performance.now() is CLOCK_MONOTONIC, which stops during
 * suspend; the daemons switch to CLOCK_BOOTTIME through ffi/libc.ts, which keeps counting.)
 */
export const monotonicClock: Clock = {
  nowMs: () => performance.now(),
  sleep: (ms) => new Promise((resolve) => setTimeout(resolve, Math.max(0, ms))),
};

/**
 * Virtual time for tests and the simulator: time stands still until `run()` advances it to the
 * next pending sleep, so hours of lease timeouts pass in milliseconds, deterministically.
 */
interface Timer {
  readonly atMs: number;
  /** Order of creation: timers due at the same instant fire first-come first-served. */
  readonly sequence: number;
  readonly wake: () => void;
}

export class VirtualClock implements Clock {
  #nowMs: number;
  #sequence = 0;
  readonly #timers: Timer[] = [];

  constructor(startMs = 1_000_000) {
    this.#nowMs = startMs;
  }

  nowMs(): number {
    return this.#nowMs;
  }

  sleep(ms: number): Promise<void> {
    if (!(ms >= 0)) throw new RangeError(`sleep(${ms})`);
    return new Promise((wake) => {
      this.#timers.push({ atMs: this.#nowMs + ms, sequence: this.#sequence++, wake });
    });
  }

  /** Moves time forward by `ms`, waking every sleeper due by then, in order. */
  async advance(ms: number): Promise<void> {
    const targetMs = this.#nowMs + ms;
    for (;;) {
      await settle();
      const next = this.#earliest();
      if (next === undefined || next.atMs > targetMs) break;
      this.#fire(next);
    }
    this.#nowMs = targetMs;
    await settle();
  }

  /**
   * Runs `work` to completion, jumping time to each next sleeper whenever nothing else can make
   * progress. Fails after `maxSteps` timer firings or if `work` waits on something that is not
   * this clock (it would never settle).
   */
  async run<T>(work: Promise<T>, maxSteps = 1_000_000): Promise<T> {
    let outcome: { ok: true; value: T } | { ok: false; error: unknown } | undefined;
    work.then(
      (value) => (outcome = { ok: true, value }),
      (error: unknown) => (outcome = { ok: false, error }),
    );
    for (let step = 0; step <= maxSteps; step++) {
      await settle();
      if (outcome !== undefined) {
        if (outcome.ok) return outcome.value;
        throw outcome.error;
      }
      const next = this.#earliest();
      if (next === undefined) throw new Error("VirtualClock.run: the work waits on something other than this clock");
      this.#fire(next);
    }
    throw new Error(`VirtualClock.run: not done after ${maxSteps} timer firings`);
  }

  #earliest(): Timer | undefined {
    let best: Timer | undefined;
    for (const timer of this.#timers) {
      if (best === undefined || timer.atMs < best.atMs || (timer.atMs === best.atMs && timer.sequence < best.sequence)) best = timer;
    }
    return best;
  }

  #fire(timer: Timer): void {
    this.#timers.splice(this.#timers.indexOf(timer), 1);
    this.#nowMs = Math.max(this.#nowMs, timer.atMs);
    timer.wake();
  }
}

/** Lets every pending promise reaction run (a macrotask turn drains the microtask queue). */
function settle(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}
