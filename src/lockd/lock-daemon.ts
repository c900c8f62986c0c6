/**
 * The lease daemon's core: joins (or resumes) the host lease, renews it on time, persists what a
 * restarted lockd needs to carry on, serves lease requests one slot at a time, and — when the
 * host lease cannot be renewed — asks its subscriber (the agent) whether to fence, and fences:
 * stops the VMs under its leases through the hypervisor. Sockets, signals and the process live in
 * the CLI command; time, storage and the hypervisor come in through interfaces.
 *
 * Renewals and VM lease operations use separate devices (separate I/O workers): a slow ballot
 * never delays a renewal.
 *
 * Ask & wait (the timeline and the safety argument are in src/lockd/README.md): with validUntil
 * the host lease's fail point (last renewal start + 8T, or the end of a no-fence grace):
 *   validUntil − 4T  ask the subscribers: fence or no-fence? (at renewal-warn for a plain failure)
 *   answer fence     stop the VMs at once and release their leases
 *   answer no-fence  grace: valid until the question's time + 8T (DeltaLease.grantGrace); the
 *                    next question comes 4T after this one, so a grace lasts only while answered
 *   validUntil − T   no answer (or no renewal): stop the VMs, so they are dead by validUntil
 * When a renewal succeeds again after any of this, every held lease is re-validated on disk and
 * the VMs whose lease another host took meanwhile are stopped at once.
 */
import type { Clock } from "../core/clock.ts";
import { DeltaLease, HostIdInUseError, ResumeRefusedError, type JoinOptions } from "../lease/delta-lease.ts";
import { acquireLease, inquireLease, NotOwnerError, releaseLease, SlotInUseError } from "../lease/paxos-lease.ts";
import { CorruptionError } from "../lease/records.ts";
import { IoError, type SectorDevice } from "../lease/sector-device.ts";
import { logger } from "../log.ts";
import type { Hypervisor } from "../virt/hypervisor.ts";
import type { VmProcessKiller } from "../virt/qemu-processes.ts";
import type { LockdMetrics } from "./lockd-metrics.ts";
import type { Answer, LockdEvent, Reply, Request } from "./protocol.ts";
import { StateFileError, stateFormatVersion, type HeldLease, type LockdState, type StateStore } from "./state-file.ts";
import { stopVms, type FencingTools } from "./vm-fencing.ts";

const log = logger("lockd");

export interface LockdOptions {
  readonly leaseFile: string;
  readonly hostId: number;
  readonly hostName: string;
  readonly ioTimeoutMs: number;
  readonly idAllocation: JoinOptions["idAllocation"];
}

export interface LockdEnvironment {
  /** CLOCK_BOOTTIME in production: persisted renewal times stay meaningful across a restart. */
  readonly clock: Clock;
  readonly openDevice: (path: string) => Promise<SectorDevice>;
  readonly bootId: string;
  readonly pid: number;
  readonly lockdAlive: (pid: number) => Promise<boolean>;
  readonly installId: string;
  /** Where the state for a restarted lockd goes (the state dir in production, memory in tests). */
  readonly store: StateStore;
  /**
   * Where the VMs under the leases run: fencing destroys them there. Its calls must not block
   * this thread (WorkerHypervisor in production) and must each be bounded well within T.
   */
  readonly hypervisor: Hypervisor;
  /** When the hypervisor cannot stop a VM: kills its process (qemuProcessKiller in production). */
  readonly killer?: VmProcessKiller;
  /** Where renewals, questions, answers and fencings are counted, and this daemon's state read at each scrape; none: not measured. */
  readonly metrics?: LockdMetrics;
}

export interface FenceRecord {
  readonly atMs: number;
  readonly reason: string;
  readonly vms: readonly string[];
  /** VMs the hypervisor still showed running after every attempt (their leases stay recorded). */
  readonly failed: readonly string[];
}

/** A fencing question to the subscribers, for one validity end of the host lease. */
interface Question {
  readonly id: number;
  readonly askedAtMs: number;
  /** The fail point it is about; a renewal or a grant moves it, which makes the question moot. */
  readonly validUntilMs: number;
  readonly fenceAtMs: number;
  answer: Answer | undefined;
}

/** Where events go: one function per subscribed connection. */
export type Subscriber = (event: LockdEvent) => void;

/** Lease requests waiting or running at once; more are refused rather than queued without bound. */
const maxInFlightRequests = 256;
/** Subscribed connections at once (the agent, an operator watching); more are refused. */
const maxSubscribers = 8;

export class LockDaemon {
  readonly #leases = new Map<number, HeldLease>();
  /** Slots that may be ours on disk with no VM under them — an acquire that failed on I/O, a fenced lease — until checked (#retract). */
  readonly #inDoubt = new Map<number, string>();
  /** Slots whose check (#retract) is queued or running. */
  readonly #retracting = new Set<number>();
  /** Per slot, the tail of its request queue: requests for one slot run one after another. */
  readonly #slotQueues = new Map<number, Promise<unknown>>();
  #inFlight = 0;
  #persisting: Promise<void> = Promise.resolve();
  #stopped = false;
  readonly #sleepers = new Set<() => void>();
  readonly #renewals: Promise<void>;
  readonly #supervision: Promise<void>;
  #fenced: FenceRecord | undefined;
  #question: Question | undefined;
  #lastQuestionId = 0;
  readonly #subscribers = new Set<Subscriber>();
  /** Wakes the supervisor early (an answer came, a renewal succeeded). */
  #nudgeSupervisor: (() => void) | undefined;
  /** Set when the held leases must be checked on disk at the next chance (after a resume, after storage came back). */
  #revalidationDue: string | undefined;
  /** How this incarnation began: "joined" or "resumed". */
  readonly startedBy: "joined" | "resumed";
  /**
   * Resolves (with the reason) once the host lease is lost for good and the VMs under it are
   * fenced: this incarnation can do nothing more. The process exits then, and its restart joins
   * the lockspace again under a new generation (a lost lease never comes back by renewing).
   */
  readonly lost: Promise<string>;
  readonly #lostWith = Promise.withResolvers<string>();
  /** When the renewal loop last moved (an attempt ended, a lease re-validated), on env.clock. */
  #renewalProgressMs: number;
  /** The renewal loop ended because the host lease is lost for good (not stuck: done). */
  #renewalsEnded = false;

  private constructor(
    readonly options: LockdOptions,
    readonly env: LockdEnvironment,
    readonly lease: DeltaLease,
    readonly leaseDevice: SectorDevice,
    held: readonly HeldLease[],
    startedBy: "joined" | "resumed",
  ) {
    for (const entry of held) this.#leases.set(entry.slot, entry);
    this.startedBy = startedBy;
    if (startedBy === "resumed" && held.length > 0) this.#revalidationDue = "resumed after a restart";
    this.lost = this.#lostWith.promise;
    this.#renewalProgressMs = env.clock.nowMs();
    this.#renewals = this.#renewLoop();
    this.#supervision = this.#supervise();
    env.metrics?.collectFrom(this);
  }

  static async start(options: LockdOptions, env: LockdEnvironment): Promise<LockDaemon> {
    const renewalDevice = await env.openDevice(options.leaseFile);
    let leaseDevice: SectorDevice | undefined;
    try {
      leaseDevice = await env.openDevice(options.leaseFile);
      const previous = await readPrevious(options, env);
      let lease: DeltaLease | undefined;
      let held: readonly HeldLease[] = [];
      let startedBy: "joined" | "resumed" = "joined";
      /** The previous incarnation's leases when it cannot be resumed: its VMs run unprotected. */
      let orphaned: readonly HeldLease[] = [];
      if (previous !== undefined && !previous.resumable) orphaned = previous.state.leases;
      if (previous?.resumable === true) {
        try {
          lease = await DeltaLease.resume(renewalDevice, env.clock, previous.state.incarnation);
          if (lease.lockspace.header.lockspaceId !== previous.state.lockspaceId) throw new ResumeRefusedError("the lease file holds another lockspace now");
          held = previous.state.leases;
          startedBy = "resumed";
          log.info("resumed the host lease of the previous lockd: its VM leases are still ours", { host_id: lease.hostId, generation: lease.generation, leases: held.length });
        } catch (error) {
          if (!(error instanceof ResumeRefusedError)) throw error;
          lease = undefined;
          orphaned = previous.state.leases;
          log.error("could not resume the previous host lease; its VM leases are lost", { reason: error.message, lost_leases: orphaned.map((l) => l.resource) });
        }
      }
      lease ??= await DeltaLease.join(renewalDevice, env.clock, {
        hostId: options.hostId,
        hostName: options.hostName,
        installId: env.installId,
        ioTimeoutMs: options.ioTimeoutMs,
        idAllocation: options.idAllocation,
      });
      // Those leases may be another host's by now (or soon): what runs under them must not go on.
      // Stopped before this lockd serves anything, so no new lease is granted while they run.
      if (orphaned.length > 0) {
        const outcome = await stopVms(fencingTools(env, options.ioTimeoutMs), orphaned.map((l) => l.resource));
        log.error("stopped the VMs of the previous incarnation's lost leases", { stopped: outcome.stopped, failed: outcome.failed });
      }
      const daemon = new LockDaemon(options, env, lease, leaseDevice, held, startedBy);
      if (daemon.startedBy === "joined") log.info("joined the lockspace", { host_id: lease.hostId, generation: lease.generation, lockspace: lease.lockspace.header.name });
      await daemon.#persist();
      return daemon;
    } catch (error) {
      await Promise.all([renewalDevice.close(), leaseDevice?.close()]);
      throw error;
    }
  }

  /**
   * Answers one request; never throws (an unexpected error is an "internal" reply, and logged).
   * `subscriber` receives the events of a "subscribe" request on this connection.
   */
  async handle(request: Request, subscriber?: Subscriber): Promise<Reply> {
    if (request.op === "status") return { id: request.id, ok: true, status: this.status() };
    if (request.op === "subscribe") return this.#subscribe(request.id, subscriber);
    if (request.op === "answer") return this.#answer(request.id, request.question, request.answer);
    if (this.#inFlight >= maxInFlightRequests) return { id: request.id, ok: false, error: "io", message: `busy: ${maxInFlightRequests} requests already in progress` };
    this.#inFlight++;
    try {
      return await this.#inSlot(request.slot, () => this.#serve(request));
    } finally {
      this.#inFlight--;
    }
  }

  /**
   * A slot that may be ours on disk with no VM under it is checked, and released if ours, once
   * its queue gets to it: after an acquire that failed on I/O (its last write may still land: a
   * stuck write completes later, stranding the lease for as long as this host lives — DESIGN
   * §4.1 rule 5), and after each good renewal for the slots still in doubt (fenced leases, checks
   * that failed). At most one check per slot waits in its queue.
   */
  #queueRetraction(slot: number): void {
    if (this.#retracting.has(slot)) return;
    this.#retracting.add(slot);
    void this.#inSlot(slot, () => this.#retract(slot)).finally(() => this.#retracting.delete(slot));
  }

  async #retract(slot: number): Promise<void> {
    const vm = this.#inDoubt.get(slot);
    // Acquired since (or given up): nothing in doubt any more.
    if (vm === undefined || this.#leases.has(slot)) return void this.#inDoubt.delete(slot);
    try {
      // Without a version: the slot is read first, and released only if this incarnation holds it.
      const outcome = await releaseLease(this.lease, slot, vm, { device: this.leaseDevice });
      // Another host's ballot meanwhile (it finds our unfinished one, and must leave it to us): look again.
      if (outcome === "contended") return log.warn("a lease in doubt is still undecided; again after the next renewal", { vm, slot });
      this.#inDoubt.delete(slot);
      if (outcome === "released") log.info("released a lease in doubt that was still ours (no VM runs under it)", { vm, slot });
    } catch (error) {
      log.warn("could not yet check a lease in doubt; again after the next renewal", { vm, slot, error });
    }
  }

  /**
   * Runs `work` on `slot` once everything queued on that slot before it is done — requests and
   * checks of leases in doubt: an acquire never reads a slot while a write of ours to it is still
   * on its way to the disk.
   */
  async #inSlot<T>(slot: number, work: () => Promise<T>): Promise<T> {
    const previous = this.#slotQueues.get(slot) ?? Promise.resolve();
    const run = previous.then(work);
    const tail = run.catch(() => {});
    this.#slotQueues.set(slot, tail);
    try {
      return await run;
    } finally {
      if (this.#slotQueues.get(slot) === tail) this.#slotQueues.delete(slot);
    }
  }

  /**
   * JSON shape of `fitha lease status --json` (stable):
   * { "host_id", "host_name", "generation", "started_by": "joined"|"resumed", "phase": "ok"|"warn"|"grace"|"failed",
   *   "lost_reason": string|null, "last_renewal_age_ms", "valid_for_ms" (until the fail point, negative past it),
   *   "grace_for_ms": number|null (what is left of a no-fence grace),
   *   "question": { "id", "age_ms", "answer_within_ms", "answer": "fence"|"no-fence"|null } | null,
   *   "subscribers", "fenced": { "age_ms", "reason", "vms", "failed" } | null,
   *   "timeline": { "io_timeout_ms", "renewal_interval_ms", "renewal_warn_ms", "renewal_fail_ms", "host_dead_ms" },
   *   "leases": [ { "slot", "vm", "lver" } ], "hosts": [ { "host_id", "host_name", "generation", "state", "silent_ms" } ] }
   */
  status(): Record<string, unknown> {
    const t = this.lease.timeline;
    const nowMs = this.env.clock.nowMs();
    const question = this.#question;
    const graceUntilMs = this.lease.graceUntilMs;
    return {
      host_id: this.lease.hostId,
      host_name: this.options.hostName,
      generation: this.lease.generation,
      started_by: this.startedBy,
      phase: this.lease.phase(),
      lost_reason: this.lease.lostReason ?? null,
      fenced: this.#fenced === undefined ? null : { age_ms: Math.round(nowMs - this.#fenced.atMs), reason: this.#fenced.reason, vms: this.#fenced.vms, failed: this.#fenced.failed },
      last_renewal_age_ms: Math.round(nowMs - this.lease.lastRenewalStartMs),
      valid_for_ms: Math.round(this.lease.validUntilMs() - nowMs),
      grace_for_ms: graceUntilMs === undefined || graceUntilMs <= nowMs ? null : Math.round(graceUntilMs - nowMs),
      question: question === undefined ? null : { id: question.id, age_ms: Math.round(nowMs - question.askedAtMs), answer_within_ms: Math.round(question.fenceAtMs - nowMs), answer: question.answer ?? null },
      subscribers: this.#subscribers.size,
      timeline: { io_timeout_ms: t.ioTimeoutMs, renewal_interval_ms: t.renewalIntervalMs, renewal_warn_ms: t.renewalWarnMs, renewal_fail_ms: t.renewalFailMs, host_dead_ms: t.hostDeadMs },
      leases: [...this.#leases.values()].sort((a, b) => a.slot - b.slot).map((l) => ({ slot: l.slot, vm: l.resource, lver: l.lver })),
      hosts: this.lease.view.summary().map((h) => ({ host_id: h.hostId, host_name: h.hostName ?? null, generation: h.generation ?? null, state: h.state, silent_ms: h.silentMs === undefined ? null : Math.round(h.silentMs) })),
    };
  }

  /** VM leases held now. */
  get heldLeaseCount(): number {
    return this.#leases.size;
  }

  /**
   * Why the renewal loop looks stuck, or undefined while it moves: what systemd's watchdog
   * keep-alives stand for (src/cli/systemd-notify.ts). The loop moves at least once per renewal
   * interval (2T) plus one attempt (bounded by T); it counts as stuck past 4T. A restart then
   * resumes this incarnation (same boot, within validUntil) before lockd would fence at
   * last renewal + 7T, so a wedged loop is replaced without stopping any VM. Failing storage is
   * not stuck: the loop goes on retrying (each attempt bounded), and a restart would not help —
   * it would only lose an open fencing question. Once the host lease is lost for good the loop
   * has ended by design and the process is on its way out (fencing, then exit 1).
   */
  renewalStall(nowMs = this.env.clock.nowMs()): string | undefined {
    if (this.#renewalsEnded || this.#stopped) return undefined;
    const t = this.lease.timeline;
    const silentMs = nowMs - this.#renewalProgressMs;
    if (silentMs <= t.renewalIntervalMs + 2 * t.ioTimeoutMs) return undefined;
    return `the renewal loop has not moved for ${Math.round(silentMs)} ms (each attempt is bounded by ${t.ioTimeoutMs} ms, the interval is ${t.renewalIntervalMs} ms)`;
  }

  get subscriberCount(): number {
    return this.#subscribers.size;
  }

  /** Stops renewing and closes the devices. VM leases stay held: a restart within the window resumes them. */
  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    for (const wake of this.#sleepers) wake();
    await Promise.all([this.#renewals, this.#supervision]);
    await Promise.all(this.#slotQueues.values());
    await Promise.all([this.lease.device.close(), this.leaseDevice.close()]);
  }

  async #serve(request: Extract<Request, { slot: number }>): Promise<Reply> {
    const { id } = request;
    try {
      switch (request.op) {
        case "acquire": {
          let result;
          try {
            result = await acquireLease(this.lease, request.slot, request.vm, { device: this.leaseDevice });
          } catch (error) {
            if (error instanceof IoError) {
              this.#inDoubt.set(request.slot, request.vm);
              this.#queueRetraction(request.slot);
            }
            throw error;
          }
          this.#inDoubt.delete(request.slot);
          if (result.status === "held") {
            const owner = { host_id: result.owner.hostId, generation: result.owner.generation, host_name: result.ownerName ?? null, dead_in_ms: result.deadInMs === undefined ? null : Math.round(result.deadInMs) };
            const name = result.ownerName === undefined ? `host id ${result.owner.hostId}` : `"${result.ownerName}" (host id ${result.owner.hostId})`;
            return { id, ok: false, error: "held", message: `lease of ${request.vm} is held by ${name}, generation ${result.owner.generation}`, owner };
          }
          this.#leases.set(request.slot, { slot: request.slot, resource: request.vm, lver: result.lver });
          // Persisted before the caller starts the VM: a restarted lockd must know it holds this.
          await this.#persist();
          log.info("acquired VM lease", { vm: request.vm, slot: request.slot, lver: result.lver, already: result.already });
          return { id, ok: true, lver: result.lver, already: result.already };
        }
        case "release": {
          const known = this.#leases.get(request.slot);
          const lver = known !== undefined && known.resource === request.vm ? known.lver : undefined;
          const outcome = await releaseLease(this.lease, request.slot, request.vm, { device: this.leaseDevice, ...(lver === undefined ? {} : { lver }) });
          this.#leases.delete(request.slot);
          await this.#persist();
          log.info("released VM lease", { vm: request.vm, slot: request.slot, outcome });
          return { id, ok: true, released: outcome === "released" };
        }
        case "inquire": {
          const state = await inquireLease(this.lease, request.slot, { device: this.leaseDevice });
          const leader = state.leader;
          return {
            id,
            ok: true,
            lease: {
              slot: state.slot,
              vm: leader?.resource ?? null,
              state: leader?.state ?? "free",
              owner_host_id: leader?.ownerHostId ?? null,
              owner_generation: leader?.ownerGeneration ?? null,
              lver: leader?.lver ?? 0,
              unfinished_lver: state.acceptedLver > (leader?.lver ?? 0) ? state.acceptedLver : null,
            },
          };
        }
      }
    } catch (error) {
      // Corruption is not the caller's problem alone: the record is damaged for every host, and
      // an operator must look at the storage (the agent turns this into a lease-corrupt event).
      if (error instanceof CorruptionError) this.#publish({ event: "corrupt", op: request.op, message: error.message });
      return errorReply(id, error);
    }
  }

  async #renewLoop(): Promise<void> {
    const t = this.lease.timeline;
    while (!this.#stopped) {
      const dueMs = this.lease.lastRenewalStartMs + t.renewalIntervalMs;
      await this.#sleep(dueMs - this.env.clock.nowMs());
      if (this.#stopped) return;
      const outcome = await this.lease.renew();
      this.#renewalProgressMs = this.env.clock.nowMs();
      if (outcome.ok) {
        this.env.metrics?.renewed(outcome.latencyMs);
        log.debug("renewed the host lease", { latency_ms: Math.round(outcome.latencyMs * 10) / 10 });
        if (this.#revalidationDue !== undefined) log.info("host lease renewed again", { after: this.#revalidationDue });
        await this.#persist().catch((error: unknown) => log.error("could not persist lockd state", { error }));
        this.#nudgeSupervisor?.();
        if (this.#revalidationDue !== undefined) await this.#revalidate();
        for (const slot of this.#inDoubt.keys()) this.#queueRetraction(slot);
        continue;
      }
      this.env.metrics?.renewalFailed();
      const phase = this.lease.phase();
      if (phase === "failed") {
        log.error("host lease lost: VM leases are no longer valid", { reason: this.lease.lostReason ?? outcome.reason });
        this.#renewalsEnded = true;
        this.#nudgeSupervisor?.();
        return;
      }
      // Another host cannot take our leases during an outage (that is what the timeline
      // guarantees), but an outage is when the unexpected happens: look once storage is back.
      this.#revalidationDue ??= "storage came back";
      log.warn("host lease renewal failed; retrying", { reason: outcome.reason, phase, age_ms: Math.round(this.env.clock.nowMs() - this.lease.lastRenewalStartMs) });
      // Each attempt is bounded by T; retry soon, but without spinning on an instant failure.
      await this.#sleep(Math.min(t.ioTimeoutMs / 2, 1_000));
    }
  }

  /**
   * Ask & wait, independent of the renewal loop (whose attempt may be stuck in I/O): asks the
   * subscribers at validUntil − 4T, applies their answer, and stops the VMs at validUntil − T
   * without one, so that they are dead by validUntil — long before any other host may take their
   * leases (validUntil + K at the earliest). Ends when the host lease is lost for good.
   */
  async #supervise(): Promise<void> {
    const t = this.lease.timeline;
    while (!this.#stopped) {
      const nowMs = this.env.clock.nowMs();
      if (this.lease.phase(nowMs) === "failed") {
        if (this.#leases.size > 0) await this.#fence(`host lease lost: ${this.lease.lostReason}`);
        this.#lostWith.resolve(`host lease lost: ${this.lease.lostReason ?? "renewal-fail passed"}`);
        return;
      }
      const validUntilMs = this.lease.validUntilMs();
      const askAtMs = validUntilMs - (t.renewalFailMs - t.renewalWarnMs);
      const fenceAtMs = validUntilMs - t.ioTimeoutMs;
      // A renewal or a grant moved the fail point: the question was about a deadline that is gone.
      if (this.#question !== undefined && this.#question.validUntilMs !== validUntilMs) this.#question = undefined;
      const question = this.#question;
      // A host without VM leases has nothing to fence, yet asks and takes a no-fence grace like
      // any other: its open question tells the controller "this host cannot reach the storage
      // either", and the controller answers no-fence to a global fault only when every host that
      // could read the storage says so. An idle host that kept quiet (or left at renewal-fail)
      // made every fault look local (found by the fault-injection harness: a whole cluster fenced
      // for one storage outage).
      const hasVms = this.#leases.size > 0;
      if (hasVms && nowMs >= fenceAtMs) {
        const late = `no successful renewal for ${Math.round(nowMs - this.lease.lastRenewalStartMs)} ms`;
        await this.#fence(question === undefined ? late : `${late}, and no answer to question ${question.id}`);
        continue;
      }
      if (hasVms && question?.answer === "fence") {
        await this.#fence(`answer to question ${question.id}: fence`);
        continue;
      }
      if (question?.answer === "no-fence") {
        const untilMs = this.lease.grantGrace(question.askedAtMs);
        log.warn("no-fence: the host lease is kept on a grace (VMs keep running)", { question: question.id, grace_ms: Math.round(untilMs - nowMs), vms: this.#leases.size });
        await this.#persist().catch((error: unknown) => log.error("could not persist lockd state", { error }));
        continue;
      }
      if (nowMs >= askAtMs && question === undefined) {
        this.#ask(nowMs, validUntilMs, fenceAtMs);
        continue;
      }
      // Nothing to do until the next deadline, an answer, or a renewal (which moves them).
      const nextMs = nowMs < askAtMs ? askAtMs : nowMs < fenceAtMs ? fenceAtMs : validUntilMs;
      await this.#sleep(Math.max(1, nextMs - nowMs), (wake) => (this.#nudgeSupervisor = wake));
      this.#nudgeSupervisor = undefined;
    }
  }

  #ask(nowMs: number, validUntilMs: number, fenceAtMs: number): void {
    const question: Question = { id: ++this.#lastQuestionId, askedAtMs: nowMs, validUntilMs, fenceAtMs, answer: undefined };
    this.#question = question;
    this.env.metrics?.asked();
    // A renewal so late that it was asked about (it may still succeed, slowly): check the leases after it.
    this.#revalidationDue ??= "storage came back";
    const vms = [...this.#leases.values()].map((l) => l.resource);
    const reason = `no successful renewal for ${Math.round(nowMs - this.lease.lastRenewalStartMs)} ms`;
    log.warn("asking whether to fence", { question: question.id, reason, answer_within_ms: Math.round(fenceAtMs - nowMs), subscribers: this.#subscribers.size, vms: vms.length });
    this.#publish({ event: "question", question: question.id, reason, vms, answer_within_ms: Math.round(fenceAtMs - nowMs), grace_ms: this.lease.timeline.renewalFailMs });
  }

  #answer(id: number, questionId: number, answer: Answer): Reply {
    const question = this.#question;
    if (question === undefined || question.id !== questionId) {
      return { id, ok: false, error: "bad-request", message: `question ${questionId} is not open${question === undefined ? "" : ` (question ${question.id} is)`}` };
    }
    if (question.answer !== undefined && question.answer !== answer) {
      return { id, ok: false, error: "bad-request", message: `question ${questionId} was already answered ${question.answer}` };
    }
    if (question.answer === undefined) this.env.metrics?.answered(answer);
    question.answer = answer;
    log.warn("fencing question answered", { question: questionId, answer });
    this.#nudgeSupervisor?.();
    return { id, ok: true, question: questionId, answer };
  }

  #subscribe(id: number, subscriber: Subscriber | undefined): Reply {
    if (subscriber === undefined) return { id, ok: false, error: "bad-request", message: "subscribe needs a connection to send events on" };
    if (this.#subscribers.size >= maxSubscribers) return { id, ok: false, error: "io", message: `busy: ${maxSubscribers} subscribers already` };
    this.#subscribers.add(subscriber);
    const question = this.#question;
    // A subscriber that (re)connects while a question is open must see it: it may be the only one.
    if (question !== undefined && question.answer === undefined) {
      queueMicrotask(() =>
        subscriber({ event: "question", question: question.id, reason: "renewal is late", vms: [...this.#leases.values()].map((l) => l.resource), answer_within_ms: Math.round(question.fenceAtMs - this.env.clock.nowMs()), grace_ms: this.lease.timeline.renewalFailMs }),
      );
    }
    return { id, ok: true, subscribed: true };
  }

  /** Forgets a subscriber (its connection closed). */
  unsubscribe(subscriber: Subscriber): void {
    this.#subscribers.delete(subscriber);
  }

  #publish(event: LockdEvent): void {
    for (const subscriber of this.#subscribers) {
      try {
        subscriber(event);
      } catch (error) {
        log.warn("could not send an event to a subscriber", { error });
      }
    }
  }

  /**
   * Stops the VMs under our leases, then releases the leases of the VMs that stopped (best effort:
   * storage may be what failed; a lease of ours left on disk is free to others after host-dead).
   * Leases whose VM would not stop stay recorded, for the watchdog.
   */
  async #fence(reason: string): Promise<void> {
    const leases = [...this.#leases.values()];
    const vms = leases.map((l) => l.resource);
    log.error("fencing: stopping the VMs under our leases", { reason, vms });
    const outcome = await stopVms(fencingTools(this.env, this.lease.timeline.ioTimeoutMs), vms);
    const failed = new Set(outcome.failed.map((f) => f.vm));
    for (const lease of leases) if (!failed.has(lease.resource)) this.#leases.delete(lease.slot);
    this.#fenced = { atMs: this.env.clock.nowMs(), reason, vms, failed: [...failed] };
    this.env.metrics?.fenced(failed.size);
    await this.#persist().catch((error: unknown) => log.error("could not persist lockd state", { error }));
    this.#publish({ event: "fenced", reason, vms, failed: [...failed] });
    // Not released now: fencing comes when the storage is in trouble, and a release written now
    // may land much later — after host-dead, over the leader record of a host that took the
    // lease meanwhile (the simulator found that). Released after the next good renewal instead,
    // through the in-doubt check (released if still ours on disk); until then, or if that never
    // comes, they free themselves at host-dead.
    if (this.lease.phase() !== "failed") for (const lease of leases) if (!failed.has(lease.resource)) this.#inDoubt.set(lease.slot, lease.resource);
  }

  /**
   * Checks each held lease on disk: still ours (our host id, generation and version, held) →
   * keep its VM running; anything else → stop the VM at once and forget the lease. A lease that
   * cannot be read stays, and is checked again after the next renewal.
   */
  async #revalidate(): Promise<void> {
    const why = this.#revalidationDue;
    this.#revalidationDue = undefined;
    const taken: Array<{ lease: HeldLease; holder: string }> = [];
    let unreadable = 0;
    for (const lease of [...this.#leases.values()]) {
      let leader;
      try {
        leader = (await inquireLease(this.lease, lease.slot, { device: this.leaseDevice })).leader;
      } catch (error) {
        unreadable++;
        log.warn("could not re-validate a lease; will retry", { vm: lease.resource, error });
        continue;
      } finally {
        // Each read is bounded by T: the renewal loop (which runs this) moves, however many leases.
        this.#renewalProgressMs = this.env.clock.nowMs();
      }
      const ours = leader !== undefined && leader.state === "held" && leader.resource === lease.resource && leader.ownerHostId === this.lease.hostId && leader.ownerGeneration === this.lease.generation && leader.lver === lease.lver;
      if (!ours) {
        const holder = leader === undefined ? "nobody (the slot is empty)" : `host id ${leader.ownerHostId} generation ${leader.ownerGeneration} (${leader.state} ${leader.resource}, version ${leader.lver})`;
        taken.push({ lease, holder });
      }
    }
    if (unreadable > 0) this.#revalidationDue = why;
    log.info("re-validated the held leases", { why, held: this.#leases.size, taken: taken.length, unreadable });
    if (taken.length === 0) return;
    for (const { lease, holder } of taken) log.error("VM lease no longer ours: stopping its VM", { vm: lease.resource, slot: lease.slot, now_held_by: holder });
    const outcome = await stopVms(fencingTools(this.env, this.lease.timeline.ioTimeoutMs), taken.map((t) => t.lease.resource));
    const failed = new Set(outcome.failed.map((f) => f.vm));
    // Forgotten even when its VM would not stop: the lease is someone else's, ours to release never.
    for (const { lease } of taken) this.#leases.delete(lease.slot);
    await this.#persist().catch((error: unknown) => log.error("could not persist lockd state", { error }));
    this.#publish({ event: "leases-taken", vms: taken.map((t) => t.lease.resource), stopped: outcome.stopped, failed: [...failed] });
  }

  /**
   * A sleep that stop() cuts short; `exposeWake` gets the function that ends it early. Each
   * sleeper is forgotten when it wakes: nothing accumulates over a daemon's life.
   */
  async #sleep(ms: number, exposeWake?: (wake: () => void) => void): Promise<void> {
    if (ms <= 0 || this.#stopped) return;
    let wake!: () => void;
    const woken = new Promise<void>((resolve) => (wake = resolve));
    this.#sleepers.add(wake);
    exposeWake?.(wake);
    try {
      await Promise.race([this.env.clock.sleep(ms), woken]);
    } finally {
      this.#sleepers.delete(wake);
    }
  }

  /** Persists the current state; writes are serialised, each one taking the state as it is when it runs. */
  #persist(): Promise<void> {
    const write = this.#persisting.then(() => this.env.store.write(this.#state()));
    this.#persisting = write.catch(() => {});
    return write;
  }

  #state(): LockdState {
    return {
      version: stateFormatVersion,
      bootId: this.env.bootId,
      pid: this.env.pid,
      leaseFile: this.options.leaseFile,
      lockspaceId: this.lease.lockspace.header.lockspaceId,
      incarnation: this.lease.incarnation,
      validUntilMs: this.lease.validUntilMs(),
      leases: [...this.#leases.values()],
    };
  }
}

/**
 * The previous lockd's state, and whether this start may resume it (same boot, same file, same
 * host id, that lockd gone). Not resumable, its leases' VMs must be stopped.
 */
async function readPrevious(options: LockdOptions, env: LockdEnvironment): Promise<{ state: LockdState; resumable: boolean } | undefined> {
  let state: LockdState | undefined;
  try {
    state = await env.store.read();
  } catch (error) {
    if (!(error instanceof StateFileError)) throw error;
    log.error("ignoring unreadable lockd state: starting as a new incarnation", { reason: error.message });
    return undefined;
  }
  if (state === undefined) return undefined;
  if (state.pid !== env.pid && (await env.lockdAlive(state.pid))) {
    throw new HostIdInUseError(state.incarnation.hostId, `the lockd running as pid ${state.pid} (same state: ${env.store.name})`);
  }
  const reasons = [
    state.bootId !== env.bootId && "the machine rebooted",
    state.leaseFile !== options.leaseFile && `the lease file changed (${state.leaseFile})`,
    state.incarnation.hostId !== options.hostId && `the host id changed (${state.incarnation.hostId})`,
  ].filter((reason): reason is string => typeof reason === "string");
  if (reasons.length > 0) {
    log.info("not resuming the previous host lease", { reasons, leases: state.leases.length });
    return { state, resumable: false };
  }
  return { state, resumable: true };
}

/** Destroy attempts T/4 apart: three of them and a check fit in the T before validUntil. */
function fencingTools(env: LockdEnvironment, ioTimeoutMs: number): FencingTools {
  return { hypervisor: env.hypervisor, clock: env.clock, retryDelayMs: ioTimeoutMs / 4, ...(env.killer === undefined ? {} : { killer: env.killer }) };
}

function errorReply(id: number, error: unknown): Reply {
  const message = error instanceof Error ? error.message : String(error);
  if (error instanceof NotOwnerError) return { id, ok: false, error: "not-owner", message };
  // A slot or name the lockspace cannot hold (RangeError from the layout) is the caller's mistake.
  if (error instanceof SlotInUseError || error instanceof RangeError) return { id, ok: false, error: "bad-request", message };
  if (error instanceof CorruptionError) return { id, ok: false, error: "corrupt", message };
  if (error instanceof IoError) return { id, ok: false, error: "io", message };
  log.error("unexpected error serving a request", { error });
  return { id, ok: false, error: "internal", message };
}
