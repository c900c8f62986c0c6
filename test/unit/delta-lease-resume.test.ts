/** Fencing protection across lockd restarts: resuming the same incarnation (DESIGN §4.1 rule 5). */
import { describe, expect, test } from "bun:test";
import { DeltaLease, ResumeRefusedError } from "../../src/lease/delta-lease.ts";
import { acquireLease } from "../../src/lease/paxos-lease.ts";
import { MemoryLockspace } from "../helpers/memory-lockspace.ts";

const T = 1_000;
const vm = "0f0e0d0c-0000-4000-8000-00000000000a";

describe("resuming a host lease after a restart", () => {
  test("within renewal-fail: same generation, VM leases still ours, and other hosts never saw it dead", async () => {
    const space = await MemoryLockspace.create();
    const { lease: first } = await space.join(1);
    const { lease: observer } = await space.join(2);
    expect(await space.clock.run(acquireLease(first, 0, vm))).toMatchObject({ status: "acquired", lver: 1 });
    await space.clock.run(first.renew());
    const persisted = first.incarnation;
    // The process dies here; a new one starts 5T later (past warn, before fail).
    await space.clock.advance(5 * T);
    const resumed = await space.clock.run(DeltaLease.resume(space.device("host1-restarted"), space.clock, persisted));
    expect(resumed.generation).toBe(first.generation);
    expect(resumed.phase()).toBe("warn");
    expect((await space.clock.run(resumed.renew())).ok).toBe(true);
    expect(resumed.phase()).toBe("ok");
    expect(await space.clock.run(acquireLease(resumed, 0, vm))).toEqual({ status: "acquired", lver: 1, already: true });
    await space.clock.run(observer.renew());
    expect(observer.view.liveness(1, first.generation).state).toBe("live");
    expect(await space.clock.run(acquireLease(observer, 0, vm))).toMatchObject({ status: "held", owner: { hostId: 1 } });
  });

  test("at or past renewal-fail it is refused: the leases may be someone else's by now", async () => {
    const space = await MemoryLockspace.create();
    const { lease } = await space.join(1);
    const persisted = lease.incarnation;
    await space.clock.advance(8 * T);
    const refused = space.clock.run(DeltaLease.resume(space.device("late"), space.clock, persisted));
    await expect(refused).rejects.toThrow(ResumeRefusedError);
    await expect(refused).rejects.toThrow("not within renewal-fail (8000 ms)");
  });

  test("a sector now holding another host's record is refused, naming it", async () => {
    const space = await MemoryLockspace.create();
    const { lease } = await space.join(1);
    const persisted = lease.incarnation;
    const successor = await space.clock.run(
      DeltaLease.join(space.device("successor"), space.clock, { hostId: 1, hostName: "successor", installId: "5".repeat(32), ioTimeoutMs: T, idAllocation: "unique" }),
    );
    expect(successor.generation).toBe(2);
    // A stale persisted state from before the takeover (clock rewound as if the restart were fast).
    const stale = { ...persisted, lastRenewalStartMs: space.clock.nowMs() - T };
    await expect(space.clock.run(DeltaLease.resume(space.device("stale"), space.clock, stale))).rejects.toThrow('now holds "successor"');
  });

  test("a renewal write that timed out but landed is recognised as ours when resuming", async () => {
    const space = await MemoryLockspace.create();
    const { lease, device } = await space.join(1);
    device.setFault({ kind: "delay", ms: 2 * T }, "write");
    expect((await space.clock.run(lease.renew())).ok).toBe(false);
    const persisted = lease.incarnation;
    expect(persisted.recordTimestampsMs).toHaveLength(2);
    await space.clock.advance(2 * T); // the in-doubt write lands
    const resumed = await space.clock.run(DeltaLease.resume(space.device("again"), space.clock, persisted));
    expect((await space.clock.run(resumed.renew())).ok).toBe(true);
  });
});
