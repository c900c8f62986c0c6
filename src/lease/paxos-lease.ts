/**
 * VM leases: one Disk Paxos lease per VM (Gafni & Lamport), as in sanlock. A slot holds a leader
 * record (the decided owner, a cache) and one ballot block per host id. Acquiring runs one Disk
 * Paxos instance (lease version lver + 1) with two ballot phases, each "write my block, read
 * every block", then writes the leader. Only the winner ever writes a held leader, and only the
 * owner releases it, so no host overwrites another's decision.
 *
 * A lease held by (host id, generation) may be taken only when that incarnation is dead in this
 * host's HostView (silent for host-dead), or after a clean release. The owner's lease stays valid
 * exactly as long as its delta lease does: no per-lease renewal I/O.
 *
 * Safety argument: src/lease/README.md.
 */
import type { DeltaLease } from "./delta-lease.ts";
import { ballotOffset, slotOffset } from "./layout.ts";
import { parseDeltaArea } from "./lockspace.ts";
import { CorruptionError, decodeRecord, encodeRecord, type BallotRecord, type LeaderRecord } from "./records.ts";
import type { SectorDevice } from "./sector-device.ts";

export interface Owner {
  readonly hostId: number;
  readonly generation: number;
}

export type AcquireResult =
  | { readonly status: "acquired"; readonly lver: number; /** it was already ours */ readonly already: boolean }
  | {
      readonly status: "held";
      readonly owner: Owner;
      /** The owner's host name as last seen in the delta area, for messages. */
      readonly ownerName: string | undefined;
      /** How long until the owner could be seen dead if it stays silent; undefined when unknown. */
      readonly deadInMs: number | undefined;
    };

/** "contended": another host ran a ballot on the slot meanwhile; whether it was ours is not known yet (try again). */
export type ReleaseResult = "released" | "not-held" | "contended";

export interface LeaseState {
  readonly slot: number;
  readonly leader: LeaderRecord | undefined;
  /** Highest instance with an accepted (phase-2) value; above leader.lver means an unfinished acquisition. */
  readonly acceptedLver: number;
}

export class SlotInUseError extends Error {
  constructor(slot: number, resource: string, holder: string) {
    super(`lease slot ${slot} holds "${holder}", not "${resource}"`);
    this.name = "SlotInUseError";
  }
}

export class NotOwnerError extends Error {
  constructor(reason: string) {
    super(`cannot act on VM leases: the host lease is not valid (${reason})`);
    this.name = "NotOwnerError";
  }
}

/** Contention (another host with a higher ballot) is retried this many times with random backoff. */
const maxBallotAttempts = 8;

interface SlotRead {
  readonly leader: LeaderRecord | undefined;
  /** Index 0 = host id 1. */
  readonly ballots: readonly (BallotRecord | undefined)[];
}

export interface PaxosOptions {
  /** Randomness for contention backoff; injected so that the simulator is deterministic. */
  readonly random?: () => number;
  /**
   * The device for VM lease I/O, if not the host lease's own: lockd gives each its own I/O
   * worker, so that slow VM lease I/O never delays a renewal.
   */
  readonly device?: SectorDevice;
}

/** One operation's context: the host lease it acts for, the device and randomness it uses. */
interface Session {
  readonly lease: DeltaLease;
  readonly device: SectorDevice;
  readonly random: () => number;
}

function openSession(lease: DeltaLease, options: PaxosOptions): Session {
  return { lease, device: options.device ?? lease.device, random: options.random ?? Math.random };
}

/** Acquires the lease in `slot` for `resource` on behalf of the delta lease's incarnation. */
export async function acquireLease(lease: DeltaLease, slot: number, resource: string, options: PaxosOptions = {}): Promise<AcquireResult> {
  const session = openSession(lease, options);
  const us: Owner = { hostId: lease.hostId, generation: lease.generation };
  for (let attempt = 1; ; attempt++) {
    requireValid(lease, "ok");
    const read = await readSlot(session, slot);
    const { leader } = read;
    if (leader !== undefined && leader.state === "held" && leader.resource !== resource) {
      throw new SlotInUseError(slot, resource, leader.resource);
    }
    let instance = leader?.lver ?? 0;
    const accepted = highestAccepted(read.ballots);
    if (accepted > instance) {
      // An acquisition of instance `accepted` reached phase 2 but never wrote its leader (its
      // host crashed or timed out). Finish that instance first: Paxos gives back its value.
      const value = await runBallot(session, slot, accepted, read.ballots, us);
      if (value === "contended") {
        if (attempt === maxBallotAttempts) throw contention(slot);
        continue;
      }
      if (sameOwner(value, us)) return commit(session, slot, resource, accepted);
      const blocked = await holdResult(session, value);
      if (blocked !== undefined) return blocked;
      instance = accepted;
    } else if (leader !== undefined && leader.state === "held") {
      const owner = { hostId: leader.ownerHostId, generation: leader.ownerGeneration };
      if (sameOwner(owner, us)) return { status: "acquired", lver: leader.lver, already: true };
      const blocked = await holdResult(session, owner);
      if (blocked !== undefined) return blocked;
    }
    // The lease is free (never used, released, or its owner is dead): propose ourselves.
    const value = await runBallot(session, slot, instance + 1, read.ballots, us);
    if (value === "contended") {
      if (attempt === maxBallotAttempts) throw contention(slot);
      continue;
    }
    if (sameOwner(value, us)) return commit(session, slot, resource, instance + 1);
    // Another host proposing at the same time won this instance; it is live (it is acquiring).
    return (await holdResult(session, value)) ?? { status: "held", owner: value, ownerName: nameOf(lease, value.hostId), deadInMs: undefined };
  }
}

export interface ReleaseOptions extends PaxosOptions {
  /**
   * The lease version this incarnation acquired (acquireLease's `lver`). With it, release is a
   * single write: while our host lease is valid nobody can have decided a later version (that
   * needs us dead), and only we write our held leader, so the leader is ours at `lver`.
   * Without it, release reads the slot first and also finishes an acquisition of ours that was
   * decided but never committed.
   */
  readonly lver?: number;
}

/** Releases the lease in `slot` if this incarnation holds it (also an acquisition decided but not committed). */
export async function releaseLease(lease: DeltaLease, slot: number, resource: string, options: ReleaseOptions = {}): Promise<ReleaseResult> {
  const session = openSession(lease, options);
  const us: Owner = { hostId: lease.hostId, generation: lease.generation };
  requireValid(lease);
  if (options.lver !== undefined) {
    await writeLeader(session, slot, { lver: options.lver, owner: us, state: "released", resource });
    return "released";
  }
  const read = await readSlot(session, slot);
  const { leader } = read;
  const accepted = highestAccepted(read.ballots);
  let lver: number;
  if (accepted > (leader?.lver ?? 0)) {
    const value = await runBallot(session, slot, accepted, read.ballots, us);
    if (value === "contended") return "contended";
    if (!sameOwner(value, us)) return "not-held";
    lver = accepted;
  } else if (leader !== undefined && leader.state === "held" && sameOwner({ hostId: leader.ownerHostId, generation: leader.ownerGeneration }, us)) {
    lver = leader.lver;
  } else {
    return "not-held";
  }
  if (leader !== undefined && leader.state === "held" && leader.resource !== resource && leader.lver === lver) {
    throw new SlotInUseError(slot, resource, leader.resource);
  }
  // Past fail the lease may already belong to someone else: writing now could overwrite their leader.
  requireValid(lease);
  await writeLeader(session, slot, { lver, owner: us, state: "released", resource });
  return "released";
}

/** The lease as on disk now, without changing it. */
export async function inquireLease(lease: DeltaLease, slot: number, options: PaxosOptions = {}): Promise<LeaseState> {
  const read = await readSlot(openSession(lease, options), slot);
  return { slot, leader: read.leader, acceptedLver: highestAccepted(read.ballots) };
}

/**
 * Every action as owner is preceded by this check of our own host lease (DESIGN §4.1 rule 9).
 * Taking a lease needs it fully "ok": a host already late with its renewal is about to be fenced.
 */
function requireValid(lease: DeltaLease, need: "ok" | "valid" = "valid"): void {
  const phase = lease.phase();
  if (phase === "failed") throw new NotOwnerError(lease.lostReason ?? "failed");
  if (need === "ok" && phase !== "ok") throw new NotOwnerError(`renewal is late (${phase})`);
}

function contention(slot: number): Error {
  return new Error(`lease slot ${slot}: other hosts kept winning the ballot after ${maxBallotAttempts} attempts`);
}

function sameOwner(a: Owner, b: Owner): boolean {
  return a.hostId === b.hostId && a.generation === b.generation;
}

function nameOf(lease: DeltaLease, hostId: number): string | undefined {
  const slot = lease.view.slot(hostId);
  return slot !== undefined && typeof slot === "object" && "hostName" in slot ? slot.hostName : undefined;
}

/**
 * A "held" result while `owner` may still be alive; undefined once it is dead in our view. The
 * view is refreshed first: renewals keep it at most 2T old, which is safe (silence is only
 * counted up to the last read) but would delay a takeover by up to 2T.
 */
async function holdResult(session: Session, owner: Owner): Promise<AcquireResult | undefined> {
  await refreshView(session);
  const liveness = session.lease.view.liveness(owner.hostId, owner.generation);
  if (liveness.state === "dead") return undefined;
  return { status: "held", owner, ownerName: nameOf(session.lease, owner.hostId), deadInMs: liveness.deadInMs };
}

async function commit(session: Session, slot: number, resource: string, lver: number): Promise<AcquireResult> {
  requireValid(session.lease, "ok");
  await writeLeader(session, slot, { lver, owner: { hostId: session.lease.hostId, generation: session.lease.generation }, state: "held", resource });
  return { status: "acquired", lver, already: false };
}

async function writeLeader(session: Session, slot: number, leader: { lver: number; owner: Owner; state: "held" | "released"; resource: string }): Promise<void> {
  const { layout: l } = session.lease.lockspace;
  const record: LeaderRecord = { kind: "leader", slot, lver: leader.lver, ownerHostId: leader.owner.hostId, ownerGeneration: leader.owner.generation, state: leader.state, resource: leader.resource };
  await session.device.io([{ kind: "write", offset: slotOffset(l, slot), data: encodeRecord(record, l.sectorSize) }], session.lease.timeline.ioTimeoutMs);
}

/** Reads the delta area into the host view (a failed read makes the view blind, rule 1). */
async function refreshView(session: Session): Promise<void> {
  const ls = session.lease.lockspace;
  const startMs = session.lease.clock.nowMs();
  let area: Uint8Array;
  try {
    [area] = (await session.device.io([{ kind: "read", offset: ls.layout.deltaAreaOffset, length: ls.layout.deltaAreaBytes }], session.lease.timeline.ioTimeoutMs)) as [Uint8Array];
  } catch (error) {
    session.lease.view.blind();
    throw error;
  }
  session.lease.view.observe(parseDeltaArea(ls, area), startMs, session.lease.clock.nowMs());
}

/** One read of the slot: leader and every ballot block, which are contiguous. */
async function readSlot(session: Session, slot: number): Promise<SlotRead> {
  const ls = session.lease.lockspace;
  const l = ls.layout;
  const [bytes] = (await session.device.io([{ kind: "read", offset: slotOffset(l, slot), length: (1 + l.hosts) * l.sectorSize }], session.lease.timeline.ioTimeoutMs)) as [Uint8Array];
  const where = `${ls.device.name} lease slot ${slot}`;
  const leader = decodeRecord(bytes.subarray(0, l.sectorSize), "leader", `${where} leader`);
  if (leader !== "empty" && leader.slot !== slot) throw new CorruptionError(`${where} leader`, `record names slot ${leader.slot}`);
  return { leader: leader === "empty" ? undefined : leader, ballots: parseBallots(session, slot, bytes.subarray(l.sectorSize)) };
}

function parseBallots(session: Session, slot: number, bytes: Uint8Array): (BallotRecord | undefined)[] {
  const { sectorSize, hosts } = session.lease.lockspace.layout;
  return Array.from({ length: hosts }, (_, index) => {
    const where = `${session.device.name} lease slot ${slot} ballot of host id ${index + 1}`;
    const ballot = decodeRecord(bytes.subarray(index * sectorSize, (index + 1) * sectorSize), "ballot", where);
    if (ballot === "empty") return undefined;
    if (ballot.slot !== slot || ballot.hostId !== index + 1) throw new CorruptionError(where, `record names slot ${ballot.slot}, host id ${ballot.hostId}`);
    return ballot;
  });
}

function highestAccepted(ballots: readonly (BallotRecord | undefined)[]): number {
  return ballots.reduce((max, b) => (b !== undefined && b.bal > 0 && b.lver > max ? b.lver : max), 0);
}

/**
 * Disk Paxos for one instance: phase 1 claims ballot number `mbal` and learns any value already
 * accepted; phase 2 accepts the value. Each phase writes our own block, then reads every block;
 * a higher ballot (or a later instance) anywhere means another proposer is ahead: back off.
 * Returns the value decided for the instance, or "contended".
 */
async function runBallot(
  session: Session,
  slot: number,
  instance: number,
  seen: readonly (BallotRecord | undefined)[],
  proposal: Owner,
): Promise<Owner | "contended"> {
  const { hosts } = session.lease.lockspace.layout;
  const hostId = session.lease.hostId;
  const atInstance = (b: BallotRecord | undefined) => (b !== undefined && b.lver === instance ? b : undefined);
  const maxMbal = seen.reduce((max, b) => Math.max(max, atInstance(b)?.mbal ?? 0), 0);
  // Ballot numbers are unique per host: ≡ host id (mod hosts + 1), and above every one seen.
  const mbal = (Math.floor(maxMbal / (hosts + 1)) + 1) * (hosts + 1) + hostId;
  const own = atInstance(seen[hostId - 1]);

  const phase1 = await ballotRound(session, slot, { lver: instance, mbal, bal: own?.bal ?? 0, inp: own === undefined ? { hostId: 0, generation: 0 } : { hostId: own.inpHostId, generation: own.inpGeneration } });
  if (phase1 === "contended") return backOff(session);
  // The value with the highest accepted ballot must be kept: it may already be decided.
  let value = proposal;
  let highestBal = 0;
  for (const b of phase1) {
    const block = atInstance(b);
    if (block !== undefined && block.bal > highestBal) {
      highestBal = block.bal;
      value = { hostId: block.inpHostId, generation: block.inpGeneration };
    }
  }
  requireValid(session.lease);
  const phase2 = await ballotRound(session, slot, { lver: instance, mbal, bal: mbal, inp: value });
  if (phase2 === "contended") return backOff(session);
  return value;
}

/** Writes our ballot block, reads all blocks; "contended" if anyone is at a higher ballot or instance. */
async function ballotRound(
  session: Session,
  slot: number,
  block: { lver: number; mbal: number; bal: number; inp: Owner },
): Promise<readonly (BallotRecord | undefined)[] | "contended"> {
  const l = session.lease.lockspace.layout;
  const record: BallotRecord = { kind: "ballot", slot, hostId: session.lease.hostId, lver: block.lver, mbal: block.mbal, bal: block.bal, inpHostId: block.inp.hostId, inpGeneration: block.inp.generation };
  const [bytes] = await session.device.io(
    [
      { kind: "write", offset: ballotOffset(l, slot, session.lease.hostId), data: encodeRecord(record, l.sectorSize) },
      { kind: "read", offset: ballotOffset(l, slot, 1), length: l.hosts * l.sectorSize },
    ],
    session.lease.timeline.ioTimeoutMs,
  );
  const ballots = parseBallots(session, slot, bytes!);
  const ahead = ballots.some((b, index) => b !== undefined && index + 1 !== session.lease.hostId && (b.lver > block.lver || (b.lver === block.lver && b.mbal > block.mbal)));
  return ahead ? "contended" : ballots;
}

async function backOff(session: Session): Promise<"contended"> {
  // Randomised so that two proposers do not keep pre-empting each other in lock step.
  await session.lease.clock.sleep(Math.floor(session.random() * session.lease.timeline.ioTimeoutMs) / 10 + 1);
  return "contended";
}
