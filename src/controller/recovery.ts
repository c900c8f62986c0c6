/**
 * The leader's recovery executor: turns recovery requests into one task per HA VM of the failed
 * host (P/tasks/UUID), plans them (src/core/recovery-tasks.ts: priority, limits, placement),
 * orders the chosen agents to start them (P/orders/HOST/UUID), and follows the agents' results
 * (P/order-results/HOST/UUID) to done, retry, wait or failure.
 *
 * Every task write is a compare-and-swap on the revision this executor last saw, so two leaders
 * (an old one not yet aware it lost) can never both move a task: the second write fails, and the
 * loser re-reads. Starting a VM twice is impossible anyway (its lease admits one host); the CAS
 * keeps the bookkeeping exact. A new leader resumes from the tasks in etcd: nothing is held in
 * memory that etcd does not have.
 */
import { forEachConcurrently } from "../concurrently.ts";
import { isOpen, leaseHeld, leaseRecheckMaxMs, newTask, planRecovery, startFailed, started, starting, type RecoveryTask } from "../core/recovery-tasks.ts";
import type { Candidate } from "../core/placement.ts";
import type { RuntimeSettings } from "../core/settings.ts";
import { errorMessage } from "../errors.ts";
import { logger } from "../log.ts";
import { appendEvent, eventWrite } from "../store/events.ts";
import { KvError, type AlsoWrites, type KvEntry } from "../store/kv.ts";
import { hostRecord, orderResult, recoveryRequest, taskRecord, vmRecord, vmStateRecord, type EventKind, type EventRecord, type HostRecord, type OrderResult, type RecoveryRequest, type VmOrder, type VmRecord, type VmStateRecord } from "../store/records.ts";
import { decodeEntry } from "../store/typed.ts";
import { PrefixWatcher } from "../store/watcher.ts";
import type { Codec } from "../store/codec.ts";
import { domainResources, type DomainResources } from "../virt/domain-xml.ts";
import type { ControllerMetrics } from "./controller-metrics.ts";
import type { LeaderContext } from "./leader-context.ts";

const log = logger("recovery");

/** An order without a result for this long is a failed attempt (the target's agent is gone or hung). */
export const startTimeoutMs = 5 * 60_000;
/**
 * Tasks due but held back by the limits wait this long for another look. A freed slot normally
 * brings a step by itself (the result that freed it); yet measured on the seed's scenario
 * (scripts/bench/failover, limit 20), waiting for changes alone took ~6 s longer in all than
 * this recheck: some freed slots come with no step of their own (not yet found). 100 ms bounds
 * that wait at 10 steps a second, where an immediate wake-up stepped ~50 times a second.
 */
const blockedRecheckMs = 100;
/** When a lease-held result does not say when the lease can be free: look again after this. */
const leaseRecheckMs = 30_000;
/**
 * Tasks whose writes are in flight at once within one step. Each task's own writes stay in order;
 * different tasks are independent (each write is a compare-and-swap on its own key), and etcd
 * commits concurrent writes together: 1,000 VMs recover in seconds instead of tens of seconds.
 */
const writeConcurrency = 64;

export interface RecoveryEnvironment extends LeaderContext {
  readonly settings: () => RuntimeSettings;
  /** Hosts a VM may be started on now: every plane up, not in maintenance. */
  readonly eligibleHosts: () => ReadonlySet<string>;
  /** Hosts in maintenance: the tasks of their VMs wait (an operator is at work there). */
  readonly heldSources: () => ReadonlySet<string>;
  /** Something changed: the owner should step (it calls step()). */
  readonly changed: () => void;
  /** Where finished recoveries are measured; none: not measured. */
  readonly metrics?: ControllerMetrics;
}

/** A key's decoded value and its revision (for compare-and-swap). */
interface Held<T> {
  readonly record: T;
  readonly modRevision: bigint;
  /** Written by this executor, not yet seen through the watch: `modRevision` is the one before the write. */
  readonly unconfirmed?: true;
}

export class RecoveryExecutor {
  readonly requests = new Map<string, Held<RecoveryRequest>>();
  readonly vms = new Map<string, Held<VmRecord>>();
  readonly hosts = new Map<string, Held<HostRecord>>();
  readonly tasks = new Map<string, Held<RecoveryTask>>();
  readonly results = new Map<string, Held<OrderResult>>();
  /** Per host, per VM, what its hypervisor shows. */
  readonly vmStates = new Map<string, Held<VmStateRecord>>();
  readonly #watchers: PrefixWatcher[] = [];
  /** Per VM the last step could not place, why: the warning is logged when that changes. */
  #unplacedReasons = new Map<string, string>();
  /** VMs whose task waits for a held lease and has said so (one event per wait, not per look). */
  readonly #waitingForLease = new Set<string>();
  /** Bumped by every change to what this executor follows (watches, its own task writes). */
  #inputsVersion = 0;
  /**
   * What the last plan that started nothing was made from. planRecovery is a pure function of
   * these (time only decides which tasks are due): the same inputs again plan nothing again, so
   * the rechecks of blocked tasks cost nothing while nothing changes.
   */
  #idlePlanInputs: string | undefined;
  /** Parsed resources per VM (#resourcesOf): bounded by the VMs registered during this leader's term. */
  readonly #resources = new Map<string, { readonly modRevision: bigint; readonly resources: DomainResources | undefined }>();

  constructor(readonly env: RecoveryEnvironment) {
    const { keys } = env;
    this.#follow(keys.recoveryRequestsPrefix, recoveryRequest, this.requests, (r) => r.host);
    this.#follow(keys.vmsPrefix, vmRecord, this.vms, (r) => r.uuid);
    this.#follow(keys.hostsPrefix, hostRecord, this.hosts, (r) => r.name);
    this.#follow(keys.tasksPrefix, taskRecord, this.tasks, (r) => r.vm);
    this.#follow(`${keys.prefix}/order-results/`, orderResult, this.results, (r) => `${r.host}/${r.vm}`);
    this.#follow(`${keys.prefix}/vm-states/`, vmStateRecord, this.vmStates, (r) => `${r.host}/${r.vm}`);
  }

  async stop(): Promise<void> {
    await Promise.all(this.#watchers.map((w) => w.stop()));
  }

  /**
   * One round: new tasks, results, timeouts, planning. Every write checks leadership first. (A
   * request for failed planes stays until its host is healthy again — the controller core closes
   * it; one for lost storage until its tasks are closed — so one episode makes one set of tasks.)
   */
  async step(): Promise<{ nextDueInMs: number | undefined }> {
    const nowMs = this.env.now().getTime();
    await this.#createTasks(nowMs);
    // The results' follow-up writes (registry, events, clean-up) go on while the freed slots are
    // planned again: a recovered VM's successor is ordered one round trip sooner.
    const { followUps } = await this.#applyResults(nowMs);
    await this.#expireStarts(nowMs);
    await this.#plan(nowMs);
    await this.#closeStorageRequests();
    await followUps;
    await this.#registryCatchUp();
    return { nextDueInMs: this.#nextDueMs(nowMs) };
  }

  /**
   * A request made for lost storage (the host's planes are up: the controller core never closes
   * it) is over when every HA VM of the host has a closed task of this episode.
   */
  async #closeStorageRequests(): Promise<void> {
    for (const [host, request] of [...this.requests]) {
      if (request.record.cause !== "storage") continue;
      const requestedMs = Date.parse(request.record.requestedAt);
      const open = this.#haVmsOf(host).filter((vm) => {
        const task = this.tasks.get(vm.uuid)?.record;
        return task === undefined || task.createdMs < requestedMs || isOpen(task);
      });
      if (open.length === 0) await this.#delete(this.env.keys.recoveryRequest(host));
    }
  }

  /**
   * The registry follows a done task (setVmHost, after the task's move): a leader that stopped
   * in between left it behind, and the next one brings it up to date. A registry change made
   * after the task's (an operator's) is left alone.
   */
  async #registryCatchUp(): Promise<void> {
    const behind = [...this.tasks.values()].filter(({ record: t, unconfirmed }) => {
      const vm = this.vms.get(t.vm)?.record;
      return unconfirmed !== true && t.state === "done" && vm !== undefined && vm.host !== t.target && Date.parse(vm.updatedAt) < t.updatedMs;
    });
    await forEachConcurrently(behind, writeConcurrency, ({ record: t }) => this.#setVmHost(t.vm, t.target!));
  }

  /** When a task needs a look with nothing else happening: a backoff or a lease wait ending, a start timing out. */
  #nextDueMs(nowMs: number): number | undefined {
    let dueMs: number | undefined;
    const held = this.env.heldSources();
    for (const { record: task } of this.tasks.values()) {
      // A task due already that this step could not start (limits, no room) is looked at again
      // after blockedRecheckMs, not at once: the leader would otherwise step without pause for as
      // long as tasks queue behind the limit. A held one waits for maintenance to end (a change,
      // which makes a step).
      const waiting = (task.state === "queued" || task.state === "retrying") && !held.has(task.source);
      const atMs = waiting ? Math.max(task.notBeforeMs, nowMs + blockedRecheckMs) : task.state === "starting" ? task.updatedMs + startTimeoutMs : undefined;
      if (atMs !== undefined) dueMs = dueMs === undefined ? atMs : Math.min(dueMs, atMs);
    }
    return dueMs === undefined ? undefined : Math.max(0, dueMs - nowMs);
  }

  async #createTasks(nowMs: number): Promise<void> {
    const missing: Array<{ host: string; vm: VmRecord; request: RecoveryRequest; modRevision: bigint }> = [];
    for (const [host, request] of this.requests) {
      const requestedMs = Date.parse(request.record.requestedAt);
      for (const vm of this.#haVmsOf(host)) {
        const existing = this.tasks.get(vm.uuid);
        // A task of an earlier episode (closed before this request) makes way for a new one.
        if (existing !== undefined && (isOpen(existing.record) || existing.record.createdMs >= requestedMs)) continue;
        missing.push({ host, vm, request: request.record, modRevision: existing?.modRevision ?? 0n });
      }
    }
    await forEachConcurrently(missing, writeConcurrency, async ({ host, vm, request, modRevision }) => {
      const task = newTask(vm.uuid, host, nowMs, `host ${host} failed: ${request.reason}`);
      if (await this.#writeTask(task, modRevision)) await this.#event("recovery-task-created", host, `${vm.name} (${vm.uuid}) to be recovered from ${host}`);
    });
  }

  /** Moves the tasks the agents' results are about; returns the writes that follow (not awaited yet). */
  async #applyResults(nowMs: number): Promise<{ readonly followUps: Promise<unknown> }> {
    const followUps: Promise<unknown>[] = [];
    await forEachConcurrently([...this.results], writeConcurrency, async ([key, result]) => {
      const { vm, host, outcome, reason } = result.record;
      const task = this.tasks.get(vm);
      // Its task's revision comes with the watch: the result waits for the next step.
      if (task?.unconfirmed === true) return;
      const ours = task !== undefined && task.record.state === "starting" && task.record.target === host && result.record.action === "start";
      const handled = [`${this.env.keys.prefix}/order-results/${key}`, this.env.keys.order(host, vm)];
      let next: RecoveryTask | undefined;
      if (ours) {
        next =
          outcome === "done"
            ? started(task.record, nowMs)
            : outcome === "lease-held"
              ? leaseHeld(task.record, nowMs + (result.record.freeInMs ?? leaseRecheckMs), result.record.holder ?? "another host", nowMs, this.requests.has(task.record.source) ? nowMs + leaseRecheckMaxMs : undefined)
              : startFailed(task.record, reason, nowMs);
        // The result and its order go with the task's move, in one transaction, and so does its
        // event: a leader that stops right after the move cannot leave it unrecorded.
        const event = this.#resultEvent(next, outcome, host);
        if (!(await this.#writeTask(next, task.modRevision, { deletes: handled, puts: event === undefined ? [] : [eventWrite(this.env.keys, event)] }))) return;
      } else {
        // Stale (a task that moved on): done with — before this step plans, which may order the
        // same VM to the same host again.
        if (!this.env.leading()) return;
        await Promise.all(handled.map((k) => this.#delete(k)));
      }
      // The registry need not hold up the next orders. It does not throw (it logs its failure).
      if (next?.state === "done") followUps.push(this.#setVmHost(vm, host));
    });
    // Wrapped: an async function's returned promise would be awaited with it.
    return { followUps: Promise.all(followUps) };
  }

  /** The event a task's move on a result makes, if any. */
  #resultEvent(task: RecoveryTask, outcome: OrderResult["outcome"], host: string): EventRecord | undefined {
    const name = this.#vmName(task.vm);
    const event = (kind: EventKind, about: string, reason: string) => this.#eventRecord(kind, about, reason);
    if (task.state !== "queued") this.#waitingForLease.delete(task.vm);
    if (task.state === "done") return event("vm-recovered", host, `${name} runs on ${host} (from ${task.source})`);
    if (task.state === "failed") return event("recovery-failed", task.source, `${name}: ${task.reason}`);
    // Once per wait: a task waiting for a lease is ordered again every few seconds.
    if (outcome === "lease-held" && !this.#waitingForLease.has(task.vm)) {
      this.#waitingForLease.add(task.vm);
      return event("recovery-waiting", task.source, `${name}: ${task.reason}`);
    }
    return undefined;
  }

  async #expireStarts(nowMs: number): Promise<void> {
    const expired = [...this.tasks.values()].filter(({ record: t }) => t.state === "starting" && nowMs - t.updatedMs >= startTimeoutMs);
    await forEachConcurrently(expired, writeConcurrency, async ({ record: t, modRevision }) => {
      // The unanswered order goes with the task's move, in one transaction.
      await this.#writeTask(startFailed(t, `no answer from the agent of ${t.target} within ${startTimeoutMs} ms`, nowMs), modRevision, { deletes: [this.env.keys.order(t.target!, t.vm)] });
    });
  }

  async #plan(nowMs: number): Promise<void> {
    const settings = this.env.settings();
    // A task this executor wrote and the watch has not brought back cannot be written again yet
    // (its revision is unknown); it counts against the limits if starting, and waits otherwise.
    // Nor is a task of a VM whose host is in maintenance: it waits, queued, until that ends.
    const held = this.env.heldSources();
    const tasks = [...this.tasks.values()].filter((t) => isOpen(t.record) && !(t.unconfirmed === true && t.record.state !== "starting") && !(t.record.state !== "starting" && held.has(t.record.source))).map((t) => t.record);
    if (!tasks.some((t) => t.state === "queued" || t.state === "retrying")) return;
    const eligible = this.env.eligibleHosts();
    const due = tasks.filter((t) => (t.state === "queued" || t.state === "retrying") && t.notBeforeMs <= nowMs).length;
    const inputs = `${this.#inputsVersion} ${due} ${settings.recoveryConcurrency}/${settings.recoveryConcurrencyPerHost} ${[...held].sort().join(",")} ${[...eligible].sort().join(",")}`;
    if (inputs === this.#idlePlanInputs) return;
    const vmInfo = new Map<string, { uuid: string; memoryKiB: number; vcpus: number; group: string; priority: number }>();
    for (const task of tasks) {
      const vm = this.vms.get(task.vm)?.record;
      const resources = this.#resourcesOf(task.vm);
      if (vm === undefined || resources === undefined) continue;
      vmInfo.set(vm.uuid, { uuid: vm.uuid, ...resources, group: vm.group, priority: vm.priority });
    }
    const plan = planRecovery({ tasks, vms: vmInfo, candidates: this.#candidates(tasks, eligible), limits: { global: settings.recoveryConcurrency, perHost: settings.recoveryConcurrencyPerHost }, nowMs });
    this.#idlePlanInputs = plan.start.length === 0 ? inputs : undefined;
    await forEachConcurrently(plan.start, writeConcurrency, async ({ task, target }) => {
      const held = this.tasks.get(task.vm)!;
      // The order goes with the task's move to "starting", in one transaction: no leader can stop
      // in between and leave a starting task without an order (or an order without its task).
      const order = this.#orderWrite(task.vm, target);
      await this.#writeTask(starting(task, target, nowMs), held.modRevision, { puts: [order] });
    });
    // Said once per VM and reason, not at every recheck (ten a second while nothing fits).
    const unplaced = new Map(plan.unplaced.map(({ task, reason }) => [task.vm, reason]));
    for (const [vm, reason] of unplaced) if (this.#unplacedReasons.get(vm) !== reason) log.warn("cannot place a VM now", { vm, reason });
    this.#unplacedReasons = unplaced;
  }

  #orderWrite(vm: string, target: string): { readonly key: string; readonly value: string } {
    const order: VmOrder = { vm, action: "start", issuedAt: this.env.now().toISOString(), by: `controller@${this.env.name}` };
    return { key: this.env.keys.order(target, vm), value: JSON.stringify(order) };
  }

  /** Each registered host with its capacity, what runs on it, and what is being started on it (one pass over each). */
  #candidates(tasks: readonly RecoveryTask[], eligible: ReadonlySet<string>): Candidate[] {
    const usage = new Map<string, { usedMemoryKiB: number; usedVcpus: number; starting: number; groups: Set<string> }>();
    for (const { record: host } of this.hosts.values()) usage.set(host.name, { usedMemoryKiB: 0, usedVcpus: 0, starting: 0, groups: new Set() });
    const add = (host: string | null, uuid: string, starting: boolean) => {
      const used = host === null ? undefined : usage.get(host);
      if (used === undefined) return;
      const resources = this.#resourcesOf(uuid);
      if (resources !== undefined) {
        used.usedMemoryKiB += resources.memoryKiB;
        used.usedVcpus += resources.vcpus;
      }
      const group = this.vms.get(uuid)?.record.group;
      if (group !== undefined && group !== "") used.groups.add(group);
      if (starting) used.starting++;
    };
    for (const { record } of this.vmStates.values()) if (record.state === "running" || record.state === "paused") add(record.host, record.vm, false);
    for (const task of tasks) if (task.state === "starting") add(task.target, task.vm, true);
    return [...this.hosts.values()].map(({ record: host }) => ({ name: host.name, eligible: eligible.has(host.name), cpus: host.capacity.cpus, memoryKiB: host.capacity.memoryKiB, ...usage.get(host.name)! }));
  }

  /** A VM's memory and vCPUs from its registry XML, parsed once per version of the record. */
  #resourcesOf(uuid: string): DomainResources | undefined {
    const held = this.vms.get(uuid);
    if (held === undefined) {
      this.#resources.delete(uuid);
      return undefined;
    }
    const cached = this.#resources.get(uuid);
    if (cached?.modRevision === held.modRevision) return cached.resources;
    const resources = domainResources(held.record.xml);
    this.#resources.set(uuid, { modRevision: held.modRevision, resources });
    return resources;
  }

  #haVmsOf(host: string): VmRecord[] {
    return [...this.vms.values()].map((v) => v.record).filter((vm) => vm.ha && vm.host === host);
  }

  #vmName(uuid: string): string {
    return this.vms.get(uuid)?.record.name ?? uuid;
  }

  /** The VM runs on `host` now: its registry record says so (compare-and-swap, bounded retries). */
  async #setVmHost(uuid: string, host: string): Promise<void> {
    for (let attempt = 0; attempt < 5 && this.env.leading(); attempt++) {
      const held = this.vms.get(uuid);
      if (held === undefined || held.record.host === host) return;
      const next: VmRecord = { ...held.record, host, updatedAt: this.env.now().toISOString() };
      if (await this.#cas(this.env.keys.vm(uuid), JSON.stringify(next), held.modRevision)) return;
      const fresh = await this.env.kv.get(this.env.keys.vm(uuid)).catch(() => undefined);
      if (fresh === undefined) return;
      const decoded = decodeEntry(fresh, vmRecord);
      if ("bad" in decoded) return;
      this.vms.set(uuid, { record: decoded.record, modRevision: decoded.modRevision });
      this.#inputsVersion++;
    }
  }

  async #writeTask(task: RecoveryTask, modRevision: bigint, also?: AlsoWrites): Promise<boolean> {
    // Read before the write: the watch may bring the written task back before the write returns.
    const previous = this.tasks.get(task.vm)?.record;
    const ends = !isOpen(task) && previous !== undefined && isOpen(previous);
    const written = await this.#cas(this.env.keys.task(task.vm), JSON.stringify(task), modRevision, also);
    if (!written) {
      log.warn("task changed under us (another leader?); re-reading", { vm: task.vm, state: task.state });
      return false;
    }
    if (ends) this.env.metrics?.recoveryEnded(task.state === "done" ? "done" : "failed", (task.updatedMs - task.createdMs) / 1000);
    // Seen at once by the next step, so that it counts this start against the limits even if the
    // watch of the tasks is behind the others. The old revision stays: a write based on this copy
    // fails until the watch brings the real one (which it does: the write happened). Not if the
    // watch has brought it already (the revision moved on).
    const known = this.tasks.get(task.vm);
    if ((known?.modRevision ?? 0n) === modRevision) {
      this.tasks.set(task.vm, { record: task, modRevision, unconfirmed: true });
      this.#inputsVersion++;
    }
    return true;
  }

  async #cas(key: string, value: string, modRevision: bigint, also?: AlsoWrites): Promise<boolean> {
    if (!this.env.leading()) return false;
    try {
      return await this.env.kv.putIfModRevision(key, value, modRevision, also);
    } catch (error) {
      if (!(error instanceof KvError)) throw error;
      log.error("recovery write failed; retried at the next step", { key, error: error.message });
      return false;
    }
  }

  async #delete(key: string): Promise<void> {
    if (!this.env.leading()) return;
    await this.env.kv.delete(key).catch((error: unknown) => log.error("recovery delete failed", { key, error: errorMessage(error) }));
  }

  async #event(kind: EventKind, host: string | null, reason: string): Promise<void> {
    if (!this.env.leading()) return;
    await appendEvent(this.env.kv, this.env.keys, this.#eventRecord(kind, host, reason)).catch((error: unknown) => log.warn("could not record an event", { kind, error: errorMessage(error) }));
  }

  #eventRecord(kind: EventKind, host: string | null, reason: string): EventRecord {
    return { time: this.env.now().toISOString(), kind, host, reason, by: `controller@${this.env.name}` };
  }

  /** Mirrors a prefix into `into`, keyed by `keyOf` of each record; bad values are logged and skipped. */
  #follow<T>(prefix: string, codec: Codec<T>, into: Map<string, Held<T>>, keyOf: (record: T) => string): void {
    const byKey = new Map<string, string>();
    const apply = (key: string, entry: KvEntry | undefined) => {
      this.#inputsVersion++;
      const previous = byKey.get(key);
      if (previous !== undefined) into.delete(previous);
      byKey.delete(key);
      if (entry === undefined) return;
      const decoded = decodeEntry(entry, codec);
      if ("bad" in decoded) {
        log.error("bad value ignored", { key, reason: decoded.bad.message });
        return;
      }
      const id = keyOf(decoded.record);
      byKey.set(key, id);
      into.set(id, { record: decoded.record, modRevision: decoded.modRevision });
    };
    this.#watchers.push(
      new PrefixWatcher(
        this.env.kv,
        prefix,
        {
          onSnapshot: (entries) => {
            for (const key of [...byKey.keys()]) apply(key, undefined);
            for (const entry of entries) apply(entry.key, entry);
            this.env.changed();
          },
          onRevision: (_revision, changes) => {
            for (const change of changes) apply(change.key, change.type === "put" ? { key: change.key, value: change.value, modRevision: change.modRevision } : undefined);
            this.env.changed();
          },
          onFailed: (error) => log.error("stopped following etcd", { prefix, error: errorMessage(error) }),
        },
        this.env.clock,
      ),
    );
  }
}
