/**
 * Alarms: the delivery queue (order, retries with backoff, give-up, bounded queue) and the
 * leader's relay from the event log (which events alarm, the cursor across leaders), on
 * in-memory etcd and virtual time. The webhook over real HTTP is in test/integration/alarms.test.ts.
 */
import { describe, expect, test } from "bun:test";
import { alarmCatalogue, alarmOf, type AlarmNotice } from "../../src/alarms/catalogue.ts";
import { DeliveryQueue, type AlarmTransport } from "../../src/alarms/delivery-queue.ts";
import { AlarmRelay } from "../../src/alarms/relay.ts";
import { VirtualClock } from "../../src/core/clock.ts";
import { appendEvent } from "../../src/store/events.ts";
import { keys as keysFor } from "../../src/store/keys.ts";
import { MemoryCluster } from "../../src/store/memory-kv.ts";
import { eventKinds, type EventKind, type EventRecord } from "../../src/store/records.ts";

const keys = keysFor("/fitha");

/** A receiver that records what it got and fails while `down`. */
class Receiver implements AlarmTransport {
  readonly name = "test receiver";
  down = false;
  readonly got: AlarmNotice[] = [];
  readonly attemptsAtMs: number[] = [];
  constructor(readonly clock: VirtualClock) {}
  async send(notice: AlarmNotice): Promise<void> {
    this.attemptsAtMs.push(this.clock.nowMs());
    if (this.down) throw new Error("HTTP 503");
    this.got.push(notice);
  }
}

function notice(n: number): AlarmNotice {
  return { alarm: "host-down", status: "firing", severity: "critical", host: `host-${n}`, reason: `reason ${n}`, action: "look", event: { sequence: `seq-${n}`, time: "2026-12-07T09:00:00.000Z", kind: "ha-needed", by: "test" } };
}

describe("alarm delivery queue", () => {
  test("in order; a receiver that is down gets retries 1, 2, 4 s apart and every alarm once it is back", async () => {
    const clock = new VirtualClock(0);
    const receiver = new Receiver(clock);
    receiver.down = true;
    const queue = new DeliveryQueue({ transport: receiver, clock, queueLimit: 10, maxAttempts: 8, firstRetryMs: 1_000, maxRetryMs: 60_000 });
    for (const n of [1, 2, 3]) queue.enqueue(notice(n));
    await clock.advance(6_500);
    expect(receiver.attemptsAtMs).toEqual([0, 1_000, 3_000]);
    expect(receiver.got).toEqual([]);
    receiver.down = false;
    await clock.advance(1_000); // the attempt at 7 s
    expect(receiver.got.map((n) => n.host)).toEqual(["host-1", "host-2", "host-3"]);
    expect(queue.counts).toEqual({ delivered: 3, givenUp: 0, dropped: 0, failedAttempts: 3 });
    await queue.stop();
  });

  test("a notice is given up after maxAttempts and the next one goes", async () => {
    const clock = new VirtualClock(0);
    const receiver = new Receiver(clock);
    const settled: string[] = [];
    const queue = new DeliveryQueue({ transport: receiver, clock, queueLimit: 10, maxAttempts: 3, firstRetryMs: 100, maxRetryMs: 150, onSettled: (n, outcome) => settled.push(`${n.host} ${outcome}`) });
    receiver.down = true;
    queue.enqueue(notice(1));
    await clock.advance(10);
    queue.enqueue(notice(2));
    await clock.advance(240); // attempts at 0, 100, 250 (the second wait capped at 150); host-2's first at 250
    receiver.down = false;
    await clock.advance(100);
    expect(receiver.attemptsAtMs).toEqual([0, 100, 250, 250, 350]);
    expect(settled).toEqual(["host-1 given-up", "host-2 delivered"]);
    expect(queue.counts).toMatchObject({ delivered: 1, givenUp: 1 });
    await queue.stop();
  });

  test("a full queue drops new notices and reports how many once there is room", async () => {
    const clock = new VirtualClock(0);
    const receiver = new Receiver(clock);
    receiver.down = true;
    const queue = new DeliveryQueue({ transport: receiver, clock, queueLimit: 2, maxAttempts: 2, firstRetryMs: 1_000, maxRetryMs: 1_000 });
    queue.enqueue(notice(1));
    await clock.advance(0); // 1 in flight
    for (const n of [2, 3, 4, 5]) queue.enqueue(notice(n)); // 2 and 3 wait, 4 and 5 are dropped
    expect(queue.depth).toBe(2);
    await clock.advance(500);
    receiver.down = false;
    await clock.advance(1_000);
    expect(receiver.got.map((n) => n.alarm === "alarms-dropped" ? n.reason : n.host)).toEqual([
      "host-1",
      "host-2",
      "host-3",
      "2 alarm(s) were dropped: the queue of alarms for test receiver was full (limit 2)",
    ]);
    expect(queue.counts).toMatchObject({ dropped: 2, delivered: 4 });
    await queue.stop();
  });
});

describe("alarm catalogue", () => {
  test("every event kind raises at most one alarm; each alarm's events exist", () => {
    const mapped = alarmCatalogue.flatMap((d) => [...d.firedBy, ...d.resolvedBy]);
    expect(new Set(mapped).size).toBe(mapped.length);
    for (const kind of mapped) expect(eventKinds).toContain(kind);
  });

  test("firing events carry the alarm's severity and action; resolving ones are info", () => {
    const event = (kind: EventKind): EventRecord => ({ time: "2026-12-07T09:00:00.000Z", kind, host: "host-1", reason: "why", by: "agent@host-1" });
    expect(alarmOf("s1", event("plane-down"))).toMatchObject({ alarm: "plane-down", status: "firing", severity: "warning", host: "host-1", reason: "why" });
    expect(alarmOf("s2", event("plane-up"))).toMatchObject({ alarm: "plane-down", status: "resolved", severity: "info", action: "None: resolved." });
    expect(alarmOf("s3", event("vm-added"))).toBeUndefined();
  });

  test("src/alarms/README.md lists every alarm with the events that fire and resolve it", async () => {
    const readme = await Bun.file(new URL("../../src/alarms/README.md", import.meta.url)).text();
    for (const definition of alarmCatalogue) {
      const row = readme.split("\n").find((line) => line.startsWith(`| \`${definition.name}\` |`));
      expect(row, definition.name).toBeDefined();
      expect(row).toContain(`| ${definition.severity} |`);
      for (const kind of [...definition.firedBy, ...definition.resolvedBy]) expect(row).toContain(`\`${kind}\``);
    }
  });
});

describe("alarm relay on in-memory etcd and virtual time", () => {
  const wallStartMs = Date.parse("2026-12-07T09:00:00.000Z");

  function lab() {
    const clock = new VirtualClock(0);
    const cluster = new MemoryCluster(clock);
    const kv = cluster.connect({ name: "management", requestTimeoutMs: 1_000 });
    const now = () => new Date(wallStartMs + clock.nowMs());
    const event = (kind: EventKind, host: string | null = "host-1") => appendEvent(kv, keys, { time: now().toISOString(), kind, host, reason: `${kind} of ${host}`, by: "test" });
    const relay = (name: string, receiver: Receiver) => new AlarmRelay({ kv, keys, clock, now, name, leading: () => true, transport: receiver, queueLimit: 100 });
    return { clock, kv, event, relay };
  }

  test("without a cursor it starts from now: older events are not alarmed, new alarm events are, others not", async () => {
    const { clock, event, relay, kv } = lab();
    const receiver = new Receiver(clock);
    await event("ha-needed", "old-host");
    await clock.advance(1_000);
    const first = relay("controller-1", receiver);
    await clock.advance(100);
    await event("vm-added");
    await event("plane-down");
    await clock.advance(10);
    await event("plane-up");
    await clock.advance(100);
    expect(receiver.got.map((n) => [n.alarm, n.status, n.host])).toEqual([
      ["plane-down", "firing", "host-1"],
      ["plane-down", "resolved", "host-1"],
    ]);
    const cursor = JSON.parse((await kv.get(keys.alarmCursor))!.value) as { sequence: string; by: string };
    expect(cursor).toMatchObject({ sequence: receiver.got[1]!.event!.sequence, by: "controller@controller-1" });
    await first.stop();
  });

  test("a new leader goes on from the cursor: alarms the old leader could not deliver are sent, delivered ones are not sent again", async () => {
    const { clock, event, relay } = lab();
    const receiver = new Receiver(clock);
    const first = relay("controller-1", receiver);
    await clock.advance(100);
    await event("self-fenced", "host-1");
    await clock.advance(100);
    receiver.down = true;
    await event("recovery-failed", "host-2");
    await clock.advance(100);
    await first.stop(); // the leader dies with the recovery-failed alarm undelivered
    await event("clock-jump", "host-3"); // while no controller leads
    await clock.advance(100);
    receiver.down = false;
    const second = relay("controller-2", receiver);
    await clock.advance(100);
    expect(receiver.got.map((n) => `${n.alarm} ${n.host}`)).toEqual(["fence-executed host-1", "recovery-failed host-2", "clock-jump host-3"]);
    await second.stop();
  });
});
