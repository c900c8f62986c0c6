/**
 * The Kv contract, checked the same way on a real etcd (EtcdKv, through a proxy whose link a test
 * can cut) and on MemoryKv (virtual time, injected faults), so that tests and the simulator
 * running on the in-memory one see what a real etcd does.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Etcd3 } from "etcd3";
import { VirtualClock } from "../../src/core/clock.ts";
import { EtcdKv } from "../../src/store/etcd-kv.ts";
import { KvError, type Kv, type KvChange, type KvErrorKind, type KvWatchEnd } from "../../src/store/kv.ts";
import { MemoryCluster } from "../../src/store/memory-kv.ts";
import { startEtcd, type LocalEtcd } from "../helpers/etcd.ts";
import { etcdSettings } from "../helpers/etcd-settings.ts";
import { startLinkProxy } from "../helpers/link-proxy.ts";

const requestTimeoutMs = 2_000;

/** One Kv under test, a second client of the same cluster, and the levers a test pulls. */
interface Subject extends AsyncDisposable {
  readonly kv: Kv;
  /** Another client, whose link is never cut. */
  readonly other: Kv;
  /** Lets `ms` pass: real time for etcd, virtual time for the in-memory cluster. */
  passMs(ms: number): Promise<void>;
  compact(revision: bigint): Promise<void>;
  /** "refuse": connections refused; "hang": packets dropped. */
  cut(mode: "refuse" | "hang"): void;
}

let etcd: LocalEtcd | undefined;
beforeAll(async () => {
  etcd = await startEtcd({ name: "kv-contract" });
});
afterAll(async () => {
  await etcd?.stop();
});

const implementations: [string, () => Promise<Subject>][] = [
  [
    "EtcdKv",
    async () => {
      const proxy = await startLinkProxy(etcd!.endpoint);
      const kv = EtcdKv.connect(etcdSettings({ endpoint: proxy.endpoint, requestTimeoutMs }), "management");
      const other = EtcdKv.connect(etcdSettings({ endpoint: etcd!.endpoint }), "management");
      const admin = new Etcd3({ hosts: etcd!.endpoint });
      return {
        kv,
        other,
        passMs: (ms) => Bun.sleep(ms),
        compact: async (revision) => void (await admin.kv.compact({ revision: revision.toString(), physical: true })),
        cut: (mode) => proxy.cut(mode === "refuse" ? "reset" : "drop"),
        [Symbol.asyncDispose]: async () => {
          kv.close();
          other.close();
          admin.close();
          await proxy.close();
        },
      };
    },
  ],
  [
    "MemoryKv",
    async () => {
      const clock = new VirtualClock();
      const cluster = new MemoryCluster(clock);
      const kv = cluster.connect({ requestTimeoutMs });
      return {
        kv,
        other: cluster.connect(),
        passMs: (ms) => clock.advance(ms),
        compact: async (revision) => cluster.compact(revision),
        cut: (mode) => kv.cut(mode),
        [Symbol.asyncDispose]: async () => kv.close(),
      };
    },
  ],
];

let prefixes = 0;
/** A prefix no other test uses (the etcd is shared by the file). */
const freshPrefix = () => `/contract/${Date.now()}-${++prefixes}/`;

async function kvError(work: Promise<unknown>): Promise<KvError> {
  const error = await work.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(KvError);
  return error as KvError;
}

function expectKvError(error: KvError, expected: { operation: string; subject: string; kind: KvErrorKind }): void {
  expect({ operation: error.operation, subject: error.subject, kind: error.kind }).toEqual(expected);
  expect(error.cluster).toBe("etcd of the management plane");
  expect(error.message).toStartWith(`etcd of the management plane: cannot ${expected.operation} ${expected.subject}: `);
}

/** Collects what a watch delivers. */
function recorder() {
  const changes: KvChange[] = [];
  const ends: KvWatchEnd[] = [];
  return { changes, ends, listener: { onChanges: (batch: readonly KvChange[]) => void changes.push(...batch), onClosed: (end: KvWatchEnd) => void ends.push(end) } };
}

/** Lets time pass in steps until `done()` holds, for at most `maxMs`. */
async function passUntil(subject: Subject, done: () => boolean | Promise<boolean>, maxMs: number, stepMs = 50): Promise<void> {
  for (let passed = 0; !(await done()); passed += stepMs) {
    if (passed >= maxMs) throw new Error(`not done after ${maxMs} ms`);
    await subject.passMs(stepMs);
  }
}

describe.each(implementations)("%s", (_, open) => {
  test("get, put and delete: values and revisions", async () => {
    await using subject = await open();
    const { kv } = subject;
    const key = `${freshPrefix()}a`;
    expect(await kv.get(key)).toBeUndefined();
    const first = await kv.put(key, "one");
    expect(await kv.get(key)).toEqual({ key, value: "one", modRevision: first });
    const second = await kv.put(key, "");
    expect(second).toBeGreaterThan(first);
    expect(await kv.get(key)).toEqual({ key, value: "", modRevision: second });
    expect(await kv.delete(key)).toBe(true);
    expect(await kv.delete(key)).toBe(false);
    expect(await kv.get(key)).toBeUndefined();
  });

  test("getPrefix: sorted by key, only the prefix, at one revision; limit, count and startAfter", async () => {
    await using subject = await open();
    const { kv } = subject;
    const prefix = freshPrefix();
    for (const name of ["c", "a", "b/x", "d"]) await kv.put(`${prefix}${name}`, name);
    const last = await kv.put(`${prefix.slice(0, -1)}-sibling`, "not under the prefix");
    const all = await kv.getPrefix(prefix);
    expect(all.entries.map((e) => e.value)).toEqual(["a", "b/x", "c", "d"]);
    expect(all).toMatchObject({ count: 4, more: false });
    expect(all.revision).toBeGreaterThanOrEqual(last);
    expect(await kv.getPrefix(prefix, { limit: 2 })).toMatchObject({ count: 4, more: true, entries: [{ value: "a" }, { value: "b/x" }] });
    const page = await kv.getPrefix(prefix, { startAfter: `${prefix}b/x`, limit: 1 });
    expect(page).toMatchObject({ count: 2, more: true, entries: [{ value: "c" }] });
    expect(await kv.getPrefix(`${prefix}none/`)).toMatchObject({ entries: [], count: 0, more: false });
  });

  test("deleteRange deletes [start, end) in one revision", async () => {
    await using subject = await open();
    const { kv } = subject;
    const prefix = freshPrefix();
    for (const name of ["1", "2", "3", "4"]) await kv.put(`${prefix}${name}`, name);
    const before = (await kv.getPrefix(prefix)).revision;
    const watched = recorder();
    const watch = await kv.watchPrefix(prefix, before + 1n, watched.listener);
    expect(await kv.deleteRange(`${prefix}2`, `${prefix}4`)).toBe(2);
    expect((await kv.getPrefix(prefix)).entries.map((e) => e.value)).toEqual(["1", "4"]);
    await passUntil(subject, () => watched.changes.length === 2, 2_000, 10);
    expect(watched.changes).toEqual([
      { type: "delete", key: `${prefix}2`, value: "", modRevision: before + 1n },
      { type: "delete", key: `${prefix}3`, value: "", modRevision: before + 1n },
    ]);
    await watch.cancel();
    expect(await kv.deleteRange(`${prefix}2`, `${prefix}4`)).toBe(0);
  });

  test("createIfAbsent creates only a missing key", async () => {
    await using subject = await open();
    const { kv } = subject;
    const key = `${freshPrefix()}claim`;
    expect(await kv.createIfAbsent(key, "first")).toBe(true);
    expect(await kv.createIfAbsent(key, "second")).toBe(false);
    expect((await kv.get(key))?.value).toBe("first");
    await kv.delete(key);
    expect(await kv.createIfAbsent(key, "third")).toBe(true);
  });

  test("putIfModRevision is compare-and-swap; 0n means absent", async () => {
    await using subject = await open();
    const { kv } = subject;
    const key = `${freshPrefix()}cas`;
    expect(await kv.putIfModRevision(key, "v1", 0n)).toBe(true);
    const v1 = (await kv.get(key))!;
    expect(await kv.putIfModRevision(key, "again", 0n)).toBe(false);
    expect(await kv.putIfModRevision(key, "v2", v1.modRevision)).toBe(true);
    expect(await kv.putIfModRevision(key, "stale", v1.modRevision)).toBe(false);
    expect((await kv.get(key))?.value).toBe("v2");
  });

  test("putIfModRevision's other writes happen with it, in its revision, or not at all; a key named twice is refused", async () => {
    await using subject = await open();
    const { kv } = subject;
    const prefix = freshPrefix();
    await kv.put(`${prefix}doomed`, "x");
    const also = { puts: [{ key: `${prefix}order`, value: "start" }], deletes: [`${prefix}doomed`, `${prefix}never-there`] };
    expect(await kv.putIfModRevision(`${prefix}task`, "stale", 12345n, also)).toBe(false);
    expect(await kv.get(`${prefix}order`)).toBeUndefined();
    expect((await kv.get(`${prefix}doomed`))?.value).toBe("x");
    expect(await kv.putIfModRevision(`${prefix}task`, "starting", 0n, also)).toBe(true);
    const [task, order] = [(await kv.get(`${prefix}task`))!, (await kv.get(`${prefix}order`))!];
    expect([task.value, order.value]).toEqual(["starting", "start"]);
    expect(order.modRevision).toBe(task.modRevision);
    expect(await kv.get(`${prefix}doomed`)).toBeUndefined();
    await expect(kv.putIfModRevision(`${prefix}task`, "again", task.modRevision, { deletes: [`${prefix}task`] })).rejects.toThrow(RangeError);
    expect((await kv.get(`${prefix}task`))?.value).toBe("starting");
  });

  test("a leased key lives while its lease does: revoke deletes it, a gone lease is refused", async () => {
    await using subject = await open();
    const { kv } = subject;
    const key = `${freshPrefix()}leased`;
    const lease = await kv.grantLease(1_500);
    expect(lease.ttlMs).toBeGreaterThanOrEqual(2_000);
    expect(lease.ttlMs % 1_000).toBe(0);
    await kv.put(key, "held", { leaseId: lease.id });
    expect(await lease.keepAliveOnce()).toBe(true);
    expect((await kv.get(key))?.value).toBe("held");
    await lease.revoke();
    expect(await kv.get(key)).toBeUndefined();
    expect(await lease.keepAliveOnce()).toBe(false);
    await lease.revoke(); // already gone: no error
    expectKvError(await kvError(kv.put(key, "again", { leaseId: lease.id })), { operation: "put", subject: JSON.stringify(key), kind: "lease-not-found" });
    expectKvError(await kvError(kv.createIfAbsent(key, "again", { leaseId: lease.id })), { operation: "create", subject: JSON.stringify(key), kind: "lease-not-found" });
  });

  test("a lease that is not kept alive expires, and its keys with it", async () => {
    await using subject = await open();
    const { kv } = subject;
    const key = `${freshPrefix()}expiring`;
    const lease = await kv.grantLease(2_000);
    await kv.put(key, "soon gone", { leaseId: lease.id });
    // etcd revokes expired leases every 500 ms; allow a few rounds beyond the TTL.
    await passUntil(subject, async () => (await kv.get(key)) === undefined, lease.ttlMs + 3_000, 100);
    expect(await lease.keepAliveOnce()).toBe(false);
  });

  test("a watch delivers past then live changes in revision order, only under its prefix, until cancelled", async () => {
    await using subject = await open();
    const { kv, other } = subject;
    const prefix = freshPrefix();
    const from = await kv.put(`${prefix}a`, "1");
    await kv.put(`${prefix}b`, "2");
    await kv.put(`${prefix.slice(0, -1)}-sibling`, "not under the prefix");
    const watched = recorder();
    const watch = await kv.watchPrefix(prefix, from, watched.listener);
    await other.put(`${prefix}a`, "3");
    await other.delete(`${prefix}b`);
    await passUntil(subject, () => watched.changes.length === 4, 2_000, 10);
    expect(watched.changes.map(({ type, key, value }) => `${type} ${key.slice(prefix.length)}=${value}`)).toEqual(["put a=1", "put b=2", "put a=3", "delete b="]);
    const revisions = watched.changes.map((c) => c.modRevision);
    expect(revisions[0]).toBe(from);
    expect([...revisions].sort((x, y) => (x < y ? -1 : 1))).toEqual(revisions);
    expect(new Set(revisions).size).toBe(4);
    await watch.cancel();
    await other.put(`${prefix}c`, "after cancel");
    await subject.passMs(200);
    expect(watched.changes).toHaveLength(4);
    expect(watched.ends).toEqual([]);
  });

  test("a watch from a compacted revision ends as compacted", async () => {
    await using subject = await open();
    const { kv } = subject;
    const prefix = freshPrefix();
    const old = await kv.put(`${prefix}a`, "1");
    const now = await kv.put(`${prefix}a`, "2");
    await subject.compact(now);
    const watched = recorder();
    await kv.watchPrefix(prefix, old, watched.listener);
    await passUntil(subject, () => watched.ends.length > 0, 2_000, 10);
    expect(watched.ends).toEqual([{ kind: "compacted" }]);
    expect(watched.changes).toEqual([]);
  });

  test("a cut link: calls fail as unreachable, naming the cluster and the key; open watches end as failed", async () => {
    await using subject = await open();
    const { kv } = subject;
    const prefix = freshPrefix();
    const watched = recorder();
    await kv.watchPrefix(prefix, (await kv.put(`${prefix}a`, "1")) + 1n, watched.listener);
    subject.cut("refuse");
    await passUntil(subject, () => watched.ends.length > 0, 3_000, 10);
    expect(watched.ends).toHaveLength(1);
    const end = watched.ends[0]!;
    expect(end.kind).toBe("failed");
    if (end.kind === "failed") expectKvError(end.error, { operation: "watch", subject: `keys under ${JSON.stringify(prefix)}`, kind: "unreachable" });
    expectKvError(await kvError(kv.get(`${prefix}a`)), { operation: "get", subject: JSON.stringify(`${prefix}a`), kind: "unreachable" });
    expectKvError(await kvError(kv.grantLease(2_000)), { operation: "grant", subject: "a lease", kind: "unreachable" });
  });

  test("a hung link: a call fails as timed out once the request deadline has passed", async () => {
    await using subject = await open();
    const { kv } = subject;
    const key = `${freshPrefix()}a`;
    await kv.put(key, "1");
    subject.cut("hang");
    let settled = false;
    const failing = kvError(kv.get(key)).finally(() => (settled = true));
    await subject.passMs(requestTimeoutMs / 2);
    expect(settled).toBe(false);
    await passUntil(subject, () => settled, requestTimeoutMs + 1_000);
    expectKvError(await failing, { operation: "get", subject: JSON.stringify(key), kind: "timeout" });
    expect((await failing).message).toContain(`no answer within ${requestTimeoutMs} ms`);
  });
});
