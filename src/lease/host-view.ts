/**
 * What this host knows about every host id's liveness, from its own reads of the delta area and
 * its own monotonic clock only (no clock sync between hosts: other hosts' timestamps are only
 * ever compared for equality).
 *
 * An incarnation (host id, generation) is dead for this observer when it has seen, through
 * successful reads, that incarnation's delta record unchanged for host-dead (8T + K, with the
 * owner's T from its record), or superseded (a newer generation, a clean release, a wiped
 * sector) for host-dead with the lockspace's largest T. Until then it is live. Silence is
 * measured from the end of the read that saw the last change to the start of the latest read
 * that saw none: both ends conservative, so the owner's own deadline (its last renewal start +
 * 8T) always falls at least K before this observer calls it dead.
 *
 * A failed read makes the observer blind: at its next good read every host's timers restart,
 * because an outage of its own is not evidence that others went silent (DESIGN §4.1 rule 1).
 */
import type { DeltaRecord } from "./records.ts";
import { timeline } from "./timeline.ts";

/** One slot of the delta area as read: a record, a never-written sector, or an unreadable one. */
export type DeltaSlot = DeltaRecord | "empty" | { readonly corrupt: string };

interface Observation {
  slot: DeltaSlot;
  /** End of the read that first showed the current content. */
  lastChangeAtMs: number;
  /** End of the read that first showed the current (generation, state). */
  incarnationSeenAtMs: number;
}

export type Liveness =
  | { readonly state: "live"; /** ms until it could be called dead, if silence continues; undefined if unknown */ readonly deadInMs: number | undefined }
  | { readonly state: "dead" };

export class HostView {
  readonly #observations = new Map<number, Observation>();
  #blind = true;
  #lastReadStartMs: number | undefined;

  constructor(
    readonly hosts: number,
    /** host-dead for an incarnation whose own T is no longer on disk: the lockspace's largest T. */
    readonly supersededDeadMs: number,
    readonly killBudgetMs: number,
  ) {}

  /** A successful read of the whole delta area (index 0 = host id 1), started and ended at the given times. */
  observe(slots: readonly DeltaSlot[], readStartMs: number, readEndMs: number): void {
    if (slots.length !== this.hosts) throw new RangeError(`observed ${slots.length} delta slots, lockspace has ${this.hosts}`);
    if (!(readEndMs >= readStartMs)) throw new RangeError(`read ended at ${readEndMs} before it started at ${readStartMs}`);
    slots.forEach((slot, index) => {
      const hostId = index + 1;
      const previous = this.#observations.get(hostId);
      if (previous === undefined || this.#blind) {
        this.#observations.set(hostId, { slot, lastChangeAtMs: readEndMs, incarnationSeenAtMs: readEndMs });
        return;
      }
      if (!sameContent(previous.slot, slot)) {
        previous.lastChangeAtMs = readEndMs;
        if (!sameIncarnation(previous.slot, slot)) previous.incarnationSeenAtMs = readEndMs;
        previous.slot = slot;
      }
    });
    this.#blind = false;
    this.#lastReadStartMs = readStartMs;
  }

  /** A failed or late read of the delta area. */
  blind(): void {
    this.#blind = true;
  }

  /** The latest content seen for `hostId`, if any read succeeded yet. */
  slot(hostId: number): DeltaSlot | undefined {
    return this.#observations.get(hostId)?.slot;
  }

  liveness(hostId: number, generation: number): Liveness {
    const silence = this.#silence(hostId, generation);
    if (silence === undefined) return { state: "live", deadInMs: undefined };
    return silence.silentMs >= silence.hostDeadMs ? { state: "dead" } : { state: "live", deadInMs: silence.hostDeadMs - silence.silentMs };
  }

  /** Every host id that has ever been written, as this observer sees it (for status displays). */
  summary(): HostSummary[] {
    const result: HostSummary[] = [];
    for (const [hostId, { slot }] of [...this.#observations].sort(([a], [b]) => a - b)) {
      if (slot === "empty") continue;
      if ("corrupt" in slot) {
        result.push({ hostId, hostName: undefined, generation: undefined, state: "unknown", silentMs: undefined });
        continue;
      }
      const silence = slot.state === "held" ? this.#silence(hostId, slot.generation) : undefined;
      let state: HostState = "free";
      if (slot.state === "held") {
        if (silence === undefined) state = "unknown";
        else if (silence.silentMs >= silence.hostDeadMs) state = "dead";
        else state = silence.silentMs >= timeline(slot.ioTimeoutMs, this.killBudgetMs).renewalWarnMs ? "failing" : "live";
      }
      result.push({ hostId, hostName: slot.hostName, generation: slot.generation, state, silentMs: silence?.silentMs });
    }
    return result;
  }

  /** How long incarnation (hostId, generation) has been seen silent, against its host-dead; undefined if unknowable. */
  #silence(hostId: number, generation: number): { silentMs: number; hostDeadMs: number } | undefined {
    const observation = this.#observations.get(hostId);
    const readStartMs = this.#lastReadStartMs;
    if (observation === undefined || readStartMs === undefined || this.#blind) return undefined;
    const { slot } = observation;
    if (typeof slot === "object" && "corrupt" in slot) return undefined;
    if (slot !== "empty" && slot.generation === generation && slot.state === "held") {
      return { silentMs: Math.max(0, readStartMs - observation.lastChangeAtMs), hostDeadMs: timeline(slot.ioTimeoutMs, this.killBudgetMs).hostDeadMs };
    }
    // This incarnation has not appeared in our reads yet: we know nothing of it.
    if (slot !== "empty" && slot.generation < generation) return undefined;
    return { silentMs: Math.max(0, readStartMs - observation.incarnationSeenAtMs), hostDeadMs: this.supersededDeadMs };
  }
}

export type HostState = "free" | "live" | "failing" | "dead" | "unknown";

export interface HostSummary {
  readonly hostId: number;
  readonly hostName: string | undefined;
  readonly generation: number | undefined;
  /**
   * free: released; live: renewed within its renewal-warn time (4T); failing: silent longer
   * than that, not yet dead; dead: silent for host-dead; unknown: corrupt record, or this
   * observer is blind.
   */
  readonly state: HostState;
  /** Silence observed so far, for held records this observer can judge. */
  readonly silentMs: number | undefined;
}

function sameContent(a: DeltaSlot, b: DeltaSlot): boolean {
  if (typeof a === "string" || typeof b === "string") return a === b;
  if ("corrupt" in a || "corrupt" in b) return "corrupt" in a && "corrupt" in b && a.corrupt === b.corrupt;
  return (
    a.generation === b.generation &&
    a.timestampMs === b.timestampMs &&
    a.state === b.state &&
    a.installId === b.installId &&
    a.hostName === b.hostName &&
    a.ioTimeoutMs === b.ioTimeoutMs
  );
}

function sameIncarnation(a: DeltaSlot, b: DeltaSlot): boolean {
  if (typeof a === "string" || typeof b === "string" || "corrupt" in a || "corrupt" in b) return sameContent(a, b);
  return a.generation === b.generation && a.state === b.state && a.installId === b.installId;
}
