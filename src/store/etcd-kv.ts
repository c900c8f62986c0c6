/**
 * Kv over a real etcd cluster, through etcd3's gRPC clients (kv.ts has the contract). The raw
 * RPCs are used rather than etcd3's builders: they give the revisions, counts and lease TTLs as
 * etcd sends them, one RPC per call. (etcd3's default fault handling may resend an RPC after a
 * connection failure, and refuses calls for 5 s after 3 failures in a row; both stay within
 * the call's deadline, and a resent conditional write is why callers re-read, kv.ts.)
 */
import { Range, castGrpcError, EtcdLeaseInvalidError, GRPCDeadlineExceededError, GRPCUnavailableError, EtcdWatchStreamEnded, type Etcd3, type IKeyValue, type IRequestOp } from "etcd3";
import type { Plane } from "../config/fitha-config.ts";
import { withDeadline } from "../deadline.ts";
import { FithaError } from "../errors.ts";
import { connectPlane, describeEtcdError, type EtcdSettings } from "./cluster.ts";
import type { EtcdCredentials } from "./credentials.ts";
import { checkDistinctKeys, KvError, type AlsoWrites, type Kv, type KvChange, type KvEntry, type KvErrorKind, type KvLease, type KvRange, type KvWatch, type KvWatchEnd, type KvWatchListener, type PutOptions, type RangeOptions } from "./kv.ts";

const bytes = (text: string) => Buffer.from(text, "utf8");
const quote = (key: string) => JSON.stringify(key);

export class EtcdKv implements Kv {
  /** A Kv for `plane`'s cluster (connectPlane: deadlines, TLS, auth); close() closes the client. */
  static connect(etcd: EtcdSettings, plane: Plane, credentials?: EtcdCredentials): EtcdKv {
    return new EtcdKv(connectPlane(etcd, plane, credentials), `etcd of the ${plane} plane`, etcd.request_timeout_ms);
  }

  private constructor(
    private readonly client: Etcd3,
    readonly name: string,
    private readonly requestTimeoutMs: number,
  ) {}

  async get(key: string): Promise<KvEntry | undefined> {
    const response = await this.#call("get", quote(key), () => this.client.kv.range({ key: bytes(key) }));
    const kv = response.kvs[0];
    return kv === undefined ? undefined : entry(kv);
  }

  async getPrefix(prefix: string, options: RangeOptions = {}): Promise<KvRange> {
    const range = Range.prefix(prefix);
    // The smallest key after `startAfter` is startAfter + NUL.
    const start = options.startAfter === undefined ? range.start : Buffer.concat([bytes(options.startAfter), Buffer.of(0)]);
    const response = await this.#call("read", `keys under ${quote(prefix)}`, () =>
      this.client.kv.range({ key: start, range_end: range.end, ...(options.limit === undefined ? {} : { limit: options.limit }) }),
    );
    return { entries: response.kvs.map(entry), revision: BigInt(response.header.revision), count: Number(response.count), more: response.more };
  }

  async put(key: string, value: string, options: PutOptions = {}): Promise<bigint> {
    const response = await this.#call("put", quote(key), () => this.client.kv.put(putRequest(key, value, options)));
    return BigInt(response.header.revision);
  }

  async delete(key: string): Promise<boolean> {
    const response = await this.#call("delete", quote(key), () => this.client.kv.deleteRange({ key: bytes(key) }));
    return response.deleted !== "0";
  }

  async deleteRange(startKey: string, endKey: string): Promise<number> {
    const response = await this.#call("delete", `keys from ${quote(startKey)} to ${quote(endKey)}`, () =>
      this.client.kv.deleteRange({ key: bytes(startKey), range_end: bytes(endKey) }),
    );
    return Number(response.deleted);
  }

  createIfAbsent(key: string, value: string, options: PutOptions = {}): Promise<boolean> {
    // create_revision is 0 exactly when the key does not exist.
    return this.#putIf("create", key, value, { target: "Create", create_revision: 0 }, options);
  }

  async putIfModRevision(key: string, value: string, modRevision: bigint, also: AlsoWrites = {}): Promise<boolean> {
    checkDistinctKeys(key, also);
    // An absent key compares as mod_revision 0, so 0n means "only if absent", as in etcd.
    return await this.#putIf("compare-and-swap", key, value, { target: "Mod", mod_revision: modRevision.toString() }, {}, also);
  }

  async #putIf(operation: string, key: string, value: string, compare: { target: "Create" | "Mod"; create_revision?: number; mod_revision?: string }, options: PutOptions, also: AlsoWrites = {}): Promise<boolean> {
    const success: IRequestOp[] = [
      { request_put: putRequest(key, value, options) },
      ...(also.puts ?? []).map((p) => ({ request_put: putRequest(p.key, p.value, {}) })),
      ...(also.deletes ?? []).map((k) => ({ request_delete_range: { key: bytes(k) } })),
    ];
    const response = await this.#call(operation, quote(key), () => this.client.kv.txn({ compare: [{ key: bytes(key), result: "Equal", ...compare }], success }));
    return response.succeeded;
  }

  async grantLease(ttlMs: number): Promise<KvLease> {
    if (!(Number.isFinite(ttlMs) && ttlMs > 0)) throw new RangeError(`lease TTL ${ttlMs} ms`);
    const response = await this.#call("grant", "a lease", () => this.client.leaseClient.leaseGrant({ TTL: Math.ceil(ttlMs / 1000) }));
    const id = response.ID;
    const subject = `lease ${id}`;
    return {
      id,
      ttlMs: Number(response.TTL) * 1000,
      keepAliveOnce: async () => {
        const ttlSeconds = await this.#call("keep alive", subject, () => this.#keepAliveOnce(id));
        // etcd answers a keepalive of an expired or revoked lease with TTL 0 (or less).
        return ttlSeconds > 0;
      },
      revoke: async () => {
        try {
          await this.#call("revoke", subject, () => this.client.leaseClient.leaseRevoke({ ID: id }));
        } catch (error) {
          if (!(error instanceof KvError && error.kind === "lease-not-found")) throw error;
        }
      },
    };
  }

  /** One request on a keepalive stream of its own, closed by its deadline at the latest. */
  async #keepAliveOnce(id: string): Promise<number> {
    const stream = await this.client.leaseClient.leaseKeepAlive({ deadline: Date.now() + this.requestTimeoutMs });
    try {
      return await new Promise<number>((resolve, reject) => {
        stream.on("data", (response) => resolve(Number(response.TTL)));
        stream.on("error", reject);
        stream.on("end", () => reject(new EtcdWatchStreamEnded()));
        stream.write({ ID: id });
      });
    } finally {
      // end(), not cancel(): etcd3 takes a cancelled stream for a broken connection and resets
      // every stream of the client, the watches included.
      stream.end();
    }
  }

  async watchPrefix(prefix: string, fromRevision: bigint, listener: KvWatchListener): Promise<KvWatch> {
    if (fromRevision < 1n) throw new RangeError(`watch from revision ${fromRevision}`);
    const subject = `keys under ${quote(prefix)}`;
    // watcher() attaches at once (create() would too, but resolves a turn later): the handlers
    // must be in place before the first response can arrive.
    const watcher = this.client.watch().prefix(prefix).startRevision(fromRevision.toString()).watcher();
    let state: "connecting" | "open" | "closed" = "connecting";
    /** etcd3 forgets a watcher that etcd cancelled; cancelling it again would wait for nothing. */
    let detached = false;
    /** Where the watch stands: the revision a compaction check reads at. */
    let nextRevision = fromRevision;
    const cancel = async (): Promise<void> => {
      state = "closed";
      if (detached) return;
      detached = true;
      // A watcher etcd3 has not attached yet waits for its attachment to cancel: bounded.
      await withDeadline(watcher.cancel(), this.requestTimeoutMs, `${this.name}: cancel the watch of ${subject}`).catch(() => undefined);
    };
    const close = (end: KvWatchEnd): void => {
      if (state !== "open") return;
      void cancel();
      listener.onClosed(end);
    };
    const answered = new Promise<void>((resolve, reject) => {
      watcher.on("connected", () => {
        if (state === "connecting") state = "open";
        resolve();
      });
      watcher.on("data", (response) => {
        if (state !== "open") return;
        const changes = response.events.map(change);
        const last = changes.at(-1);
        if (last === undefined) return;
        nextRevision = last.modRevision + 1n;
        listener.onChanges(changes);
      });
      // etcd3 would reconnect and resume by itself; the contract leaves that to the caller
      // (watcher.ts), which must know of the gap to resume or resync.
      watcher.on("disconnected", (error) => {
        reject(error);
        close({ kind: "failed", error: this.#error("watch", subject, error) });
      });
      // etcd cancels a watch whose start revision is compacted without saying so (3.4 leaves
      // cancel_reason empty, and etcd3 drops compact_revision): a read at that revision tells.
      // A cancel is an answer, so it ends the watch through onClosed, never by rejecting.
      watcher.on("error", (error) => {
        detached = true;
        if (state === "connecting") state = "open";
        resolve();
        void this.#compacted(prefix, nextRevision).then((compacted) => close(compacted ? { kind: "compacted" } : { kind: "failed", error: this.#error("watch", subject, error) }));
      });
    });
    try {
      await this.#call("watch", subject, () => answered);
    } catch (error) {
      await cancel();
      throw error;
    }
    return { cancel };
  }

  /** Reads the prefix's own key: a user whose etcd role grants only that prefix (src/store/etcd-roles.ts) may read it. */
  async #compacted(prefix: string, revision: bigint): Promise<boolean> {
    try {
      await withDeadline(this.client.kv.range({ key: bytes(prefix), revision: revision.toString() }), this.requestTimeoutMs, `${this.name}: read at revision ${revision}`);
      return false;
    } catch (error) {
      return /required revision has been compacted/.test(describeEtcdError(error));
    }
  }

  close(): void {
    this.client.close();
  }

  /** Runs one request under the deadline, its failure as a KvError. */
  async #call<T>(operation: string, subject: string, request: () => Promise<T>): Promise<T> {
    try {
      return await withDeadline(request(), this.requestTimeoutMs, `${this.name}: ${operation} ${subject}`);
    } catch (error) {
      throw this.#error(operation, subject, error);
    }
  }

  #error(operation: string, subject: string, error: unknown): KvError {
    // The only FithaError here is withDeadline's.
    const timedOut = error instanceof FithaError;
    const detail = timedOut ? `no answer within ${this.requestTimeoutMs} ms` : describeEtcdError(error);
    return new KvError(this.name, operation, subject, errorKind(error), detail, { cause: error });
  }
}

function errorKind(raw: unknown): KvErrorKind {
  // Errors of streams (watch, keepalive) reach us as grpc's untyped ones.
  const error = raw instanceof Error ? castGrpcError(raw) : raw;
  if (error instanceof FithaError || error instanceof GRPCDeadlineExceededError) return "timeout";
  if (error instanceof EtcdLeaseInvalidError) return "lease-not-found";
  // etcd3's circuit breaker refuses calls for a while after repeated connection failures.
  const brokenCircuit = (error as { isBrokenCircuitError?: unknown } | null)?.isBrokenCircuitError === true;
  if (error instanceof GRPCUnavailableError || error instanceof EtcdWatchStreamEnded || brokenCircuit) return "unreachable";
  return "failed";
}

function putRequest(key: string, value: string, options: PutOptions) {
  return { key: bytes(key), value: bytes(value), ...(options.leaseId === undefined ? {} : { lease: options.leaseId }) };
}

function entry(kv: IKeyValue): KvEntry {
  return { key: kv.key.toString("utf8"), value: kv.value.toString("utf8"), modRevision: BigInt(kv.mod_revision) };
}

function change(event: { type: "Put" | "Delete"; kv: IKeyValue }): KvChange {
  const { key, modRevision } = entry(event.kv);
  return event.type === "Put" ? { type: "put", key, value: event.kv.value.toString("utf8"), modRevision } : { type: "delete", key, value: "", modRevision };
}
