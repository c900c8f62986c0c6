/**
 * The key-value operations fitha needs from one etcd cluster, as an interface with two
 * implementations: EtcdKv (etcd-kv.ts, a real cluster through etcd3) and MemoryKv (memory-kv.ts,
 * in memory with virtual time and injected faults, for unit tests and the simulator). One
 * contract test (test/integration/kv-contract.test.ts) runs against both, so the in-memory one
 * behaves like etcd where it matters.
 *
 * Revisions are bigints: etcd's are int64, and a bigint compares and counts correctly where a
 * decimal string ("9" > "10") or a number (above 2^53) would not. Lease ids are opaque decimal
 * strings: they are only ever handed back to the cluster. Keys are ASCII (keys.ts), so string
 * order is etcd's byte order.
 *
 * Every call is bounded by the cluster's request deadline (etcd.request_timeout_ms) and fails
 * with a KvError naming the cluster, the operation and the key. A call that fails may or may not
 * have taken effect (the request may have reached etcd before the connection broke); callers of
 * the conditional writes re-read to find out (host-ids.ts, election.ts).
 */
import { FithaError } from "../errors.ts";

export interface KvEntry {
  readonly key: string;
  readonly value: string;
  /** The revision of the last write to this key. */
  readonly modRevision: bigint;
}

export interface KvRange {
  /** Sorted by key (byte order). */
  readonly entries: readonly KvEntry[];
  /** The cluster revision the range was read at: a watch from revision + 1 misses nothing. */
  readonly revision: bigint;
  /** How many keys the range holds, regardless of `limit`. */
  readonly count: number;
  /** True when `limit` left keys out. */
  readonly more: boolean;
}

export interface RangeOptions {
  /** At most this many entries (the first ones by key). */
  readonly limit?: number;
  /** Only keys after this one (for paging: the last key of the previous page). */
  readonly startAfter?: string;
}

/** Writes that ride along with a compare-and-swap (Kv.putIfModRevision). */
export interface AlsoWrites {
  readonly puts?: ReadonlyArray<{ readonly key: string; readonly value: string }>;
  readonly deletes?: readonly string[];
}

/** Every key of a transaction at most once (etcd refuses a transaction that names a key twice). */
export function checkDistinctKeys(key: string, also: AlsoWrites): void {
  const all = [key, ...(also.puts ?? []).map((p) => p.key), ...(also.deletes ?? [])];
  if (new Set(all).size !== all.length) throw new RangeError(`a transaction names a key twice: ${all.join(", ")}`);
}

export interface PutOptions {
  /** Attach the key to this lease: it is deleted when the lease expires or is revoked. */
  readonly leaseId?: string;
}

/** One change of a watched key; all changes of one revision are delivered together. */
export interface KvChange {
  readonly type: "put" | "delete";
  readonly key: string;
  /** The new value; "" for a delete. */
  readonly value: string;
  /** The revision of this change. */
  readonly modRevision: bigint;
}

/** Why a watch ended (other than by cancel(), which ends it silently). */
export type KvWatchEnd =
  /** The start revision is older than the cluster's compacted history: read the state afresh. */
  | { readonly kind: "compacted" }
  /** The connection broke or the cluster refused the watch. */
  | { readonly kind: "failed"; readonly error: KvError };

export interface KvWatchListener {
  /**
   * Changes in revision order. One call never splits a revision, but may hold several. Never
   * called after onClosed or cancel().
   */
  onChanges(changes: readonly KvChange[]): void;
  /** Called at most once; the watch delivers nothing more. */
  onClosed(end: KvWatchEnd): void;
}

export interface KvWatch {
  /** Stops the watch; no listener call follows. Idempotent. */
  cancel(): Promise<void>;
}

export interface KvLease {
  readonly id: string;
  /**
   * The TTL the cluster granted: the requested one rounded up to whole seconds (etcd's unit), or
   * longer if the cluster enforces a minimum (etcd: 1.5 election timeouts, 2 s by default).
   */
  readonly ttlMs: number;
  /** Renews the lease for another ttlMs; false if it is gone (expired or revoked). */
  keepAliveOnce(): Promise<boolean>;
  /** Ends the lease and deletes its keys; revoking a lease that is already gone is no error. */
  revoke(): Promise<void>;
}

export interface Kv {
  /** Names the cluster in errors and logs: "etcd of the management plane". */
  readonly name: string;
  get(key: string): Promise<KvEntry | undefined>;
  /** The keys starting with `prefix`, at one revision. */
  getPrefix(prefix: string, options?: RangeOptions): Promise<KvRange>;
  /** Returns the revision of the write. */
  put(key: string, value: string, options?: PutOptions): Promise<bigint>;
  /** True if the key existed. */
  delete(key: string): Promise<boolean>;
  /** Deletes the keys from `startKey` (included) to `endKey` (excluded), in one revision; returns how many. */
  deleteRange(startKey: string, endKey: string): Promise<number>;
  /** Writes the key only if it does not exist (one transaction); true if this call created it. */
  createIfAbsent(key: string, value: string, options?: PutOptions): Promise<boolean>;
  /**
   * Writes the key only if its last write was at `modRevision` (0n: only if absent), in one
   * transaction: compare-and-swap. True if it was written. `also`: more writes in the same
   * transaction (one revision), done exactly when this one is; every key at most once.
   */
  putIfModRevision(key: string, value: string, modRevision: bigint, also?: AlsoWrites): Promise<boolean>;
  /** A lease that lives ttlMs after its grant and after each keepalive, unless revoked. */
  grantLease(ttlMs: number): Promise<KvLease>;
  /**
   * Watches the keys starting with `prefix` from `fromRevision` (≥ 1) on: past changes still in
   * the cluster's history first, then live ones. Resolves once the cluster has answered (a
   * compacted start revision is an answer: the watch then ends with onClosed); rejects if it
   * cannot be reached. Listener calls may begin before it resolves. The watch does not
   * reconnect by itself: when the connection breaks it ends with onClosed, and the caller
   * decides (watcher.ts resumes it).
   */
  watchPrefix(prefix: string, fromRevision: bigint, listener: KvWatchListener): Promise<KvWatch>;
  /** Releases the connection; pending watches end without a call. */
  close(): void;
}

/**
 * How a call failed, as far as the client can tell:
 * - unreachable: no connection to any member (refused, reset, no route, TLS failure);
 * - timeout: no answer within the request deadline (the cluster may or may not have applied it);
 * - lease-not-found: the lease named in the request expired or was revoked;
 * - failed: the cluster answered with an error (permission denied, bad request, ...).
 */
export type KvErrorKind = "unreachable" | "timeout" | "lease-not-found" | "failed";

export class KvError extends FithaError {
  constructor(
    /** The cluster, as Kv.name: "etcd of the storage plane". */
    readonly cluster: string,
    /** What was asked: "get", "put", "watch", "keepalive", ... */
    readonly operation: string,
    /** The key, prefix or lease the call was about. */
    readonly subject: string,
    readonly kind: KvErrorKind,
    /** The cause in the client's words. */
    readonly detail: string,
    options?: ErrorOptions,
  ) {
    super(`${cluster}: cannot ${operation} ${subject}: ${kind === "failed" ? detail : `${kind.replaceAll("-", " ")} (${detail})`}`, undefined, options);
    this.name = "KvError";
  }
}
