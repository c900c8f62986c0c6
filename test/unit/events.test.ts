/** The event log on MemoryKv: sequences, listing oldest first with paging, bad values, retention. */
import { describe, expect, test } from "bun:test";
import { VirtualClock } from "../../src/core/clock.ts";
import { DecodeError } from "../../src/store/codec.ts";
import { appendEvent, badValueEvent, eventSequence, listEvents, sequenceBefore, trimEvents } from "../../src/store/events.ts";
import { keys } from "../../src/store/keys.ts";
import { MemoryCluster } from "../../src/store/memory-kv.ts";
import { eventRecord, type EventRecord } from "../../src/store/records.ts";

const k = keys("/fitha");
const at = (ms: number) => new Date(Date.UTC(2026, 0, 31, 12) + ms).toISOString();
const event = (ms: number, reason = `at ${ms}`): EventRecord => ({ time: at(ms), kind: "plane-down", host: "node-a", reason, by: "agent@node-a" });
const kv = () => new MemoryCluster(new VirtualClock()).connect();

describe("event sequences", () => {
  test("zero-padded time, then a random suffix: valid keys, in time order", () => {
    const early = eventSequence(5);
    const late = eventSequence(Date.UTC(2026, 0, 31));
    expect(early).toMatch(/^000000000000005-[0-9a-z]{8}$/);
    expect(late).toMatch(/^00\d{13}-[0-9a-z]{8}$/);
    expect(early < late).toBe(true);
    expect(k.event(late)).toBe(`/fitha/events/${late}`);
    expect(sequenceBefore(5) < early).toBe(true);
    expect(sequenceBefore(6) > early).toBe(true);
    expect(() => eventSequence(-1)).toThrow(RangeError);
  });
});

describe("appendEvent and listEvents", () => {
  test("events come back oldest first, whatever order they were appended in", async () => {
    const log = kv();
    for (const ms of [300, 100, 200]) await appendEvent(log, k, event(ms));
    const listed = await listEvents(log, k, { limit: 10 });
    expect(listed.events.map((e) => e.record.reason)).toEqual(["at 100", "at 200", "at 300"]);
    expect(listed.events[0]!.sequence).toStartWith(String(Date.parse(at(100))).padStart(15, "0"));
    expect(listed).toMatchObject({ bad: [], more: false });
  });

  test("paging with limit and since; since = sequenceBefore(time) lists from that time on", async () => {
    const log = kv();
    for (let ms = 0; ms < 5; ms++) await appendEvent(log, k, event(ms * 1_000));
    const first = await listEvents(log, k, { limit: 2 });
    expect(first.events.map((e) => e.record.reason)).toEqual(["at 0", "at 1000"]);
    expect(first.more).toBe(true);
    const second = await listEvents(log, k, { limit: 2, since: first.lastSequence! });
    expect(second.events.map((e) => e.record.reason)).toEqual(["at 2000", "at 3000"]);
    const fromTime = await listEvents(log, k, { limit: 10, since: sequenceBefore(Date.parse(at(3_000))) });
    expect(fromTime.events.map((e) => e.record.reason)).toEqual(["at 3000", "at 4000"]);
    await expect(listEvents(log, k, { limit: 0 })).rejects.toThrow(RangeError);
  });

  test("a bad value under events is set apart, never thrown", async () => {
    const log = kv();
    await appendEvent(log, k, event(100));
    await log.put(k.event(eventSequence(Date.parse(at(200)))), JSON.stringify({ ...event(200), kind: "meteor-strike" }));
    await appendEvent(log, k, event(300));
    const listed = await listEvents(log, k, { limit: 10 });
    expect(listed.events.map((e) => e.record.reason)).toEqual(["at 100", "at 300"]);
    expect(listed.bad).toHaveLength(1);
    expect(listed.bad[0]!.problems[0]).toStartWith('kind: expected one of "host-registered"');
  });

  test("an invalid record is refused before anything is written", async () => {
    const log = kv();
    await expect(appendEvent(log, k, { ...event(0), time: "yesterday" })).rejects.toThrow(DecodeError);
    expect((await log.getPrefix(k.eventsPrefix)).count).toBe(0);
  });

  test("a taken sequence is retried with another suffix, a bounded number of times", async () => {
    const log = kv();
    let draws = 0;
    const stuck = () => (draws++ < 8 ? 0 : 0.5); // the first suffix "00000000", then "iiiiiiii"
    await appendEvent(log, k, event(0), () => 0);
    expect(await appendEvent(log, k, event(0), stuck)).toMatch(/-i{8}$/);
    await expect(appendEvent(log, k, event(0), () => 0)).rejects.toThrow("3 sequences in a row were taken");
  });
});

describe("trimEvents", () => {
  test("keeps the newest, deleting the oldest in bounded batches", async () => {
    const log = kv();
    for (let ms = 0; ms < 25; ms++) await appendEvent(log, k, event(ms));
    expect(await trimEvents(log, k, { keep: 10, batchSize: 4, maxBatches: 2 })).toBe(8);
    expect(await trimEvents(log, k, { keep: 10, batchSize: 4, maxBatches: 5 })).toBe(7);
    expect(await trimEvents(log, k, { keep: 10 })).toBe(0);
    const left = await listEvents(log, k, { limit: 100 });
    expect(left.events.map((e) => e.record.reason)).toEqual(Array.from({ length: 10 }, (_, i) => `at ${15 + i}`));
  });
});

describe("badValueEvent", () => {
  test("names the key and the problems, and is itself a valid event", () => {
    const record = badValueEvent(new DecodeError("/fitha/hosts/x", ["name: expected a string", "hostId: expected an integer"]), "controller@ctl-1", new Date(at(0)));
    expect(record).toEqual({ time: at(0), kind: "bad-value", host: null, reason: "bad value under /fitha/hosts/x: name: expected a string; hostId: expected an integer", by: "controller@ctl-1" });
    const long = badValueEvent(new DecodeError("/fitha/mode", ["x".repeat(5_000)]), "agent@a", new Date(at(0)));
    expect(eventRecord(JSON.parse(JSON.stringify(long)), "long").reason).toHaveLength(4096);
  });
});
