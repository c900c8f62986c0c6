/**
 * The lease daemon's core: joins (or resumes) the host lease, renews it on time, persists what a
 * restarted lockd needs to carry on, and serves lease requests one slot at a time. Sockets,
 * signals and the process live in the CLI command; time and storage come in through the Clock
 * and SectorDevice interfaces.
 *
 * Renewals and VM lease operations use separate devices (separate I/O workers): a slow ballot
 * never delays a renewal.
 */
import type { Clock } from "../core/clock.ts";
import { DeltaLease, HostIdInUseError, ResumeRefusedError, type JoinOptions } from "../lease/delta-lease.ts";
import { acquireLease, inquireLease, NotOwnerError, releaseLease, SlotInUseError } from "../lease/paxos-lease.ts";
import { CorruptionError } from "../lease/records.ts";
import { IoError, type SectorDevice } from "../lease/sector-device.ts";
import { logger } from "../log.ts";
import type { Reply, Request } from "./protocol.ts";
import { StateFileError, type HeldLease, type LockdState, type StateStore } from "./state-file.ts";

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
   * Stops the VMs under `leases` (destroys them through the hypervisor) and resolves when they
   * are gone. Called when the host lease could not be renewed in time: the VMs must be dead by
   * renewal-fail, so it is called one I/O timeout before, and must finish within that.
   */
  readonly fence: (leases: readonly HeldLease[], reason: string) => Promise<void>;
}

export interface FenceRecord {
  readonly atMs: number;
  readonly reason: string;
  readonly vms: readonly string[];
}

/** Lease requests waiting or running at once; more are refused rather than queued without bound. */
const maxInFlightRequests = 256;

export class LockDaemon {
  readonly #leases = new Map<number, HeldLease>();
  /** Per slot, the tail of its request queue: requests for one slot run one after another. */
  readonly #slotQueues = new Map<number, Promise<unknown>>();
  #inFlight = 0;
  #persisting: Promise<void> = Promise.resolve();
  #stopped = false;
  readonly #sleepers = new Set<() => void>();
  readonly #renewals: Promise<void>;
  readonly #fenceWatch: Promise<void>;
  #fenced: FenceRecord | undefined;
  /** How this incarnation began: "joined" or "resumed". */
  readonly startedBy: "joined" | "resumed";

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
    this.#renewals = this.#renewLoop();
    this.#fenceWatch = this.#watchForFencing();
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
      if (previous !== undefined) {
        try {
          lease = await DeltaLease.resume(renewalDevice, env.clock, previous.incarnation);
          if (lease.lockspace.header.lockspaceId !== previous.lockspaceId) throw new ResumeRefusedError("the lease file holds another lockspace now");
          held = previous.leases;
          startedBy = "resumed";
          log.info("resumed the host lease of the previous lockd: its VM leases are still ours", { host_id: lease.hostId, generation: lease.generation, leases: held.length });
        } catch (error) {
          if (!(error instanceof ResumeRefusedError)) throw error;
          lease = undefined;
          // Those leases may be another host's by now; what runs under them must not go on.
          log.error("could not resume the previous host lease; its VM leases are lost", { reason: error.message, lost_leases: previous.leases.map((l) => l.resource) });
        }
      }
      lease ??= await DeltaLease.join(renewalDevice, env.clock, {
        hostId: options.hostId,
        hostName: options.hostName,
        installId: env.installId,
        ioTimeoutMs: options.ioTimeoutMs,
        idAllocation: options.idAllocation,
      });
      const daemon = new LockDaemon(options, env, lease, leaseDevice, held, startedBy);
      if (daemon.startedBy === "joined") log.info("joined the lockspace", { host_id: lease.hostId, generation: lease.generation, lockspace: lease.lockspace.header.name });
      await daemon.#persist();
      return daemon;
    } catch (error) {
      await Promise.all([renewalDevice.close(), leaseDevice?.close()]);
      throw error;
    }
  }

  /** Answers one request; never throws (an unexpected error is an "internal" reply, and logged). */
  async handle(request: Request): Promise<Reply> {
    if (request.op === "status") return { id: request.id, ok: true, status: this.status() };
    if (this.#inFlight >= maxInFlightRequests) return { id: request.id, ok: false, error: "io", message: `busy: ${maxInFlightRequests} requests already in progress` };
    this.#inFlight++;
    const previous = this.#slotQueues.get(request.slot) ?? Promise.resolve();
    const run = previous.then(() => this.#serve(request));
    const tail = run.catch(() => {});
    this.#slotQueues.set(request.slot, tail);
    try {
      return await run;
    } finally {
      this.#inFlight--;
      if (this.#slotQueues.get(request.slot) === tail) this.#slotQueues.delete(request.slot);
    }
  }

  /**
   * JSON shape of `fitha lease status --json` (stable):
   * { "host_id", "host_name", "generation", "started_by": "joined"|"resumed", "phase": "ok"|"warn"|"failed",
   *   "lost_reason": string|null, "last_renewal_age_ms", "timeline": { "io_timeout_ms", "renewal_interval_ms",
   *   "renewal_warn_ms", "renewal_fail_ms", "host_dead_ms" }, "leases": [ { "slot", "vm", "lver" } ],
   *   "hosts": [ { "host_id", "host_name", "generation", "state", "silent_ms" } ] }
   */
  status(): Record<string, unknown> {
    const t = this.lease.timeline;
    return {
      host_id: this.lease.hostId,
      host_name: this.options.hostName,
      generation: this.lease.generation,
      started_by: this.startedBy,
      phase: this.lease.phase(),
      lost_reason: this.lease.lostReason ?? null,
      fenced: this.#fenced === undefined ? null : { age_ms: Math.round(this.env.clock.nowMs() - this.#fenced.atMs), reason: this.#fenced.reason, vms: this.#fenced.vms },
      last_renewal_age_ms: Math.round(this.env.clock.nowMs() - this.lease.lastRenewalStartMs),
      timeline: { io_timeout_ms: t.ioTimeoutMs, renewal_interval_ms: t.renewalIntervalMs, renewal_warn_ms: t.renewalWarnMs, renewal_fail_ms: t.renewalFailMs, host_dead_ms: t.hostDeadMs },
      leases: [...this.#leases.values()].sort((a, b) => a.slot - b.slot).map((l) => ({ slot: l.slot, vm: l.resource, lver: l.lver })),
      hosts: this.lease.view.summary().map((h) => ({ host_id: h.hostId, host_name: h.hostName ?? null, generation: h.generation ?? null, state: h.state, silent_ms: h.silentMs === undefined ? null : Math.round(h.silentMs) })),
    };
  }

  /** Stops renewing and closes the devices. VM leases stay held: a restart within the window resumes them. */
  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    for (const wake of this.#sleepers) wake();
    await Promise.all([this.#renewals, this.#fenceWatch]);
    await Promise.all(this.#slotQueues.values());
    await Promise.all([this.lease.device.close(), this.leaseDevice.close()]);
  }

  async #serve(request: Exclude<Request, { op: "status" }>): Promise<Reply> {
    const { id } = request;
    try {
      switch (request.op) {
        case "acquire": {
          const result = await acquireLease(this.lease, request.slot, request.vm, { device: this.leaseDevice });
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
      if (outcome.ok) {
        log.debug("renewed the host lease", { latency_ms: Math.round(outcome.latencyMs * 10) / 10 });
        await this.#persist().catch((error: unknown) => log.error("could not persist lockd state", { error }));
        continue;
      }
      const phase = this.lease.phase();
      if (phase === "failed") {
        log.error("host lease lost: VM leases are no longer valid", { reason: this.lease.lostReason ?? outcome.reason });
        return;
      }
      log.warn("host lease renewal failed; retrying", { reason: outcome.reason, phase, age_ms: Math.round(this.env.clock.nowMs() - this.lease.lastRenewalStartMs) });
      // Each attempt is bounded by T; retry soon, but without spinning on an instant failure.
      await this.#sleep(Math.min(t.ioTimeoutMs / 2, 1_000));
    }
  }

  /**
   * Independent of the renewal loop, whose attempt may be stuck in I/O: at renewal-fail minus one
   * I/O timeout without a successful renewal, the VMs under our leases are stopped, so that they
   * are dead by renewal-fail — long before any other host may take their leases (host-dead).
   */
  async #watchForFencing(): Promise<void> {
    const t = this.lease.timeline;
    while (!this.#stopped && this.#fenced === undefined) {
      const renewalStartMs = this.lease.lastRenewalStartMs;
      await this.#sleep(renewalStartMs + t.renewalFailMs - t.ioTimeoutMs - this.env.clock.nowMs());
      if (this.#stopped) return;
      if (this.lease.lastRenewalStartMs !== renewalStartMs && this.lease.phase() !== "failed") continue;
      await this.#fence(`no successful renewal for ${Math.round(this.env.clock.nowMs() - renewalStartMs)} ms (fail at ${t.renewalFailMs} ms)`);
    }
  }

  async #fence(reason: string): Promise<void> {
    const leases = [...this.#leases.values()];
    this.#fenced = { atMs: this.env.clock.nowMs(), reason, vms: leases.map((l) => l.resource) };
    log.error("fencing: stopping the VMs under our leases", { reason, vms: this.#fenced.vms });
    try {
      await this.env.fence(leases, reason);
    } catch (error) {
      // The watchdog path (DESIGN §4) must now kill them before host-dead; say so loudly.
      log.error("fencing failed: VMs may still run; the watchdog must stop them", { error });
    }
    this.#leases.clear();
    await this.#persist().catch((error: unknown) => log.error("could not persist lockd state", { error }));
  }

  /** A sleep that stop() cuts short. Each sleeper is forgotten when it wakes: nothing accumulates over a daemon's life. */
  async #sleep(ms: number): Promise<void> {
    if (ms <= 0 || this.#stopped) return;
    let wake!: () => void;
    const stopped = new Promise<void>((resolve) => (wake = resolve));
    this.#sleepers.add(wake);
    try {
      await Promise.race([this.env.clock.sleep(ms), stopped]);
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
      version: 1,
      bootId: this.env.bootId,
      pid: this.env.pid,
      leaseFile: this.options.leaseFile,
      lockspaceId: this.lease.lockspace.header.lockspaceId,
      incarnation: this.lease.incarnation,
      leases: [...this.#leases.values()],
    };
  }
}

/** The previous lockd's state, if this start may resume it (same boot, same file, that lockd gone). */
async function readPrevious(options: LockdOptions, env: LockdEnvironment): Promise<LockdState | undefined> {
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
    log.info("not resuming the previous host lease", { reasons });
    return undefined;
  }
  return state;
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
