/**
 * A prefix watch that survives disconnects: the listener gets every revision under the prefix
 * exactly once, in order, however often the connection breaks. After a break it resumes from
 * the last revision delivered + 1; if etcd has compacted that history away, it reads the whole
 * prefix at one revision R, hands it over as a snapshot (which replaces whatever the listener
 * built), and watches from R + 1. Retries back off exponentially, with jitter so that many
 * agents do not reconnect in step, and give up after a bound; the state says how it goes.
 */
import type { Clock } from "../core/clock.ts";
import { errorMessage } from "../errors.ts";
import { logger } from "../log.ts";
import { KvError, type Kv, type KvChange, type KvEntry, type KvWatchEnd } from "./kv.ts";

const log = logger("store");

export interface PrefixListener {
  /** Everything under the prefix as of `revision`: replaces all that was delivered before. */
  onSnapshot(entries: readonly KvEntry[], revision: bigint): void;
  /** The changes of one revision, the one after the previous delivery's. */
  onRevision(revision: bigint, changes: readonly KvChange[]): void;
  /** Nothing more will come: retries ran out, or a listener call threw (`error`). */
  onFailed(error: Error): void;
}

export type WatcherState =
  /** Reading the prefix for a snapshot (at start, or after a compaction). */
  | { readonly kind: "resyncing"; readonly sinceMs: number }
  | { readonly kind: "connecting"; readonly sinceMs: number }
  | { readonly kind: "connected"; readonly sinceMs: number }
  /** Failing since `sinceMs` (the first failure of this run of failures). */
  | { readonly kind: "retrying"; readonly sinceMs: number; readonly attempts: number; readonly lastError: string }
  | { readonly kind: "stopped"; readonly sinceMs: number }
  | { readonly kind: "failed"; readonly sinceMs: number; readonly error: string };

export interface RetryPolicy {
  /** First wait after a failure; doubles with each failure in a row up to maxDelayMs. */
  readonly initialDelayMs: number;
  readonly maxDelayMs: number;
  /** Failing for this long without a successful watch ends the watcher (onFailed). */
  readonly giveUpAfterMs: number;
}

export const defaultRetryPolicy: RetryPolicy = { initialDelayMs: 200, maxDelayMs: 10_000, giveUpAfterMs: 15 * 60_000 };

export interface PrefixWatcherOptions {
  /** The listener already has everything up to this revision: resume after it, no snapshot. */
  readonly afterRevision?: bigint;
  readonly retry?: RetryPolicy;
  /** For the backoff jitter; injected so that the simulator is deterministic. */
  readonly random?: () => number;
}

export class PrefixWatcher {
  #state: WatcherState;
  #lastRevision: bigint | undefined;
  #stopping = false;
  readonly #stopped = Promise.withResolvers<"stopped">();
  readonly #retry: RetryPolicy;
  readonly #random: () => number;
  /** The next wait after a failure. */
  #delayMs: number;
  /** Settles when the watcher has stopped or failed. */
  readonly done: Promise<void>;

  constructor(
    private readonly kv: Kv,
    private readonly prefix: string,
    private readonly listener: PrefixListener,
    private readonly clock: Clock,
    options: PrefixWatcherOptions = {},
  ) {
    this.#lastRevision = options.afterRevision;
    this.#retry = options.retry ?? defaultRetryPolicy;
    this.#random = options.random ?? Math.random;
    this.#delayMs = this.#retry.initialDelayMs;
    this.#state = { kind: this.#lastRevision === undefined ? "resyncing" : "connecting", sinceMs: clock.nowMs() };
    this.done = this.#run();
  }

  get state(): WatcherState {
    return this.#state;
  }

  /** The last revision delivered (a snapshot's counts); undefined before the first delivery. */
  get lastRevision(): bigint | undefined {
    return this.#lastRevision;
  }

  async stop(): Promise<void> {
    this.#stopping = true;
    this.#stopped.resolve("stopped");
    await this.done;
  }

  async #run(): Promise<void> {
    while (!this.#stopping) {
      try {
        if (this.#lastRevision === undefined) await this.#resync();
        const end = await this.#watchUntilEnd();
        if (end === "stopped") break;
        if (end.kind === "compacted") {
          log.warn("watch history compacted; reading the whole prefix again", { cluster: this.kv.name, prefix: this.prefix, afterRevision: this.#lastRevision });
          this.#lastRevision = undefined;
          continue;
        }
        throw end.error;
      } catch (error) {
        if (this.#stopping) break;
        if (!(error instanceof KvError)) return this.#fail(error instanceof Error ? error : new Error(String(error)));
        const nowMs = this.clock.nowMs();
        const retrying = this.#state.kind === "retrying" ? this.#state : { sinceMs: nowMs, attempts: 0 };
        const failingMs = Math.round(nowMs - retrying.sinceMs);
        if (failingMs >= this.#retry.giveUpAfterMs) {
          return this.#fail(new KvError(error.cluster, error.operation, error.subject, error.kind, `${error.detail}; still failing after ${failingMs} ms, giving up`, { cause: error }));
        }
        this.#enter({ kind: "retrying", sinceMs: retrying.sinceMs, attempts: retrying.attempts + 1, lastError: error.message });
        // Full delay at most, half at least: spread out, never hammering.
        await Promise.race([this.clock.sleep(this.#delayMs * (0.5 + this.#random() / 2)), this.#stopped.promise]);
        this.#delayMs = Math.min(this.#delayMs * 2, this.#retry.maxDelayMs);
      }
    }
    this.#enter({ kind: "stopped", sinceMs: this.clock.nowMs() });
  }

  async #resync(): Promise<void> {
    if (this.#state.kind !== "retrying") this.#enter({ kind: "resyncing", sinceMs: this.clock.nowMs() });
    const range = await this.kv.getPrefix(this.prefix);
    this.listener.onSnapshot(range.entries, range.revision);
    this.#lastRevision = range.revision;
  }

  /** Watches from the last revision delivered + 1 until the watch ends or stop() is called. */
  async #watchUntilEnd(): Promise<KvWatchEnd | "stopped"> {
    if (this.#state.kind !== "retrying") this.#enter({ kind: "connecting", sinceMs: this.clock.nowMs() });
    const ended = Promise.withResolvers<KvWatchEnd>();
    // A listener may throw before anyone awaits `ended`: not an unhandled rejection.
    ended.promise.catch(() => undefined);
    /** A listener call that threw: the watcher fails with it. */
    let broken = false;
    const watch = await this.kv.watchPrefix(this.prefix, this.#lastRevision! + 1n, {
      onChanges: (changes) => {
        if (broken) return;
        try {
          this.#deliver(changes);
        } catch (error) {
          broken = true;
          ended.reject(error);
        }
      },
      onClosed: (end) => ended.resolve(end),
    });
    try {
      if (!this.#stopping) {
        this.#delayMs = this.#retry.initialDelayMs;
        this.#enter({ kind: "connected", sinceMs: this.clock.nowMs() });
      }
      return await Promise.race([ended.promise, this.#stopped.promise]);
    } finally {
      await watch.cancel();
    }
  }

  /** Hands over each revision after the last one delivered; a repeat of an older one is dropped. */
  #deliver(changes: readonly KvChange[]): void {
    let start = 0;
    while (start < changes.length) {
      const revision = changes[start]!.modRevision;
      let end = start + 1;
      while (end < changes.length && changes[end]!.modRevision === revision) end++;
      if (revision > this.#lastRevision!) {
        this.listener.onRevision(revision, changes.slice(start, end));
        this.#lastRevision = revision;
      }
      start = end;
    }
  }

  #fail(error: Error): void {
    log.error("watch failed; no more changes will be delivered", { cluster: this.kv.name, prefix: this.prefix, error: errorMessage(error) });
    this.#enter({ kind: "failed", sinceMs: this.clock.nowMs(), error: errorMessage(error) });
    this.listener.onFailed(error);
  }

  #enter(state: WatcherState): void {
    const previous = this.#state;
    this.#state = state;
    if (state.kind === previous.kind) return;
    const fields = { cluster: this.kv.name, prefix: this.prefix, lastRevision: this.#lastRevision };
    if (state.kind === "retrying") log.warn(`watch interrupted; retrying: ${state.lastError}`, fields);
    else if (state.kind === "connected" && previous.kind === "retrying") log.info(`watch resumed after ${Math.round(state.sinceMs - previous.sinceMs)} ms`, fields);
    else log.debug(`watch ${state.kind}`, fields);
  }
}
