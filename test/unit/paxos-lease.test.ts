import { describe, expect, test } from "bun:test";
import { acquireLease, inquireLease, NotOwnerError, releaseLease, SlotInUseError, type AcquireResult } from "../../src/lease/paxos-lease.ts";
import type { DeltaLease } from "../../src/lease/delta-lease.ts";
import { MemoryLockspace } from "../helpers/memory-lockspace.ts";

const T = 1_000;
const vm = "6c1a2b3c-0000-4000-8000-000000000001";

/** Renews `lease` every renewal interval until `stop()` — a lockd in miniature, on virtual time. */
function keepRenewing(space: MemoryLockspace, lease: DeltaLease): { stop: () => void; done: Promise<void> } {
  let running = true;
  const done = (async () => {
    while (running && lease.phase() !== "failed") {
      await space.clock.sleep(lease.timeline.renewalIntervalMs);
      if (running) await lease.renew();
    }
  })();
  return { stop: () => (running = false), done };
}

describe("VM lease (Disk Paxos)", () => {
  test("acquire, inquire, acquire again (idempotent), release, re-acquire with the next version", async () => {
    const space = await MemoryLockspace.create();
    const { lease } = await space.join(1);
    expect(await space.clock.run(acquireLease(lease, 0, vm))).toEqual({ status: "acquired", lver: 1, already: false });
    expect(await space.clock.run(acquireLease(lease, 0, vm))).toEqual({ status: "acquired", lver: 1, already: true });
    const state = await space.clock.run(inquireLease(lease, 0));
    expect(state.leader).toMatchObject({ ownerHostId: 1, ownerGeneration: 1, lver: 1, state: "held", resource: vm });
    expect(await space.clock.run(releaseLease(lease, 0, vm))).toBe("released");
    expect(await space.clock.run(releaseLease(lease, 0, vm))).toBe("not-held");
    expect(await space.clock.run(acquireLease(lease, 0, vm))).toEqual({ status: "acquired", lver: 2, already: false });
  });

  test("release with the acquired version is one sector write, and frees the lease like a full release", async () => {
    const space = await MemoryLockspace.create();
    const { lease, device } = await space.join(1);
    const { lease: other } = await space.join(2);
    const acquired = await space.clock.run(acquireLease(lease, 0, vm));
    if (acquired.status !== "acquired") throw new Error("not acquired");
    const before = { ...device.stats };
    expect(await space.clock.run(releaseLease(lease, 0, vm, { lver: acquired.lver }))).toBe("released");
    expect(device.stats.reads - before.reads).toBe(0);
    expect(device.stats.bytesWritten - before.bytesWritten).toBe(512);
    expect(await space.clock.run(acquireLease(other, 0, vm))).toMatchObject({ status: "acquired", lver: 2 });
  });

  test("VM lease I/O can go through a device of its own, leaving the host lease's device to renewals", async () => {
    const space = await MemoryLockspace.create();
    const { lease, device: renewals } = await space.join(1);
    const leases = space.device("host1-vm-leases");
    const before = { ...renewals.stats };
    const acquired = await space.clock.run(acquireLease(lease, 0, vm, { device: leases }));
    expect(acquired).toMatchObject({ status: "acquired" });
    expect(await space.clock.run(inquireLease(lease, 0, { device: leases }))).toMatchObject({ leader: { ownerHostId: 1 } });
    expect(renewals.stats).toEqual(before);
    expect(leases.stats.writes).toBe(3);
  });

  test("acquiring a free lease reads the slot and the ballots twice, and writes three sectors", async () => {
    const space = await MemoryLockspace.create({ hosts: 64 });
    const { lease, device } = await space.join(1);
    const before = { ...device.stats };
    await space.clock.run(acquireLease(lease, 0, vm));
    expect(device.stats.bytesRead - before.bytesRead).toBe(65 * 512 + 2 * 64 * 512);
    expect(device.stats.bytesWritten - before.bytesWritten).toBe(3 * 512);
  });

  test("a lease held by a live host is refused, naming the owner; released, it is free at once", async () => {
    const space = await MemoryLockspace.create();
    const { lease: a } = await space.join(1);
    const { lease: b } = await space.join(2);
    await space.clock.run(acquireLease(a, 0, vm));
    const refused = await space.clock.run(acquireLease(b, 0, vm));
    expect(refused).toMatchObject({ status: "held", owner: { hostId: 1, generation: 1 }, ownerName: "host1" });
    expect((refused as Extract<AcquireResult, { status: "held" }>).deadInMs).toBeGreaterThan(0);
    await space.clock.run(releaseLease(a, 0, vm));
    expect(await space.clock.run(acquireLease(b, 0, vm))).toMatchObject({ status: "acquired", lver: 2 });
  });

  test("a slot is bound to its resource while held", async () => {
    const space = await MemoryLockspace.create();
    const { lease } = await space.join(1);
    await space.clock.run(acquireLease(lease, 1, vm));
    await expect(space.clock.run(acquireLease(lease, 1, "other-vm"))).rejects.toThrow(SlotInUseError);
  });

  test("takeover of a dead owner's lease: refused until host-dead by the taker's own clock, then granted", async () => {
    const space = await MemoryLockspace.create();
    const { lease: owner } = await space.join(1);
    const { lease: taker } = await space.join(2);
    const takerRenewals = keepRenewing(space, taker);
    await space.clock.run(acquireLease(owner, 0, vm));
    // The owner dies now: it never renews again. The taker observed its record at join/acquire.
    const diedAtMs = space.clock.nowMs();
    const hostDeadMs = owner.timeline.hostDeadMs; // 8T + K = 14 s
    await space.clock.advance(hostDeadMs - 2 * T);
    const early = await space.clock.run(acquireLease(taker, 0, vm));
    expect(early.status).toBe("held");
    // Keep trying, as a recovery task would, and note when it succeeds.
    let result: AcquireResult = early;
    while (result.status === "held") {
      await space.clock.advance(100);
      result = await space.clock.run(acquireLease(taker, 0, vm));
    }
    const grantedAfterMs = space.clock.nowMs() - diedAtMs;
    expect(result).toMatchObject({ status: "acquired", lver: 2 });
    expect(grantedAfterMs).toBeGreaterThanOrEqual(hostDeadMs);
    expect(grantedAfterMs).toBeLessThan(hostDeadMs + 2 * T + 500);
    // The old owner, were it to wake up, is failed and cannot act.
    expect(owner.phase()).toBe("failed");
    await expect(space.clock.run(releaseLease(owner, 0, vm))).rejects.toThrow(NotOwnerError);
    takerRenewals.stop();
    await space.clock.run(takerRenewals.done);
  });

  test("hosts racing for one lease under random delays: exactly one owner per version, never two at once", async () => {
    for (let seed = 1; seed <= 20; seed++) {
      const random = mulberry32(seed);
      const space = await MemoryLockspace.create({ hosts: 6 });
      const hosts = await space.joinAll(6);
      for (const { device } of hosts) device.setFault({ kind: "delay", ms: Math.floor(random() * 50) + 1 });
      const results = await space.clock.run(Promise.all(hosts.map(({ lease }) => acquireLease(lease, 0, vm, { random }))));
      const winners = results.filter((r) => r.status === "acquired");
      expect({ seed, winners: winners.length }).toEqual({ seed, winners: 1 });
      const winnerId = hosts[results.findIndex((r) => r.status === "acquired")]!.lease.hostId;
      for (const r of results) if (r.status === "held") expect({ seed, owner: r.owner.hostId }).toEqual({ seed, owner: winnerId });
      const state = await space.clock.run(inquireLease(hosts[0]!.lease, 0));
      expect(state.leader?.ownerHostId).toBe(winnerId);
    }
  });

  test("an acquisition that reached phase 2 but never wrote its leader is finished by the next acquirer", async () => {
    const space = await MemoryLockspace.create();
    const { lease: crashed, device } = await space.join(1);
    const { lease: other } = await space.join(2);
    // Leader writes of host 1 fail: its ballots land, its leader never does.
    let writes = 0;
    const original = device.io.bind(device);
    device.io = async (ops, timeoutMs) => {
      if (ops.some((op) => op.kind === "write" && op.data.length === 512) && ++writes === 3) throw new Error("crash before the leader write");
      return original(ops, timeoutMs);
    };
    await expect(space.clock.run(acquireLease(crashed, 0, vm))).rejects.toThrow("crash before the leader write");
    const state = await space.clock.run(inquireLease(other, 0));
    expect(state.leader).toBeUndefined();
    expect(state.acceptedLver).toBe(1);
    // Host 1 is alive: its decided acquisition stands, and the other host is told so.
    expect(await space.clock.run(acquireLease(other, 0, vm))).toMatchObject({ status: "held", owner: { hostId: 1 } });
    // Host 1 itself retries and completes its own acquisition.
    device.io = original;
    expect(await space.clock.run(acquireLease(crashed, 0, vm))).toEqual({ status: "acquired", lver: 1, already: false });
  });

  test("injected I/O errors and torn writes give errors, never a second owner", async () => {
    for (let seed = 1; seed <= 30; seed++) {
      const random = mulberry32(seed);
      const space = await MemoryLockspace.create({ hosts: 4 });
      const hosts = await space.joinAll(4);
      const owners = new Set<number>();
      for (let round = 0; round < 6; round++) {
        for (const { device } of hosts) {
          const roll = random();
          device.setFault(roll < 0.15 ? { kind: "error", code: "EIO" } : roll < 0.25 ? { kind: "tear" } : roll < 0.5 ? { kind: "delay", ms: Math.floor(random() * 1500) } : undefined);
        }
        const results = await space.clock.run(Promise.allSettled(hosts.map(({ lease }) => acquireLease(lease, 0, vm, { random }))));
        results.forEach((r, i) => {
          if (r.status === "fulfilled" && r.value.status === "acquired") owners.add(hosts[i]!.lease.hostId);
        });
        // Nobody releases and every host stays alive, so whoever acquired first is the only owner ever.
        expect({ seed, round, owners: owners.size <= 1 }).toEqual({ seed, round, owners: true });
        for (const { lease } of hosts) await space.clock.run(lease.renew());
      }
    }
  });
});

/** Small deterministic PRNG for reproducible interleavings. */
function mulberry32(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
