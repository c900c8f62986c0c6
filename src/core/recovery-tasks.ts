/**
 * Recovery tasks, one per HA VM of a failed host, as pure transitions and one pure planning
 * step (the controller stores the tasks in etcd and carries out the plan):
 *
 *   queued ──plan──▶ starting ──started──▶ done
 *     ▲                 │
 *     │ lease held      ├──failed (attempt < 5)──▶ retrying ──backoff over──▶ (planned again)
 *     └─────────────────┤
 *                       └──failed (5th attempt)──▶ failed (alarm)
 *
 * A start refused because the VM's lease is still held by its old host is not a failed
 * attempt: that host may be alive (a partition), and the lease frees itself at host-dead; the
 * task waits until then, looking again every leaseRecheckMaxMs meanwhile — a host that stops its
 * VMs itself (self-fencing, lockd's fencing answered) releases their leases long before it could
 * be declared dead. Times are wall-clock milliseconds (tasks outlive a controller, so their
 * times must mean the same to the next one); the planner takes them from an injected clock.
 *
 * At most `global` tasks are starting at once cluster-wide, and `perHost` onto any one host;
 * higher priorities go first. Starting a VM twice is impossible whatever the tasks say (its
 * lease admits one host), so the tasks need not be exact: they need to be complete.
 */
import { placeVm, type Candidate, type PlacementVm } from "./placement.ts";

export const taskStates = ["queued", "starting", "done", "retrying", "failed"] as const;
export type TaskState = (typeof taskStates)[number];

/** Failed start attempts before a task gives up (the seed: "retried 5 times"). */
export const maxAttempts = 5;
/** Backoff after the n-th failed attempt: 2 s, 4 s, 8 s, 16 s (bounded by maxBackoffMs). */
export const firstBackoffMs = 2_000;
export const maxBackoffMs = 60_000;
/**
 * A task waiting for a held lease is started again at least this often. What it costs is bounded
 * by the recovery limits (at most recovery_concurrency starts, each one acquire attempt, are out
 * at once); what it saves: rows 4 and 6 (the old host follows the recovery request and releases
 * at once) and an isolated host fencing itself took host-dead (~8T + K) instead of seconds
 * (measured by the fault-injection harness: 10 s → ~5 s at its timings).
 */
export const leaseRecheckMaxMs = 2_000;

export interface RecoveryTask {
  readonly vm: string;
  /** The failed host it is recovered from. */
  readonly source: string;
  readonly state: TaskState;
  /** Where it is being (or was) started. */
  readonly target: string | null;
  readonly attempts: number;
  /** Hosts where a start failed, tried last. */
  readonly tried: readonly string[];
  /** Not planned before this time (backoff, or a lease that frees itself then). */
  readonly notBeforeMs: number;
  readonly createdMs: number;
  readonly updatedMs: number;
  /** The latest thing that happened to it, for operators. */
  readonly reason: string;
}

export function newTask(vm: string, source: string, nowMs: number, reason: string): RecoveryTask {
  return { vm, source, state: "queued", target: null, attempts: 0, tried: [], notBeforeMs: nowMs, createdMs: nowMs, updatedMs: nowMs, reason };
}

export function isOpen(task: RecoveryTask): boolean {
  return task.state !== "done" && task.state !== "failed";
}

/** The VM runs on its target: done. */
export function started(task: RecoveryTask, nowMs: number): RecoveryTask {
  expectState(task, "starting");
  return { ...task, state: "done", updatedMs: nowMs, reason: `running on ${task.target}` };
}

/** The start on `task.target` failed: retry after a backoff elsewhere if possible, or give up after maxAttempts. */
export function startFailed(task: RecoveryTask, reason: string, nowMs: number): RecoveryTask {
  expectState(task, "starting");
  const attempts = task.attempts + 1;
  const tried = [...task.tried.filter((host) => host !== task.target), task.target!].slice(-maxAttempts);
  if (attempts >= maxAttempts) {
    return { ...task, state: "failed", attempts, tried, updatedMs: nowMs, reason: `gave up after ${attempts} failed attempts; last on ${task.target}: ${reason}` };
  }
  const backoffMs = Math.min(maxBackoffMs, firstBackoffMs * 2 ** (attempts - 1));
  return { ...task, state: "retrying", attempts, tried, notBeforeMs: nowMs + backoffMs, updatedMs: nowMs, reason: `attempt ${attempts} on ${task.target} failed: ${reason}; next in ${backoffMs} ms` };
}

/**
 * The VM's lease is still held by its old host: wait until it can be free, without counting an
 * attempt — looking again at `recheckAtMs` if sooner (the executor passes now + leaseRecheckMaxMs
 * while the old host's recovery request is open; once it is closed, the host is back and likely
 * runs the VM again, and the task waits for host-dead as it is).
 */
export function leaseHeld(task: RecoveryTask, freeAtMs: number, holder: string, nowMs: number, recheckAtMs = freeAtMs): RecoveryTask {
  expectState(task, "starting");
  const notBeforeMs = Math.max(nowMs, Math.min(freeAtMs, recheckAtMs));
  return { ...task, state: "queued", target: null, notBeforeMs, updatedMs: nowMs, reason: `lease still held by ${holder}; waiting until it is released or can be taken (${new Date(freeAtMs).toISOString()})` };
}

function expectState(task: RecoveryTask, state: TaskState): void {
  if (task.state !== state) throw new Error(`task of VM ${task.vm} is ${task.state}, not ${state}`);
}

export interface PlanInputs {
  readonly tasks: readonly RecoveryTask[];
  /** The VMs of the tasks: resources, group and priority (a task whose VM is unknown is left alone). */
  readonly vms: ReadonlyMap<string, PlacementVm & { readonly priority: number }>;
  readonly candidates: readonly Candidate[];
  readonly limits: { readonly global: number; readonly perHost: number };
  readonly nowMs: number;
}

export interface Plan {
  /** Tasks to move to "starting" on their target (the caller writes them, then orders the start). */
  readonly start: ReadonlyArray<{ readonly task: RecoveryTask; readonly target: string }>;
  /** Tasks that could not be placed now, with why (they stay as they are; the caller may report it). */
  readonly unplaced: ReadonlyArray<{ readonly task: RecoveryTask; readonly reason: string }>;
}

/** Which waiting tasks start now, and where. */
export function planRecovery(inputs: PlanInputs): Plan {
  const { limits, nowMs } = inputs;
  if (!(limits.global >= 1 && limits.perHost >= 1)) throw new RangeError(`recovery limits ${JSON.stringify(limits)}`);
  const inFlight = inputs.tasks.filter((task) => task.state === "starting").length;
  let room = limits.global - inFlight;
  const due = inputs.tasks
    .filter((task) => (task.state === "queued" || task.state === "retrying") && task.notBeforeMs <= nowMs && inputs.vms.has(task.vm))
    .sort((a, b) => inputs.vms.get(b.vm)!.priority - inputs.vms.get(a.vm)!.priority || a.createdMs - b.createdMs || (a.vm < b.vm ? -1 : 1));
  // Each placement takes its share of the host, so that later ones in this step see it.
  const hosts = new Map(inputs.candidates.map((c) => [c.name, { ...c, groups: new Set(c.groups) }]));
  const start: Array<{ task: RecoveryTask; target: string }> = [];
  const unplaced: Array<{ task: RecoveryTask; reason: string }> = [];
  for (const task of due) {
    if (room <= 0) break;
    const vm = inputs.vms.get(task.vm)!;
    // Never back onto the host it is recovered from. Hosts where it failed are tried last:
    // elsewhere first; if nothing else fits, anywhere but where it failed last (then anywhere).
    const candidates = [...hosts.values()].filter((host) => host.name !== task.source);
    let placement = placeVm(vm, candidates, limits.perHost, new Set(task.tried));
    if ("none" in placement && task.tried.length > 0) placement = placeVm(vm, candidates, limits.perHost, new Set(task.tried.slice(-1)));
    if ("none" in placement && task.tried.length > 0) placement = placeVm(vm, candidates, limits.perHost);
    if ("none" in placement) {
      unplaced.push({ task, reason: placement.none });
      continue;
    }
    const host = hosts.get(placement.host)!;
    hosts.set(host.name, {
      ...host,
      usedMemoryKiB: host.usedMemoryKiB + vm.memoryKiB,
      usedVcpus: host.usedVcpus + vm.vcpus,
      starting: host.starting + 1,
      groups: vm.group === "" ? host.groups : new Set([...host.groups, vm.group]),
    });
    start.push({ task, target: host.name });
    room--;
  }
  return { start, unplaced };
}

/** `task` moved to "starting" on `target` (what the caller writes for each planned start). */
export function starting(task: RecoveryTask, target: string, nowMs: number): RecoveryTask {
  if (task.state !== "queued" && task.state !== "retrying") throw new Error(`task of VM ${task.vm} is ${task.state}: cannot start it`);
  return { ...task, state: "starting", target, updatedMs: nowMs, reason: `starting on ${target} (attempt ${task.attempts + 1})` };
}
