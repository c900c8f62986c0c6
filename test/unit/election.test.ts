/**
 * Controller election on MemoryKv and virtual time: who leads, takeover bounds, and that a
 * leader cut off from etcd stops believing it leads before anyone else can lead. The same
 * against a real etcd (a SIGKILLed leader process, a dropped link) is in
 * test/integration/election.test.ts.
 */
import { describe, expect, test } from "bun:test";
import { VirtualClock } from "../../src/core/clock.ts";
import { Election, leaderRecord, type ElectionOptions } from "../../src/store/election.ts";
import { keys } from "../../src/store/keys.ts";
import { MemoryCluster, type MemoryKv } from "../../src/store/memory-kv.ts";
import { readRecord } from "../../src/store/typed.ts";

const key = keys("/fitha").election;
const ttlMs = 6_000;
const marginMs = 1_000;

interface Candidate {
  readonly kv: MemoryKv;
  readonly election: Election;
  readonly elected: number[];
  readonly lost: { atMs: number; reason: string }[];
}

function setup(requestTimeoutMs = 1_000, historyRevisions?: number) {
  const clock = new VirtualClock();
  const cluster = new MemoryCluster(clock, historyRevisions === undefined ? {} : { historyRevisions });
  const candidate = (options: Partial<ElectionOptions> = {}): Candidate => {
    const kv = cluster.connect({ requestTimeoutMs });
    const elected: number[] = [];
    const lost: { atMs: number; reason: string }[] = [];
    const election = new Election(kv, key, clock, {
      ttlMs,
      marginMs,
      onElected: () => elected.push(clock.nowMs()),
      onLost: (reason) => lost.push({ atMs: clock.nowMs(), reason }),
      ...options,
    });
    return { kv, election, elected, lost };
  };
  /** Lets `ms` pass in small steps, checking at each that no two candidates lead at once. */
  const pass = async (ms: number, ...candidates: Candidate[]) => {
    for (let passed = 0; passed < ms; passed += 50) {
      await clock.advance(50);
      const leaders = candidates.filter((c) => c.election.isLeader(clock.nowMs()));
      expect(leaders.length).toBeLessThanOrEqual(1);
    }
  };
  const leaderName = async () => {
    const read = await readRecord(cluster.connect(), key, leaderRecord);
    return read === undefined || "bad" in read ? undefined : read.record.name;
  };
  return { clock, cluster, candidate, pass, leaderName };
}

describe("Election", () => {
  test("the first candidate leads and keeps leading; the second waits", async () => {
    const { clock, candidate, pass, leaderName } = setup();
    const a = candidate();
    const b = candidate();
    const leadership = a.election.campaign("ctl-a");
    await clock.advance(0);
    expect((await leadership).isLeader(clock.nowMs())).toBe(true);
    void b.election.campaign("ctl-b");
    await pass(5 * ttlMs, a, b);
    expect(a.election.isLeader(clock.nowMs())).toBe(true);
    expect(b.election.isLeader(clock.nowMs())).toBe(false);
    expect(await leaderName()).toBe("ctl-a");
    expect(a.lost).toEqual([]);
    await a.election.resign();
    await b.election.resign();
  });

  test("a resigning leader hands over at once: its lease is revoked", async () => {
    const { clock, candidate, pass, leaderName } = setup();
    const a = candidate();
    const b = candidate();
    void a.election.campaign("ctl-a");
    await clock.advance(0);
    void b.election.campaign("ctl-b");
    await pass(1_000, a, b);
    const resignedAtMs = clock.nowMs();
    await a.election.resign();
    expect(a.election.isLeader(clock.nowMs())).toBe(false);
    await clock.advance(0);
    expect(b.elected).toEqual([resignedAtMs]);
    expect(await leaderName()).toBe("ctl-b");
    expect(a.lost).toEqual([]); // resigning is no loss
    await b.election.resign();
  });

  test("a standby whose leader's key has fallen out of etcd's history waits quietly, and still takes over (found by the simulator)", async () => {
    const { clock, cluster, candidate, pass } = setup(1_000, 20);
    const a = candidate();
    void a.election.campaign("ctl-a");
    await clock.advance(0);
    // The leader's key is written once and kept alive; other writes push its revision out of
    // the history (etcd's compaction): a watch from that revision fails at once.
    const other = cluster.connect();
    for (let i = 0; i < 50; i++) await other.put(`/elsewhere/${i}`, "x");
    const b = candidate();
    // Counts the standby's reads; a spin is cut short (by an error the campaign does not catch)
    // rather than starving the event loop.
    let reads = 0;
    const counted = () => {
      if (++reads > 100) throw new Error("the standby reads the election key in a loop");
    };
    const [get, getPrefix] = [b.kv.get.bind(b.kv), b.kv.getPrefix.bind(b.kv)];
    b.kv.get = async (...args) => (counted(), await get(...args));
    b.kv.getPrefix = async (...args) => (counted(), await getPrefix(...args));
    void b.election.campaign("ctl-b");
    await pass(3 * ttlMs, a, b);
    // One look per TTL or so, not a loop on the spot.
    expect(reads).toBeLessThanOrEqual(6);
    const resignedAtMs = clock.nowMs();
    await a.election.resign();
    await pass(ttlMs, a, b);
    expect(b.elected).toHaveLength(1);
    expect(b.elected[0]! - resignedAtMs).toBeLessThanOrEqual(ttlMs);
    await b.election.resign();
  });

  test("a leader that dies without a word: a standby leads within 2 TTL, never both at once", async () => {
    const { clock, candidate, pass } = setup();
    const a = candidate();
    const b = candidate();
    void a.election.campaign("ctl-a");
    await clock.advance(0);
    void b.election.campaign("ctl-b");
    await pass(2_500, a, b);
    const diedAtMs = clock.nowMs();
    a.kv.close(); // nothing reaches etcd from it any more, not even a revoke
    await pass(2 * ttlMs, a, b);
    expect(b.elected).toHaveLength(1);
    expect(b.elected[0]! - diedAtMs).toBeLessThanOrEqual(2 * ttlMs);
    // Its key outlived it by the lease: the last renewal at most (ttl - margin) / 3 before.
    expect(b.elected[0]! - diedAtMs).toBeGreaterThanOrEqual(ttlMs - (ttlMs - marginMs) / 3);
    await a.election.resign();
    await b.election.resign();
  });

  for (const [how, requestTimeoutMs] of [
    ["its renewal times out", 1_000],
    ["no answer before its validity ends", 60_000],
  ] as const) {
    test(`a leader cut off from etcd (${how}) stops leading before a standby can lead`, async () => {
      const { clock, candidate, pass } = setup(requestTimeoutMs);
      const a = candidate();
      const b = candidate();
      void a.election.campaign("ctl-a");
      await clock.advance(0);
      void b.election.campaign("ctl-b");
      await pass(2_000, a, b);
      a.kv.cut("hang");
      await pass(2 * ttlMs, a, b);
      expect(a.lost).toHaveLength(1);
      expect(b.elected).toHaveLength(1);
      // It knew before anyone could lead, by the margin at least.
      expect(b.elected[0]! - a.lost[0]!.atMs).toBeGreaterThanOrEqual(marginMs);
      expect(a.lost[0]!.reason).toMatch(requestTimeoutMs < ttlMs ? /^renewal failed: .*timeout \(no answer within 1000 ms\)$/ : /^no answer from etcd of the management plane before the lease could expire$/);
      a.kv.heal();
      await pass(2 * ttlMs, a, b);
      expect(b.election.isLeader(clock.nowMs())).toBe(true);
      expect(a.election.isLeader(clock.nowMs())).toBe(false);
      // A resign waits for a pending call, bounded by the request deadline.
      await clock.run(a.election.resign());
      await b.election.resign();
    });
  }

  test("a refused renewal ends leadership at once; the healed candidate follows the new leader", async () => {
    const { clock, candidate, pass } = setup();
    const a = candidate();
    const b = candidate();
    void a.election.campaign("ctl-a");
    await clock.advance(0);
    void b.election.campaign("ctl-b");
    await pass(500, a, b);
    a.kv.cut("refuse");
    // The next renewal, (ttl - margin) / 3 after the grant, fails: leadership ends right then.
    await pass((ttlMs - marginMs) / 3, a, b);
    expect(a.lost).toHaveLength(1);
    expect(a.lost[0]!.reason).toContain("unreachable");
    expect(a.election.isLeader(clock.nowMs())).toBe(false);
    a.kv.heal();
    await pass(2 * ttlMs, a, b);
    expect(b.elected).toHaveLength(1);
    await b.election.resign();
    await pass(100, a, b);
    expect(a.elected).toHaveLength(2);
    expect(a.election.isLeader(clock.nowMs())).toBe(true);
    await a.election.resign();
  });

  test("the key deleted under the leader: leadership ends at the next renewal, and it campaigns again", async () => {
    const { clock, cluster, candidate, pass } = setup();
    const a = candidate();
    void a.election.campaign("ctl-a");
    await clock.advance(0);
    await cluster.connect().delete(key);
    await pass(ttlMs, a);
    expect(a.lost.map((l) => l.reason)).toEqual([`${key} was deleted or overwritten`]);
    expect(a.elected).toHaveLength(2);
    expect(a.election.isLeader(clock.nowMs())).toBe(true);
    await a.election.resign();
    expect(await cluster.connect().get(key)).toBeUndefined();
  });

  test("resign() before being elected rejects the campaign; bad options are refused", async () => {
    const { clock, candidate } = setup();
    const a = candidate();
    const b = candidate();
    void a.election.campaign("ctl-a");
    await clock.advance(0);
    const waiting = b.election.campaign("ctl-b");
    await b.election.resign();
    await expect(waiting).rejects.toThrow("resigned before being elected");
    expect(() => b.election.campaign("again")).toThrow("campaign() was called already");
    await a.election.resign();
    expect(() => candidate({ marginMs: 0 })).toThrow(RangeError);
    expect(() => candidate({ marginMs: ttlMs })).toThrow("need 0 < margin ≤ TTL / 2");
  });
});
