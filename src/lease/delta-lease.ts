/**
 * The host lease: a delta lease (Chockler & Malkhi, "light-weight leases", as in sanlock) on one
 * sector of the delta area, renewed every 2T. It gives this host a unique host id, a generation
 * that grows with each join, and — because every renewal also reads the whole delta area — the
 * liveness view of all other hosts that VM lease takeovers rest on. One renewal keeps every VM
 * lease of this host valid: its cost does not depend on how many VM leases are held.
 *
 * Safety argument and timeline: src/lease/README.md.
 */
import type { Clock } from "../core/clock.ts";
import { HostView } from "./host-view.ts";
import { deltaOffset } from "./layout.ts";
import { parseDeltaArea, readLockspace, type Lockspace } from "./lockspace.ts";
import { encodeRecord, type DeltaRecord } from "./records.ts";
import { timeline, type Timeline } from "./timeline.ts";
import type { SectorDevice } from "./sector-device.ts";

export interface JoinOptions {
  readonly hostId: number;
  readonly hostName: string;
  /**
   * Persisted id of this installation (32 hex digits); lets the same installation rejoin its
   * host id at once. The caller must make sure no earlier process of this installation is still
   * running (lockd holds a lock file in its state dir), or two processes would share the id.
   */
  readonly installId: string;
  readonly ioTimeoutMs: number;
  /**
   * "unique": the id was allocated to this host alone (an etcd transaction), so a free sector can
   * be taken at once. "configured": hand-configured ids may collide, so every join waits the
   * collision delay and re-reads before trusting the sector.
   */
  readonly idAllocation: "unique" | "configured";
}

export class HostIdInUseError extends Error {
  constructor(
    readonly hostId: number,
    readonly holder: string,
  ) {
    super(`host id ${hostId} is in use by ${holder}`);
    this.name = "HostIdInUseError";
  }
}

/**
 * ok: renewed within warn; warn: late, VM leases still valid; grace: past renewal-fail, but kept
 * valid by a no-fence grant (see grantGrace); failed: lost for good.
 */
export type Phase = "ok" | "warn" | "grace" | "failed";

/**
 * What lockd persists after every renewal so that a restarted lockd can carry on as the same
 * incarnation (DESIGN §4.1 rule 5) instead of rejoining and fencing every VM.
 */
export interface Incarnation {
  readonly hostId: number;
  readonly hostName: string;
  readonly installId: string;
  readonly ioTimeoutMs: number;
  readonly generation: number;
  /** Timestamps of our records that may be on disk: the last confirmed one, then writes in doubt. */
  readonly recordTimestampsMs: readonly number[];
  /** Start of the last successful renewal on the lease's clock (CLOCK_BOOTTIME in lockd). */
  readonly lastRenewalStartMs: number;
}

export class ResumeRefusedError extends Error {
  constructor(reason: string) {
    super(`cannot resume the host lease: ${reason}`);
    this.name = "ResumeRefusedError";
  }
}

export type RenewOutcome =
  | { readonly ok: true; readonly latencyMs: number }
  | { readonly ok: false; readonly reason: string; /** the host id was overwritten by another host: the lease is lost */ readonly collision: boolean };

/**
 * In-doubt writes remembered at most; more than this many failures in a row end the lease. It
 * also bounds a no-fence grace: at one attempt per 1.5T at worst, 64 attempts are 96T (16 min at
 * T = 10 s) of storage outage with the VMs kept running.
 */
const maxInDoubtWrites = 64;

export class DeltaLease {
  readonly timeline: Timeline;
  readonly view: HostView;
  #lastRenewalStartMs: number;
  /** Our records that may be on disk: the last confirmed one first, then writes in doubt. */
  #ours: DeltaRecord[];
  #lost: string | undefined;
  #released = false;
  /** While past renewal-fail, the lease stays valid until then (a no-fence grant); see grantGrace. */
  #graceUntilMs: number | undefined;

  private constructor(
    readonly lockspace: Lockspace,
    readonly clock: Clock,
    written: DeltaRecord,
    renewalStartMs: number,
    view: HostView,
  ) {
    this.timeline = timeline(written.ioTimeoutMs, lockspace.header.killBudgetMs);
    this.view = view;
    this.#ours = [written];
    this.#lastRenewalStartMs = renewalStartMs;
  }

  get hostId(): number {
    return this.#ours[0]!.hostId;
  }
  get generation(): number {
    return this.#ours[0]!.generation;
  }
  get device(): SectorDevice {
    return this.lockspace.device;
  }
  get lastRenewalStartMs(): number {
    return this.#lastRenewalStartMs;
  }
  /** Why the lease was lost for good (collision, renewal past fail, release), if it was. */
  get lostReason(): string | undefined {
    return this.#lost;
  }

  /**
   * Joins the lockspace on `device` as `options.hostId`. Waits (bounded by host-dead of the
   * previous holder) for a host id held by another installation to go silent; fails at once if
   * that holder is alive.
   */
  static async join(device: SectorDevice, clock: Clock, options: JoinOptions): Promise<DeltaLease> {
    const { ioTimeoutMs } = options;
    const lockspace = await readLockspace(device, ioTimeoutMs);
    const { header, layout: l } = lockspace;
    if (ioTimeoutMs > header.maxIoTimeoutMs) {
      throw new RangeError(`io timeout ${ioTimeoutMs} ms exceeds the lockspace's maximum of ${header.maxIoTimeoutMs} ms`);
    }
    const t = timeline(ioTimeoutMs, header.killBudgetMs);
    const view = new HostView(l.hosts, timeline(header.maxIoTimeoutMs, header.killBudgetMs).hostDeadMs, header.killBudgetMs);
    const readArea = async () => {
      const startMs = clock.nowMs();
      const [area] = await device.io([{ kind: "read", offset: l.deltaAreaOffset, length: l.deltaAreaBytes }], ioTimeoutMs);
      const slots = parseDeltaArea(lockspace, area!);
      view.observe(slots, startMs, clock.nowMs());
      return slots;
    };

    let current = (await readArea())[options.hostId - 1]!;
    if (typeof current === "object" && "corrupt" in current) throw new Error(current.corrupt);
    const sameInstallation = current !== "empty" && current.installId === options.installId;
    let mustWait = current !== "empty" && current.state === "held" && !sameInstallation;
    // Bounded: the holder's host-dead is at most the lockspace's longest; by then it is dead, or
    // it renewed and we failed.
    const waitUntilMs = clock.nowMs() + view.supersededDeadMs + 2 * t.renewalIntervalMs;
    while (mustWait) {
      const holder = current as DeltaRecord;
      const liveness = view.liveness(options.hostId, holder.generation);
      if (liveness.state === "dead") break;
      if (clock.nowMs() > waitUntilMs) throw new HostIdInUseError(options.hostId, describeHolder(holder));
      await clock.sleep(Math.min(t.renewalIntervalMs, liveness.deadInMs ?? t.renewalIntervalMs));
      const next = (await readArea())[options.hostId - 1]!;
      if (typeof next === "object" && "corrupt" in next) throw new Error(next.corrupt);
      if (next === "empty" || next.state !== "held" || next.generation !== holder.generation || next.timestampMs !== holder.timestampMs) {
        if (next !== "empty" && next.state === "held") throw new HostIdInUseError(options.hostId, describeHolder(next));
        mustWait = false;
      }
      current = next;
    }

    const previousGeneration = current === "empty" || "corrupt" in current ? 0 : current.generation;
    const written: DeltaRecord = {
      kind: "delta",
      hostId: options.hostId,
      generation: previousGeneration + 1,
      timestampMs: Math.max(Math.floor(clock.nowMs()), current === "empty" || "corrupt" in current ? 0 : current.timestampMs + 1),
      ioTimeoutMs,
      installId: options.installId,
      hostName: options.hostName,
      state: "held",
    };
    const startMs = clock.nowMs();
    await device.io([{ kind: "write", offset: deltaOffset(l, options.hostId), data: encodeRecord(written, l.sectorSize) }], ioTimeoutMs);
    // A free sector of a uniquely allocated id, or our own installation's: nobody else writes it.
    // Otherwise another joiner may have read it as free before our write and be about to write.
    const fast = sameInstallation || (current === "empty" || current.state === "released") && options.idAllocation === "unique";
    if (!fast) await clock.sleep(t.joinCollisionDelayMs);
    const after = (await readArea())[options.hostId - 1]!;
    if (after === "empty" || "corrupt" in after || !sameRecord(after, written)) {
      throw new HostIdInUseError(options.hostId, after === "empty" || "corrupt" in after ? "another host (sector changed)" : describeHolder(after));
    }
    return new DeltaLease(lockspace, clock, written, startMs, view);
  }

  /**
   * Carries on an incarnation persisted by an earlier process (`incarnation`), without a new
   * generation and without touching any VM lease. Safe only if that process is gone and `clock`
   * is the one it used (CLOCK_BOOTTIME of the same boot: the caller checks the boot id), and only
   * before renewal-fail: until then nobody can have seen this host dead (that takes 8T + K of
   * silence), so every lease it held is still its own. Refused otherwise, or if the sector shows
   * anything but one of our own records.
   */
  static async resume(device: SectorDevice, clock: Clock, incarnation: Incarnation): Promise<DeltaLease> {
    const lockspace = await readLockspace(device, incarnation.ioTimeoutMs);
    const { header, layout: l } = lockspace;
    const t = timeline(incarnation.ioTimeoutMs, header.killBudgetMs);
    const ageMs = clock.nowMs() - incarnation.lastRenewalStartMs;
    if (!(ageMs >= 0 && ageMs < t.renewalFailMs)) {
      throw new ResumeRefusedError(`the last renewal was ${Math.round(ageMs)} ms ago, not within renewal-fail (${t.renewalFailMs} ms)`);
    }
    const view = new HostView(l.hosts, timeline(header.maxIoTimeoutMs, header.killBudgetMs).hostDeadMs, header.killBudgetMs);
    const startMs = clock.nowMs();
    const [area] = await device.io([{ kind: "read", offset: l.deltaAreaOffset, length: l.deltaAreaBytes }], incarnation.ioTimeoutMs);
    const slots = parseDeltaArea(lockspace, area!);
    view.observe(slots, startMs, clock.nowMs());
    const seen = slots[incarnation.hostId - 1]!;
    const ours = incarnation.recordTimestampsMs.map(
      (timestampMs): DeltaRecord => ({ kind: "delta", hostId: incarnation.hostId, generation: incarnation.generation, timestampMs, ioTimeoutMs: incarnation.ioTimeoutMs, installId: incarnation.installId, hostName: incarnation.hostName, state: "held" }),
    );
    if (ours.length === 0) throw new ResumeRefusedError("no record of ours was persisted");
    if (seen === "empty" || "corrupt" in seen || !ours.some((record) => sameRecord(record, seen))) {
      throw new ResumeRefusedError(`host id ${incarnation.hostId} now holds ${seen === "empty" ? "nothing" : "corrupt" in seen ? "a corrupt record" : describeHolder(seen)}`);
    }
    const lease = new DeltaLease(lockspace, clock, ours[0]!, incarnation.lastRenewalStartMs, view);
    lease.#ours = ours;
    return lease;
  }

  /** The state to persist after each renewal (see `resume`). */
  get incarnation(): Incarnation {
    const confirmed = this.#ours[0]!;
    return {
      hostId: confirmed.hostId,
      hostName: confirmed.hostName,
      installId: confirmed.installId,
      ioTimeoutMs: confirmed.ioTimeoutMs,
      generation: confirmed.generation,
      recordTimestampsMs: this.#ours.map((record) => record.timestampMs),
      lastRenewalStartMs: this.#lastRenewalStartMs,
    };
  }

  /**
   * Where this host stands: VM leases can be taken only in "ok", kept in "ok", "warn" and
   * "grace"; "failed" is final.
   */
  phase(nowMs = this.clock.nowMs()): Phase {
    const ageMs = nowMs - this.#lastRenewalStartMs;
    const inGrace = this.#graceUntilMs !== undefined && nowMs < this.#graceUntilMs;
    // Sticky: past fail (and past any grace) the VM leases may be taken by others after
    // host-dead, so nothing that happens later (a slow renewal completing) may make them ours again.
    if (ageMs >= this.timeline.renewalFailMs && !inGrace) {
      this.#lost ??= `no successful renewal for ${Math.round(ageMs)} ms (fail at ${this.timeline.renewalFailMs} ms${this.#graceUntilMs === undefined ? "" : ", no-fence grace over"})`;
    }
    if (this.#lost !== undefined) return "failed";
    if (ageMs >= this.timeline.renewalFailMs) return "grace";
    return ageMs >= this.timeline.renewalWarnMs ? "warn" : "ok";
  }

  /** Until when a no-fence grant keeps the lease valid past renewal-fail, if one does. */
  get graceUntilMs(): number | undefined {
    return this.#graceUntilMs;
  }

  /**
   * A no-fence grant: keeps the lease valid until `evidenceAtMs` + renewal-fail even without a
   * renewal, exactly as if a renewal had started at `evidenceAtMs`. The caller vouches that at
   * `evidenceAtMs` no other host could read the lockspace (a global storage fault): every other
   * host's liveness timers then restart at its first good read, after `evidenceAtMs` (host-view.ts),
   * so none can call this host dead before `evidenceAtMs` + 8T + K — the same margin K a real
   * renewal at that moment leaves. Returns the new validity end; refused once the lease is lost.
   */
  grantGrace(evidenceAtMs: number): number {
    const nowMs = this.clock.nowMs();
    if (this.phase(nowMs) === "failed") throw new Error(`cannot extend a lost host lease: ${this.#lost}`);
    if (!(evidenceAtMs <= nowMs)) throw new RangeError(`no-fence evidence from the future: ${evidenceAtMs} > now ${nowMs}`);
    const untilMs = evidenceAtMs + this.timeline.renewalFailMs;
    this.#graceUntilMs = Math.max(this.#graceUntilMs ?? untilMs, untilMs);
    return this.#graceUntilMs;
  }

  /** When the lease stops being valid unless renewed (or granted grace) before: its fail point. */
  validUntilMs(): number {
    return Math.max(this.#lastRenewalStartMs + this.timeline.renewalFailMs, this.#graceUntilMs ?? 0);
  }

  /**
   * One renewal: a single batch that reads the whole delta area (liveness of every host, and
   * proof nobody overwrote our sector) and writes our record with a new timestamp.
   */
  async renew(): Promise<RenewOutcome> {
    if (this.phase() === "failed") return { ok: false, reason: this.#lost!, collision: false };
    const l = this.lockspace.layout;
    const previous = this.#ours.at(-1)!;
    const next: DeltaRecord = { ...previous, timestampMs: Math.max(Math.floor(this.clock.nowMs()), previous.timestampMs + 1) };
    const startMs = this.clock.nowMs();
    let area: Uint8Array;
    try {
      [area] = (await this.device.io(
        [
          { kind: "read", offset: l.deltaAreaOffset, length: l.deltaAreaBytes },
          { kind: "write", offset: deltaOffset(l, this.hostId), data: encodeRecord(next, l.sectorSize) },
        ],
        this.timeline.ioTimeoutMs,
      )) as [Uint8Array];
    } catch (error) {
      this.view.blind();
      // The write may still land: until a read shows otherwise, it is one of ours.
      this.#ours.push(next);
      if (this.#ours.length > maxInDoubtWrites) this.#lost = `${maxInDoubtWrites} renewals in a row failed`;
      return { ok: false, reason: error instanceof Error ? error.message : String(error), collision: false };
    }
    const endMs = this.clock.nowMs();
    const slots = parseDeltaArea(this.lockspace, area);
    this.view.observe(slots, startMs, endMs);
    const seen = slots[this.hostId - 1]!;
    if (seen === "empty" || "corrupt" in seen || !this.#ours.some((record) => sameRecord(record, seen))) {
      this.#lost = `host id ${this.hostId} was overwritten by ${seen === "empty" || "corrupt" in seen ? "another writer" : describeHolder(seen)}`;
      return { ok: false, reason: this.#lost, collision: true };
    }
    if (this.phase(endMs) === "failed") return { ok: false, reason: this.#lost!, collision: false };
    this.#ours = [next];
    this.#lastRenewalStartMs = startMs;
    // A real renewal supersedes any grant: the next failure starts a new timeline (and question).
    this.#graceUntilMs = undefined;
    return { ok: true, latencyMs: endMs - startMs };
  }

  /** Gives the host id back (state released). Only after every VM lease of this host was released. */
  async release(): Promise<void> {
    if (this.#released) return;
    const l = this.lockspace.layout;
    const previous = this.#ours.at(-1)!;
    const released: DeltaRecord = { ...previous, state: "released", timestampMs: Math.max(Math.floor(this.clock.nowMs()), previous.timestampMs + 1) };
    this.#released = true;
    this.#lost = "released";
    await this.device.io([{ kind: "write", offset: deltaOffset(l, this.hostId), data: encodeRecord(released, l.sectorSize) }], this.timeline.ioTimeoutMs);
  }
}

function sameRecord(a: DeltaRecord, b: DeltaRecord): boolean {
  return a.generation === b.generation && a.timestampMs === b.timestampMs && a.installId === b.installId && a.state === b.state;
}

function describeHolder(record: DeltaRecord): string {
  return `"${record.hostName}" (generation ${record.generation}, install ${record.installId.slice(0, 8)})`;
}
