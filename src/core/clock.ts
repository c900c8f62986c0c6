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
  /** A binary min-heap on (atMs, sequence): the simulator keeps hundreds of sleepers and fires hundreds of thousands. */
  readonly #timers: Timer[] = [];

  constructor(startMs = 1_000_000) {
    this.#nowMs = startMs;
  }

  nowMs(): number {
    return this.#nowMs;
  }

  sleep(ms: number): Promise<void> {
    if (!(ms >= 0)) throw new RangeError(`sleep(${ms})`);
    return new Promise((wake) => this.#push({ atMs: this.#nowMs + ms, sequence: this.#sequence++, wake }));
  }

  /** Moves time forward by `ms`, waking every sleeper due by then, in order. */
  async advance(ms: number): Promise<void> {
    const targetMs = this.#nowMs + ms;
    for (;;) {
      await settle();
      const next = this.#timers[0];
      if (next === undefined || next.atMs > targetMs) break;
      this.#fireEarliest();
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
      if (this.#timers.length === 0) throw new Error("VirtualClock.run: the work waits on something other than this clock");
      this.#fireEarliest();
    }
    throw new Error(`VirtualClock.run: not done after ${maxSteps} timer firings`);
  }

  #push(timer: Timer): void {
    const heap = this.#timers;
    let at = heap.push(timer) - 1;
    while (at > 0) {
      const parent = (at - 1) >> 1;
      if (!earlier(timer, heap[parent]!)) break;
      heap[at] = heap[parent]!;
      at = parent;
    }
    heap[at] = timer;
  }

  #fireEarliest(): void {
    const heap = this.#timers;
    const first = heap[0]!;
    const last = heap.pop()!;
    if (heap.length > 0) {
      let at = 0;
      for (;;) {
        const left = 2 * at + 1;
        if (left >= heap.length) break;
        const child = left + 1 < heap.length && earlier(heap[left + 1]!, heap[left]!) ? left + 1 : left;
        if (!earlier(heap[child]!, last)) break;
        heap[at] = heap[child]!;
        at = child;
      }
      heap[at] = last;
    }
    this.#nowMs = Math.max(this.#nowMs, first.atMs);
    first.wake();
  }
}

function earlier(a: Timer, b: Timer): boolean {
  return a.atMs < b.atMs || (a.atMs === b.atMs && a.sequence < b.sequence);
}

/** Lets every pending promise reaction run (a macrotask turn drains the microtask queue). */
function settle(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}
