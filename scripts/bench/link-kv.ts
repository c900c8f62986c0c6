/**
 * A simulated host's link to one plane's etcd, for benches that run many agents in one process
 * over a few shared clients: while `cut`, every call on it fails at once as unreachable, as with
 * a dead link (a watch already established through the shared client stays up). Keepalives and
 * lease grants are counted in a LinkStats shared by all links of a bench.
 */
import { KvError, type AlsoWrites, type Kv, type KvEntry, type KvLease, type KvRange, type KvWatch, type KvWatchListener, type PutOptions, type RangeOptions } from "../../src/store/kv.ts";

export interface LinkStats {
  keepalives: number;
  keepaliveFailures: number;
  grants: number;
  /** While true, every keepalive's round trip goes into keepaliveMs. */
  timing: boolean;
  keepaliveMs: number[];
}

export function newLinkStats(): LinkStats {
  return { keepalives: 0, keepaliveFailures: 0, grants: 0, timing: false, keepaliveMs: [] };
}

export class LinkKv implements Kv {
  cut = false;
  /** When the last keepalive that etcd answered "alive" was sent (performance.now()). */
  lastRenewalSentMs = -Infinity;

  constructor(
    private readonly inner: Kv,
    private readonly stats: LinkStats,
  ) {}

  get name(): string {
    return this.inner.name;
  }

  #check(operation: string, subject: string): void {
    if (this.cut) throw new KvError(this.inner.name, operation, subject, "unreachable", "bench: this host's link to the plane is cut");
  }

  async get(key: string): Promise<KvEntry | undefined> {
    this.#check("get", key);
    return this.inner.get(key);
  }
  async getPrefix(prefix: string, options?: RangeOptions): Promise<KvRange> {
    this.#check("read", prefix);
    return this.inner.getPrefix(prefix, options);
  }
  async put(key: string, value: string, options?: PutOptions): Promise<bigint> {
    this.#check("put", key);
    return this.inner.put(key, value, options);
  }
  async delete(key: string): Promise<boolean> {
    this.#check("delete", key);
    return this.inner.delete(key);
  }
  async deleteRange(startKey: string, endKey: string): Promise<number> {
    this.#check("delete", startKey);
    return this.inner.deleteRange(startKey, endKey);
  }
  async createIfAbsent(key: string, value: string, options?: PutOptions): Promise<boolean> {
    this.#check("create", key);
    return this.inner.createIfAbsent(key, value, options);
  }
  async putIfModRevision(key: string, value: string, modRevision: bigint, also?: AlsoWrites): Promise<boolean> {
    this.#check("compare-and-swap", key);
    return this.inner.putIfModRevision(key, value, modRevision, also);
  }
  async grantLease(ttlMs: number): Promise<KvLease> {
    this.#check("grant", "a lease");
    const lease = await this.inner.grantLease(ttlMs);
    const stats = this.stats;
    stats.grants++;
    return {
      id: lease.id,
      ttlMs: lease.ttlMs,
      keepAliveOnce: async () => {
        this.#check("keep alive", `lease ${lease.id}`);
        const sentMs = performance.now();
        stats.keepalives++;
        try {
          const alive = await lease.keepAliveOnce();
          if (stats.timing) stats.keepaliveMs.push(performance.now() - sentMs);
          if (alive) this.lastRenewalSentMs = sentMs;
          else stats.keepaliveFailures++;
          return alive;
        } catch (error) {
          stats.keepaliveFailures++;
          throw error;
        }
      },
      revoke: async () => {
        this.#check("revoke", `lease ${lease.id}`);
        await lease.revoke();
      },
    };
  }
  async watchPrefix(prefix: string, fromRevision: bigint, listener: KvWatchListener): Promise<KvWatch> {
    this.#check("watch", prefix);
    return this.inner.watchPrefix(prefix, fromRevision, listener);
  }
  close(): void {
    // The shared clients are closed by the bench.
  }
}
