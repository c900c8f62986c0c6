/**
 * MemoryKv's own API: faults per client, the kept history, closing. What it shares with etcd is
 * checked against etcd itself in test/integration/kv-contract.test.ts.
 */
import { describe, expect, test } from "bun:test";
import { VirtualClock } from "../../src/core/clock.ts";
import type { KvChange, KvWatchEnd } from "../../src/store/kv.ts";
import { MemoryCluster } from "../../src/store/memory-kv.ts";

function recorder() {
  const changes: KvChange[] = [];
  const ends: KvWatchEnd[] = [];
  return { changes, ends, listener: { onChanges: (batch: readonly KvChange[]) => void changes.push(...batch), onClosed: (end: KvWatchEnd) => void ends.push(end) } };
}

describe("MemoryKv", () => {
  test("a cut link fails only that client; the cluster and its other clients carry on", async () => {
    const clock = new VirtualClock();
    const cluster = new MemoryCluster(clock);
    const cut = cluster.connect({ name: "etcd of the storage plane" });
    const other = cluster.connect();
    const lease = await cut.grantLease(2_000);
    await cut.put("/k", "held", { leaseId: lease.id });
    cut.cut("refuse");
    await expect(cut.get("/k")).rejects.toThrow('etcd of the storage plane: cannot get "/k": unreachable (connection refused (injected fault))');
    expect((await other.get("/k"))?.value).toBe("held");
    // Its lease runs out on the cluster's clock while it cannot renew it.
    await clock.advance(2_000);
    expect(await other.get("/k")).toBeUndefined();
    cut.heal();
    expect(await lease.keepAliveOnce()).toBe(false);
  });

  test("history beyond historyRevisions is compacted, as etcd's auto-compaction does", async () => {
    const cluster = new MemoryCluster(new VirtualClock(), { historyRevisions: 3 });
    const kv = cluster.connect();
    for (let i = 0; i < 6; i++) await kv.put("/p/k", String(i)); // revisions 2..7
    const late = recorder();
    await kv.watchPrefix("/p/", 5n, late.listener);
    const early = recorder();
    await kv.watchPrefix("/p/", 4n, early.listener);
    await Promise.resolve();
    expect(late.changes.map((c) => c.value)).toEqual(["3", "4", "5"]);
    expect(early.ends).toEqual([{ kind: "compacted" }]);
    expect(() => cluster.compact(cluster.revision + 1n)).toThrow(RangeError);
  });

  test("close(): open watches end without a call; later calls fail", async () => {
    const cluster = new MemoryCluster(new VirtualClock());
    const kv = cluster.connect();
    const watched = recorder();
    await kv.watchPrefix("/p/", 1n, watched.listener);
    kv.close();
    await cluster.connect().put("/p/a", "1");
    await Promise.resolve();
    expect(watched).toMatchObject({ changes: [], ends: [] });
    await expect(kv.get("/p/a")).rejects.toThrow('etcd of the management plane: cannot get "/p/a": client closed');
  });
});
