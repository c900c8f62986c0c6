import { describe, expect, test } from "bun:test";
import { placeVm, type Candidate } from "../../src/core/placement.ts";
import { leaseHeld, leaseRecheckMaxMs, maxAttempts, newTask, planRecovery, startFailed, started, starting, type RecoveryTask } from "../../src/core/recovery-tasks.ts";

const GiB = 1024 * 1024;

function host(name: string, options: Partial<Candidate> = {}): Candidate {
  return { name, eligible: true, cpus: 8, memoryKiB: 32 * GiB, usedMemoryKiB: 0, usedVcpus: 0, groups: new Set(), starting: 0, ...options };
}

const vm = (uuid: string, options: { memoryKiB?: number; vcpus?: number; group?: string; priority?: number } = {}) => ({ uuid, memoryKiB: options.memoryKiB ?? 2 * GiB, vcpus: options.vcpus ?? 2, group: options.group ?? "", priority: options.priority ?? 0 });

describe("placement", () => {
  test("the host with the most free memory that qualifies; every refusal counted in the reason", () => {
    const hosts = [
      host("a", { usedMemoryKiB: 20 * GiB }),
      host("b", { usedMemoryKiB: 4 * GiB }),
      host("c", { eligible: false }),
      host("d", { starting: 2 }),
      host("e", { groups: new Set(["db"]) }),
    ];
    expect(placeVm(vm("v1"), hosts, 2)).toEqual({ host: "e" });
    expect(placeVm(vm("v1", { group: "db" }), hosts, 2)).toEqual({ host: "b" });
    expect(placeVm(vm("v1", { memoryKiB: 30 * GiB, group: "db" }), hosts, 2)).toEqual({
      none: "no host fits: 2 not enough free memory, 1 a plane down or in maintenance, 1 at its limit of 2 recoveries in progress, 1 already runs a VM of group \"db\"",
    });
    expect(placeVm(vm("v1", { vcpus: 33 }), [host("a")], 2)).toEqual({ none: "no host fits: 1 not enough free CPUs" });
    expect(placeVm(vm("v1"), [], 2)).toEqual({ none: "no hosts" });
  });
});

describe("recovery tasks", () => {
  const t0 = 1_000_000;

  test("planning: higher priority first, at most the global limit, per-host limit and capacity respected, placements add up", () => {
    const vms = new Map([vm("low", { priority: 1 }), vm("high", { priority: 9 }), vm("mid", { priority: 5 }), vm("big", { priority: 7, memoryKiB: 30 * GiB })].map((v) => [v.uuid, v]));
    const tasks = [...vms.keys()].map((id, i) => newTask(id, "dead", t0 + i, "host dead"));
    const plan = planRecovery({ tasks, vms, candidates: [host("a"), host("b", { usedMemoryKiB: 16 * GiB })], limits: { global: 3, perHost: 2 }, nowMs: t0 + 10 });
    // high takes 2 GiB of a (32 free); big (30 GiB) then just fits on a; mid goes to b; low waits (global limit 3).
    expect(plan.start.map((s) => `${s.task.vm}→${s.target}`)).toEqual(["high→a", "big→a", "mid→b"]);
  });

  test("planning: tasks already starting count against the global limit; waiting ones are not due yet", () => {
    const vms = new Map([vm("x"), vm("y"), vm("z")].map((v) => [v.uuid, v]));
    const inFlight = starting(newTask("x", "dead", t0, "r"), "a", t0);
    const waiting = { ...newTask("y", "dead", t0, "r"), notBeforeMs: t0 + 5_000 };
    const ready = newTask("z", "dead", t0, "r");
    const plan = planRecovery({ tasks: [inFlight, waiting, ready], vms, candidates: [host("a"), host("b")], limits: { global: 2, perHost: 2 }, nowMs: t0 + 1 });
    expect(plan.start.map((s) => s.task.vm)).toEqual(["z"]);
    const later = planRecovery({ tasks: [inFlight, waiting, ready], vms, candidates: [host("a"), host("b")], limits: { global: 1, perHost: 2 }, nowMs: t0 + 10_000 });
    expect(later.start).toEqual([]);
  });

  test("a failed start retries after a growing backoff, elsewhere first; the fifth failure gives up", () => {
    let task: RecoveryTask = newTask("v", "dead", t0, "host dead");
    const vms = new Map([vm("v")].map((v) => [v.uuid, v]));
    const backoffs: number[] = [];
    let nowMs = t0;
    for (let attempt = 1; attempt <= maxAttempts; attempt++) {
      const plan = planRecovery({ tasks: [task], vms, candidates: [host("a"), host("b", { usedMemoryKiB: 1 * GiB })], limits: { global: 10, perHost: 2 }, nowMs });
      expect(plan.start).toHaveLength(1);
      // Alternates: a (more free memory), then b (a failed), then a (both failed: not the last one), ...
      expect(plan.start[0]!.target).toBe(attempt % 2 === 1 ? "a" : "b");
      task = startFailed(starting(task, plan.start[0]!.target, nowMs), "libvirt refused", nowMs);
      if (task.state === "retrying") {
        backoffs.push(task.notBeforeMs - nowMs);
        expect(planRecovery({ tasks: [task], vms, candidates: [host("a")], limits: { global: 10, perHost: 2 }, nowMs: task.notBeforeMs - 1 }).start).toEqual([]);
        nowMs = task.notBeforeMs;
      }
    }
    expect(backoffs).toEqual([2_000, 4_000, 8_000, 16_000]);
    expect(task).toMatchObject({ state: "failed", attempts: 5 });
    expect(task.reason).toStartWith("gave up after 5 failed attempts; last on a: libvirt refused");
  });

  test("a lease still held by the old host is a wait, not a failed attempt, looked at again every 2 s while its request is open", () => {
    const task = starting(newTask("v", "dead", t0, "host dead"), "a", t0);
    const waiting = leaseHeld(task, t0 + 140_000, "dead (host id 3)", t0 + 1, t0 + 1 + leaseRecheckMaxMs);
    expect(waiting).toMatchObject({ state: "queued", attempts: 0, target: null, notBeforeMs: t0 + 1 + leaseRecheckMaxMs });
    expect(leaseHeld(task, t0 + 500, "dead (host id 3)", t0 + 1, t0 + 1 + leaseRecheckMaxMs)).toMatchObject({ notBeforeMs: t0 + 500 });
    expect(leaseHeld(task, t0 + 140_000, "dead (host id 3)", t0 + 1)).toMatchObject({ notBeforeMs: t0 + 140_000 });
    expect(started(starting(waiting, "a", t0 + 140_000), t0 + 141_000)).toMatchObject({ state: "done", reason: "running on a" });
  });

  test("never placed back onto the host it is recovered from, even when that one looks fine", () => {
    const vms = new Map([vm("v")].map((v) => [v.uuid, v]));
    const plan = planRecovery({ tasks: [newTask("v", "a", t0, "storage lost")], vms, candidates: [host("a"), host("b", { usedMemoryKiB: 30 * GiB })], limits: { global: 5, perHost: 5 }, nowMs: t0 });
    expect(plan.start.map((s) => s.target)).toEqual(["b"]);
    const alone = planRecovery({ tasks: [newTask("v", "a", t0, "storage lost")], vms, candidates: [host("a")], limits: { global: 5, perHost: 5 }, nowMs: t0 });
    expect(alone).toMatchObject({ start: [], unplaced: [{ reason: "no hosts" }] });
  });

  test("transitions from the wrong state are bugs", () => {
    expect(() => started(newTask("v", "dead", t0, "r"), t0)).toThrow("task of VM v is queued, not starting");
  });
});
