import { describe, expect, test } from "bun:test";
import { DeltaLease, HostIdInUseError } from "../../src/lease/delta-lease.ts";
import { HostView } from "../../src/lease/host-view.ts";
import type { DeltaRecord } from "../../src/lease/records.ts";
import { MemoryLockspace } from "../helpers/memory-lockspace.ts";

// ioTimeout 1 s, kill budget 6 s: renewal 2 s, warn 4 s, fail 8 s, host dead 14 s.
const T = 1_000;

describe("delta lease: joining", () => {
  test("a free sector with a uniquely allocated id is joined at once, generation 1", async () => {
    const space = await MemoryLockspace.create();
    const before = space.clock.nowMs();
    const { lease } = await space.join(3);
    expect(lease.hostId).toBe(3);
    expect(lease.generation).toBe(1);
    expect(space.clock.nowMs() - before).toBeLessThan(T);
    expect(lease.phase()).toBe("ok");
  });

  test("a hand-configured id waits the collision delay (2T) before trusting the sector", async () => {
    const space = await MemoryLockspace.create();
    const before = space.clock.nowMs();
    await space.join(3, { idAllocation: "configured" });
    expect(space.clock.nowMs() - before).toBeGreaterThanOrEqual(2 * T);
  });

  test("two hosts configured with the same id at the same time: exactly one joins", async () => {
    const space = await MemoryLockspace.create();
    const join = (name: string) =>
      DeltaLease.join(space.device(name), space.clock, { hostId: 5, hostName: name, installId: name === "a" ? "a".repeat(32) : "b".repeat(32), ioTimeoutMs: T, idAllocation: "configured" });
    const results = await space.clock.run(Promise.allSettled([join("a"), join("b")]));
    expect(results.filter((r) => r.status === "fulfilled")).toHaveLength(1);
    const failure = results.find((r) => r.status === "rejected") as PromiseRejectedResult;
    expect(failure.reason).toBeInstanceOf(HostIdInUseError);
  });

  test("a second host configured with a live host's id fails to join, naming the holder", async () => {
    const space = await MemoryLockspace.create();
    const { lease } = await space.join(4);
    const renewing = (async () => {
      for (let i = 0; i < 10; i++) {
        await space.clock.sleep(lease.timeline.renewalIntervalMs);
        await lease.renew();
      }
    })();
    const intruder = DeltaLease.join(space.device("intruder"), space.clock, { hostId: 4, hostName: "intruder", installId: "f".repeat(32), ioTimeoutMs: T, idAllocation: "configured" });
    const outcome = await space.clock.run(intruder.then(() => "joined", (error: unknown) => error));
    expect(outcome).toBeInstanceOf(HostIdInUseError);
    expect((outcome as Error).message).toBe(`host id 4 is in use by "host4" (generation 1, install 00000000)`);
    expect(lease.phase()).toBe("ok");
    await space.clock.run(renewing);
  });

  test("the id of a dead host (silent for host-dead) is taken over with the next generation", async () => {
    const space = await MemoryLockspace.create();
    const { lease: old } = await space.join(2);
    const deadSinceMs = space.clock.nowMs();
    const successor = await space.clock.run(
      DeltaLease.join(space.device("new"), space.clock, { hostId: 2, hostName: "new", installId: "e".repeat(32), ioTimeoutMs: T, idAllocation: "unique" }),
    );
    expect(space.clock.nowMs() - deadSinceMs).toBeGreaterThanOrEqual(old.timeline.hostDeadMs);
    expect(successor.generation).toBe(2);
    // The old incarnation finds out at its next renewal (and is long past fail anyway).
    expect((await space.clock.run(old.renew())).ok).toBe(false);
    expect(old.phase()).toBe("failed");
  });

  test("the same installation rejoins its own id at once, with a new generation", async () => {
    const space = await MemoryLockspace.create();
    await space.join(6);
    const before = space.clock.nowMs();
    const { lease } = await space.join(6);
    expect(lease.generation).toBe(2);
    expect(space.clock.nowMs() - before).toBeLessThan(T);
  });
});

describe("delta lease: renewing", () => {
  test("renewals keep it ok; without them it is warn at 4T and failed at 8T, for good", async () => {
    const space = await MemoryLockspace.create();
    const { lease } = await space.join(1);
    await space.clock.advance(3 * T);
    expect((await space.clock.run(lease.renew())).ok).toBe(true);
    expect(lease.phase()).toBe("ok");
    await space.clock.advance(4 * T);
    expect(lease.phase()).toBe("warn");
    await space.clock.advance(4 * T);
    expect(lease.phase()).toBe("failed");
    const late = await space.clock.run(lease.renew());
    expect(late.ok).toBe(false);
    expect(lease.phase()).toBe("failed");
  });

  test("a renewal that completes after fail does not revive the lease", async () => {
    const space = await MemoryLockspace.create();
    const { lease, device } = await space.join(1);
    device.setFault({ kind: "hang" });
    const pending = lease.renew();
    await space.clock.advance(8 * T);
    expect(lease.phase()).toBe("failed");
    device.setFault(undefined);
    const outcome = await space.clock.run(pending);
    expect(outcome.ok).toBe(false);
    expect(lease.phase()).toBe("failed");
  });

  test("a timed-out write that lands later is recognised as ours, not as a collision", async () => {
    const space = await MemoryLockspace.create();
    const { lease, device } = await space.join(1);
    device.setFault({ kind: "delay", ms: 2 * T }, "write");
    const slow = await space.clock.run(lease.renew());
    expect(slow).toMatchObject({ ok: false, collision: false });
    device.setFault(undefined);
    await space.clock.advance(2 * T); // the delayed write lands now
    const next = await space.clock.run(lease.renew());
    expect(next.ok).toBe(true);
  });

  test("another writer on our sector is detected at the next renewal and ends the lease", async () => {
    const space = await MemoryLockspace.create();
    const { lease } = await space.join(1);
    const other = space.device("other");
    const { encodeRecord } = await import("../../src/lease/records.ts");
    const { deltaOffset } = await import("../../src/lease/layout.ts");
    const foreign: DeltaRecord = { kind: "delta", hostId: 1, generation: 9, timestampMs: 1, ioTimeoutMs: T, installId: "9".repeat(32), hostName: "rogue", state: "held" };
    await space.clock.run(other.io([{ kind: "write", offset: deltaOffset(lease.lockspace.layout, 1), data: encodeRecord(foreign, 512) }], T));
    const outcome = await space.clock.run(lease.renew());
    expect(outcome).toMatchObject({ ok: false, collision: true });
    expect(lease.phase()).toBe("failed");
    expect(lease.lostReason).toContain('"rogue"');
  });

  test("renewal I/O is one batch: a read of the delta area and a one-sector write", async () => {
    const space = await MemoryLockspace.create({ hosts: 64, slots: 100 });
    const { lease, device } = await space.join(1);
    const before = { ...device.stats };
    await space.clock.run(lease.renew());
    expect(device.stats.reads - before.reads).toBe(1);
    expect(device.stats.bytesRead - before.bytesRead).toBe(64 * 512);
    expect(device.stats.writes - before.writes).toBe(1);
    expect(device.stats.bytesWritten - before.bytesWritten).toBe(512);
  });
});

describe("host view", () => {
  const record = (generation: number, timestampMs: number, state: "held" | "released" = "held"): DeltaRecord => ({
    kind: "delta", hostId: 1, generation, timestampMs, ioTimeoutMs: T, installId: "1".repeat(32), hostName: "h1", state,
  });
  // host dead for T = 1 s, K = 6 s: 14 s; for superseded incarnations (max T 2 s): 22 s.
  const view = () => new HostView(1, 22_000, 6_000);

  test("dead only after host-dead of observed silence, counted from the read that saw the last change", () => {
    const v = view();
    v.observe([record(1, 100)], 0, 10);
    v.observe([record(1, 200)], 1_000, 1_010); // changed: silence counts from 1_010
    v.observe([record(1, 200)], 15_009, 15_020);
    expect(v.liveness(1, 1)).toEqual({ state: "live", deadInMs: 1 });
    v.observe([record(1, 200)], 15_010, 15_020);
    expect(v.liveness(1, 1)).toEqual({ state: "dead" });
  });

  test("a failed read of our own restarts every timer at the next good read", () => {
    const v = view();
    v.observe([record(1, 100)], 0, 10);
    v.blind();
    expect(v.liveness(1, 1)).toEqual({ state: "live", deadInMs: undefined });
    v.observe([record(1, 100)], 20_000, 20_010);
    expect(v.liveness(1, 1)).toMatchObject({ state: "live" });
    v.observe([record(1, 100)], 34_010, 34_020);
    expect(v.liveness(1, 1)).toEqual({ state: "dead" });
  });

  test("an older generation is dead only host-dead (with the largest T) after the new one appeared", () => {
    const v = view();
    v.observe([record(1, 100)], 0, 10);
    v.observe([record(2, 5)], 1_000, 1_010);
    v.observe([record(2, 6)], 20_000, 20_010);
    expect(v.liveness(1, 1)).toMatchObject({ state: "live" });
    expect(v.liveness(1, 2)).toMatchObject({ state: "live" });
    v.observe([record(2, 7)], 23_010, 23_020);
    expect(v.liveness(1, 1)).toEqual({ state: "dead" });
    expect(v.liveness(1, 2)).toMatchObject({ state: "live" });
    // A generation never seen yet is not known to be dead.
    expect(v.liveness(1, 3)).toEqual({ state: "live", deadInMs: undefined });
  });

  test("summary: live within 4T of the last change, failing after, dead at host-dead; released is free", () => {
    const v = view();
    const other: DeltaRecord = { ...record(1, 1), hostId: 2, hostName: "h2", state: "released" };
    const twoHosts = new HostView(2, 22_000, 6_000);
    twoHosts.observe([record(1, 100), other], 0, 10);
    expect(twoHosts.summary()).toEqual([
      { hostId: 1, hostName: "h1", generation: 1, state: "live", silentMs: 0 },
      { hostId: 2, hostName: "h2", generation: 1, state: "free", silentMs: undefined },
    ]);
    twoHosts.observe([record(1, 100), other], 4_010, 4_020);
    expect(twoHosts.summary()[0]).toMatchObject({ state: "failing", silentMs: 4_000 });
    twoHosts.observe([record(1, 100), other], 14_010, 14_020);
    expect(twoHosts.summary()[0]).toMatchObject({ state: "dead", silentMs: 14_000 });
    twoHosts.blind();
    expect(twoHosts.summary()[0]).toMatchObject({ state: "unknown" });
    expect(v.summary()).toEqual([]);
  });

  test("a corrupt or never-read record is never dead", () => {
    const v = view();
    expect(v.liveness(1, 1)).toEqual({ state: "live", deadInMs: undefined });
    v.observe([{ corrupt: "bad" }], 0, 1);
    v.observe([{ corrupt: "bad" }], 100_000, 100_001);
    expect(v.liveness(1, 1)).toEqual({ state: "live", deadInMs: undefined });
  });
});
