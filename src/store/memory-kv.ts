/**
 * An etcd cluster in memory (MemoryCluster) and its clients (MemoryKv), for unit tests and the
 * simulator: the same revisions, transactions, leases and watches as etcd (the contract test in
 * test/integration/kv-contract.test.ts runs against both), on an injected Clock so that lease
 * expiry follows virtual time, and with faults injected per client: one host's link to the
 * cluster can be cut while the others carry on, as on a real network.
 */
import type { Clock } from "../core/clock.ts";
import { checkDistinctKeys, KvError, type AlsoWrites, type Kv, type KvChange, type KvEntry, type KvLease, type KvRange, type KvWatch, type KvWatchEnd, type KvWatchListener, type PutOptions, type RangeOptions } from "./kv.ts";

interface Stored {
  readonly value: string;
  readonly modRevision: bigint;
  readonly leaseId: string | undefined;
}

interface Lease {
  readonly ttlMs: number;
  expiresAtMs: number;
  readonly keys: Set<string>;
}

interface Write {
  readonly key: string;
  /** undefined: delete. */
  readonly value: string | undefined;
  readonly leaseId?: string | undefined;
}

/** The cluster's side of one watch. */
interface ServerWatch {
  readonly prefix: string;
  next: bigint;
  scheduled: boolean;
  deliver(changes: readonly KvChange[]): void;
  end(end: KvWatchEnd): void;
}

/** Thrown by the cluster for a write naming a lease that is gone; clients turn it into a KvError. */
class LeaseNotFound extends Error {}

export interface MemoryClusterOptions {
  /**
   * Revisions of history kept for watches; older ones are compacted, as etcd's
   * --auto-compaction-mode=revision does, so that a watch lagging further must resync.
   */
  readonly historyRevisions?: number;
}

export class MemoryCluster {
  #revision = 1n;
  /** Watches and reads from before this revision fail as compacted. */
  #compactRevision = 1n;
  readonly #data = new Map<string, Stored>();
  /** The changes of each revision from #compactRevision on, oldest first. */
  readonly #history: { readonly revision: bigint; readonly changes: readonly KvChange[] }[] = [];
  readonly #leases = new Map<string, Lease>();
  #lastLeaseId = 0x4c8e_0000n;
  readonly #watches = new Set<ServerWatch>();
  readonly #historyRevisions: number;

  constructor(
    readonly clock: Clock,
    options: MemoryClusterOptions = {},
  ) {
    this.#historyRevisions = options.historyRevisions ?? 10_000;
  }

  /** The current revision (etcd starts an empty cluster at 1). */
  get revision(): bigint {
    return this.#revision;
  }

  /** A client; each has its own faults. */
  connect(options: MemoryKvOptions = {}): MemoryKv {
    return new MemoryKv(this, options);
  }

  /** Forgets the history before `revision`, like etcd's compaction. */
  compact(revision: bigint): void {
    if (revision > this.#revision) throw new RangeError(`compact to revision ${revision}, beyond the current ${this.#revision}`);
    if (revision <= this.#compactRevision) return;
    this.#compactRevision = revision;
    while (this.#history[0] !== undefined && this.#history[0].revision < revision) this.#history.shift();
  }

  get(key: string): KvEntry | undefined {
    const stored = this.#data.get(key);
    return stored === undefined ? undefined : { key, value: stored.value, modRevision: stored.modRevision };
  }

  range(prefix: string, options: RangeOptions = {}): KvRange {
    const { startAfter, limit } = options;
    const keys = [...this.#data.keys()].filter((key) => key.startsWith(prefix) && (startAfter === undefined || key > startAfter)).sort();
    const shown = limit === undefined || limit <= 0 ? keys : keys.slice(0, limit);
    return { entries: shown.map((key) => this.get(key)!), revision: this.#revision, count: keys.length, more: shown.length < keys.length };
  }

  put(key: string, value: string, leaseId?: string): bigint {
    this.#commit([{ key, value, leaseId }]);
    return this.#revision;
  }

  /** Deletes [startKey, endKey); how many keys were deleted. */
  deleteRange(startKey: string, endKey: string): number {
    const doomed = [...this.#data.keys()].filter((key) => key >= startKey && key < endKey);
    if (doomed.length > 0) this.#commit(doomed.map((key) => ({ key, value: undefined })));
    return doomed.length;
  }

  /** Writes if the key's mod revision is `modRevision` (0n: absent), with `also` in the same revision; true if written. */
  putIfModRevision(key: string, value: string, modRevision: bigint, leaseId?: string, also: AlsoWrites = {}): boolean {
    checkDistinctKeys(key, also);
    if ((this.#data.get(key)?.modRevision ?? 0n) !== modRevision) return false;
    // etcd's delete of an absent key changes nothing (and is no event).
    const deletes = (also.deletes ?? []).filter((k) => this.#data.has(k)).map((k) => ({ key: k, value: undefined }));
    this.#commit([{ key, value, leaseId }, ...(also.puts ?? []).map((p) => ({ key: p.key, value: p.value })), ...deletes]);
    return true;
  }

  grantLease(ttlMs: number): { id: string; ttlMs: number } {
    if (!(Number.isFinite(ttlMs) && ttlMs > 0)) throw new RangeError(`lease TTL ${ttlMs} ms`);
    const id = String(++this.#lastLeaseId);
    const granted = Math.ceil(ttlMs / 1000) * 1000;
    this.#leases.set(id, { ttlMs: granted, expiresAtMs: 0, keys: new Set() });
    this.#renew(id);
    return { id, ttlMs: granted };
  }

  /** False if the lease is gone. */
  keepAlive(id: string): boolean {
    if (!this.#leases.has(id)) return false;
    this.#renew(id);
    return true;
  }

  /** Ends the lease and deletes its keys in one revision; false if it was gone already. */
  revoke(id: string): boolean {
    const lease = this.#leases.get(id);
    if (lease === undefined) return false;
    this.#leases.delete(id);
    if (lease.keys.size > 0) this.#commit([...lease.keys].sort().map((key) => ({ key, value: undefined })));
    return true;
  }

  /** The cluster's end of a watch; changes arrive in later turns, as over a network. */
  watch(prefix: string, fromRevision: bigint, deliver: (changes: readonly KvChange[]) => void, end: (end: KvWatchEnd) => void): () => void {
    const watch: ServerWatch = { prefix, next: fromRevision, scheduled: false, deliver, end };
    this.#watches.add(watch);
    this.#schedule(watch);
    return () => this.#watches.delete(watch);
  }

  #renew(id: string): void {
    const lease = this.#leases.get(id)!;
    lease.expiresAtMs = this.clock.nowMs() + lease.ttlMs;
    // One timer per renewal; a timer that finds the lease renewed since does nothing.
    void this.clock.sleep(lease.ttlMs).then(() => {
      const current = this.#leases.get(id);
      if (current !== undefined && this.clock.nowMs() >= current.expiresAtMs) this.revoke(id);
    });
  }

  /** Applies the writes as one new revision and tells the watches. */
  #commit(writes: readonly Write[]): void {
    for (const write of writes) {
      if (write.leaseId !== undefined && !this.#leases.has(write.leaseId)) throw new LeaseNotFound(write.leaseId);
    }
    const revision = ++this.#revision;
    const changes: KvChange[] = [];
    for (const { key, value, leaseId } of writes) {
      const previous = this.#data.get(key);
      if (previous?.leaseId !== undefined) this.#leases.get(previous.leaseId)?.keys.delete(key);
      if (value === undefined) {
        this.#data.delete(key);
        changes.push({ type: "delete", key, value: "", modRevision: revision });
      } else {
        this.#data.set(key, { value, modRevision: revision, leaseId });
        if (leaseId !== undefined) this.#leases.get(leaseId)!.keys.add(key);
        changes.push({ type: "put", key, value, modRevision: revision });
      }
    }
    this.#history.push({ revision, changes });
    const oldestKept = this.#revision - BigInt(this.#historyRevisions) + 1n;
    if (oldestKept > this.#compactRevision) this.compact(oldestKept);
    for (const watch of this.#watches) this.#schedule(watch);
  }

  #schedule(watch: ServerWatch): void {
    if (watch.scheduled) return;
    watch.scheduled = true;
    queueMicrotask(() => {
      watch.scheduled = false;
      if (!this.#watches.has(watch)) return;
      if (watch.next < this.#compactRevision) {
        this.#watches.delete(watch);
        watch.end({ kind: "compacted" });
        return;
      }
      // The history is in revision order and a watch is nearly always at its end: walk back to
      // the first revision it has not seen instead of through all of it (with thousands of
      // revisions kept and dozens of watches this was most of the simulator's time).
      let first = this.#history.length;
      while (first > 0 && this.#history[first - 1]!.revision >= watch.next) first--;
      const changes: KvChange[] = [];
      for (let i = first; i < this.#history.length; i++) {
        for (const change of this.#history[i]!.changes) if (change.key.startsWith(watch.prefix)) changes.push(change);
      }
      watch.next = this.#revision + 1n;
      if (changes.length > 0) watch.deliver(changes);
    });
  }
}

export interface MemoryKvOptions {
  /** Kv.name, in errors: "etcd of the management plane" by default. */
  readonly name?: string;
  /** How long a call waits in a "hang" fault before it times out, on the cluster's clock. */
  readonly requestTimeoutMs?: number;
}

/**
 * How a cut link fails: "refuse" at once (connection refused: the cluster's host is up, the
 * port closed), "hang" until the request deadline (packets dropped: a cut cable).
 */
export type LinkFault = "refuse" | "hang";

interface ClientWatch {
  readonly subject: string;
  cancel(): Promise<void>;
  close(end: KvWatchEnd): void;
}

/** One client of a MemoryCluster. */
export class MemoryKv implements Kv {
  readonly name: string;
  readonly #requestTimeoutMs: number;
  #fault: LinkFault | undefined;
  #closed = false;
  /** Open watches: a cut ends them. */
  readonly #watches = new Set<ClientWatch>();

  constructor(
    private readonly cluster: MemoryCluster,
    options: MemoryKvOptions = {},
  ) {
    this.name = options.name ?? "etcd of the management plane";
    this.#requestTimeoutMs = options.requestTimeoutMs ?? 5_000;
  }

  /** Cuts this client's link: calls fail (`fault`), open watches end as failed. */
  cut(fault: LinkFault = "refuse"): void {
    this.#fault = fault;
    for (const watch of [...this.#watches]) watch.close({ kind: "failed", error: this.#unreachable("watch", watch.subject) });
  }

  heal(): void {
    this.#fault = undefined;
  }

  get(key: string): Promise<KvEntry | undefined> {
    return this.#request("get", quote(key), () => this.cluster.get(key));
  }

  getPrefix(prefix: string, options: RangeOptions = {}): Promise<KvRange> {
    return this.#request("read", `keys under ${quote(prefix)}`, () => this.cluster.range(prefix, options));
  }

  put(key: string, value: string, options: PutOptions = {}): Promise<bigint> {
    return this.#request("put", quote(key), () => this.cluster.put(key, value, options.leaseId));
  }

  delete(key: string): Promise<boolean> {
    return this.#request("delete", quote(key), () => this.cluster.deleteRange(key, `${key}\0`) > 0);
  }

  deleteRange(startKey: string, endKey: string): Promise<number> {
    return this.#request("delete", `keys from ${quote(startKey)} to ${quote(endKey)}`, () => this.cluster.deleteRange(startKey, endKey));
  }

  createIfAbsent(key: string, value: string, options: PutOptions = {}): Promise<boolean> {
    return this.#request("create", quote(key), () => this.cluster.putIfModRevision(key, value, 0n, options.leaseId));
  }

  putIfModRevision(key: string, value: string, modRevision: bigint, also?: AlsoWrites): Promise<boolean> {
    return this.#request("compare-and-swap", quote(key), () => this.cluster.putIfModRevision(key, value, modRevision, undefined, also));
  }

  async grantLease(ttlMs: number): Promise<KvLease> {
    const { id, ttlMs: grantedMs } = await this.#request("grant", "a lease", () => this.cluster.grantLease(ttlMs));
    const subject = `lease ${id}`;
    return {
      id,
      ttlMs: grantedMs,
      keepAliveOnce: () => this.#request("keep alive", subject, () => this.cluster.keepAlive(id)),
      revoke: () => this.#request("revoke", subject, () => void this.cluster.revoke(id)),
    };
  }

  async watchPrefix(prefix: string, fromRevision: bigint, listener: KvWatchListener): Promise<KvWatch> {
    if (fromRevision < 1n) throw new RangeError(`watch from revision ${fromRevision}`);
    let open = true;
    let stop = (): void => undefined;
    const watch: ClientWatch = {
      subject: `keys under ${quote(prefix)}`,
      cancel: async () => {
        open = false;
        stop();
        this.#watches.delete(watch);
      },
      close: (end) => {
        if (!open) return;
        void watch.cancel();
        listener.onClosed(end);
      },
    };
    // The cluster may deliver before this call returns (as etcd may): the handlers come first.
    stop = await this.#request("watch", watch.subject, () =>
      this.cluster.watch(
        prefix,
        fromRevision,
        (changes) => {
          if (open) listener.onChanges(changes);
        },
        (end) => watch.close(end),
      ),
    );
    if (open) this.#watches.add(watch);
    return { cancel: watch.cancel };
  }

  close(): void {
    this.#closed = true;
    for (const watch of [...this.#watches]) void watch.cancel();
  }

  /** Runs `work` on the cluster unless this link is cut or closed; its failures as KvErrors. */
  async #request<T>(operation: string, subject: string, work: () => T): Promise<T> {
    if (this.#closed) throw new KvError(this.name, operation, subject, "failed", "client closed");
    if (this.#fault === "hang") {
      await this.cluster.clock.sleep(this.#requestTimeoutMs);
      throw new KvError(this.name, operation, subject, "timeout", `no answer within ${this.#requestTimeoutMs} ms`);
    }
    if (this.#fault === "refuse") throw this.#unreachable(operation, subject);
    try {
      return work();
    } catch (error) {
      if (error instanceof LeaseNotFound) throw new KvError(this.name, operation, subject, "lease-not-found", `lease ${error.message} expired or was revoked`);
      throw error;
    }
  }

  #unreachable(operation: string, subject: string): KvError {
    return new KvError(this.name, operation, subject, "unreachable", "connection refused (injected fault)");
  }
}

const quote = (key: string) => JSON.stringify(key);
