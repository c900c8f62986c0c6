/** listRecentEvents on MemoryKv: the newest events without reading the whole log, bounded reads. */
import { describe, expect, test } from "bun:test";
import { VirtualClock } from "../../src/core/clock.ts";
import { appendEvent, eventSequence, listRecentEvents } from "../../src/store/events.ts";
import { keys } from "../../src/store/keys.ts";
import type { Kv } from "../../src/store/kv.ts";
import { MemoryCluster } from "../../src/store/memory-kv.ts";
import type { EventRecord } from "../../src/store/records.ts";

const k = keys("/fitha");
const nowMs = Date.UTC(2026, 0, 31, 12);
const hourMs = 3_600_000;
const event = (agoMs: number, host = "node-a"): EventRecord => ({ time: new Date(nowMs - agoMs).toISOString(), kind: "plane-down", host, reason: `${agoMs} ms ago`, by: "agent@node-a" });

/** A MemoryKv whose range reads are counted. */
function countingKv(): { kv: Kv; reads: () => number } {
  const kv = new MemoryCluster(new VirtualClock()).connect();
  let reads = 0;
  const getPrefix = kv.getPrefix.bind(kv);
  kv.getPrefix = (prefix, options) => {
    reads++;
    return getPrefix(prefix, options);
  };
  return { kv, reads: () => reads };
}

const reasons = (list: { events: readonly { record: EventRecord }[] }) => list.events.map((e) => e.record.reason);

describe("listRecentEvents", () => {
  test("the newest `limit` events, oldest first, across windows and pages (also one from a clock ahead)", async () => {
    const { kv } = countingKv();
    const agos = [3 * 24 * hourMs, 30 * hourMs, 5 * hourMs, 90 * 60_000, 10 * 60_000, 60_000, 1_000, -5_000];
    for (const ago of agos) await appendEvent(kv, k, event(ago));
    for (const limit of [1, 3, 5, 8, 20]) {
      const recent = await listRecentEvents(kv, k, { limit, nowMs, pageSize: 2 });
      expect(reasons(recent)).toEqual(agos.slice(-limit).map((ago) => `${ago} ms ago`));
    }
  });

  test("a filter that matches only old events still finds them", async () => {
    const { kv } = countingKv();
    await appendEvent(kv, k, event(10 * 24 * hourMs, "node-b"));
    for (let i = 0; i < 30; i++) await appendEvent(kv, k, event(i * 60_000));
    const recent = await listRecentEvents(kv, k, { limit: 5, nowMs, match: (e) => e.host === "node-b", pageSize: 7 });
    expect(reasons(recent)).toEqual([`${10 * 24 * hourMs} ms ago`]);
  });

  test("recent events take a read or two; old ones a bounded number (the windows double)", async () => {
    const recentLog = countingKv();
    for (let i = 0; i < 50; i++) await appendEvent(recentLog.kv, k, event(i * 1_000));
    expect((await listRecentEvents(recentLog.kv, k, { limit: 5, nowMs })).events).toHaveLength(5);
    expect(recentLog.reads()).toBe(2);

    const oldLog = countingKv();
    await appendEvent(oldLog.kv, k, event(365 * 24 * hourMs));
    expect((await listRecentEvents(oldLog.kv, k, { limit: 5, nowMs })).events).toHaveLength(1);
    // From an hour back to a year, doubling: 15 windows (1 h to 2^14 h) of one read each, plus the first read.
    expect(oldLog.reads()).toBe(16);
  });

  test("an empty log; a bad value is reported once though pages overlap windows; the revision of the first read", async () => {
    const { kv } = countingKv();
    const empty = await listRecentEvents(kv, k, { limit: 5, nowMs });
    expect(empty.events).toEqual([]);
    await appendEvent(kv, k, event(2 * hourMs));
    await kv.put(k.event(eventSequence(nowMs - 3 * hourMs)), "not json");
    const revision = await kv.put(k.event(eventSequence(nowMs - 60_000)), JSON.stringify(event(60_000)));
    const recent = await listRecentEvents(kv, k, { limit: 5, nowMs, pageSize: 1 });
    expect(reasons(recent)).toEqual([`${2 * hourMs} ms ago`, "60000 ms ago"]);
    expect(recent.bad).toHaveLength(1);
    expect(recent.bad[0]!.problems[0]).toStartWith("not JSON");
    expect(recent.revision).toBe(revision);
    await expect(listRecentEvents(kv, k, { limit: 0, nowMs })).rejects.toThrow(RangeError);
  });
});
