/**
 * The active controller's decisions, as a pure step: the plane view, strategy, settings,
 * maintenance and time in; what to do out (events to append, recoveries to request, the mode to
 * record) — the way etcd's raft returns a Ready instead of doing I/O. The daemon (and the
 * simulator) carries the effects out and calls step again when anything changes or a grace
 * period may have run out (nextWakeMs).
 *
 * The core remembers what it last decided per host, so each change is one event, and asks for a
 * host's recovery once per episode: again only after the host was seen healthy in between.
 */
import { planes, type Plane } from "../config/fitha-config.ts";
import type { EventKind, Mode } from "../store/records.ts";
import { decideHost, knownStates, type HostDecision } from "./ha-decision.ts";
import type { HostPlanes, PlaneView } from "./plane-view.ts";
import { nextDefenseState, type DefenseState } from "./self-defense.ts";
import type { RuntimeSettings } from "./settings.ts";
import { haWanted, type PlaneStates, type Strategy } from "./strategy.ts";

export interface ControllerInputs {
  readonly view: PlaneView;
  readonly strategy: Strategy;
  readonly settings: RuntimeSettings;
  readonly globalMaintenance: boolean;
  readonly hostsInMaintenance: ReadonlySet<string>;
  /** Hosts with a recovery request already in etcd (written by an earlier leader, say). */
  readonly openRequests: ReadonlySet<string>;
  readonly nowMs: number;
}

export type ControllerEffect =
  | { readonly type: "event"; readonly kind: EventKind; readonly host: string | null; readonly reason: string }
  | { readonly type: "request-recovery"; readonly host: string; readonly planes: PlaneStates; readonly reason: string }
  /** The host is healthy again: its request (an episode) is over. */
  | { readonly type: "close-request"; readonly host: string }
  | { readonly type: "set-mode"; readonly mode: Mode; readonly reason: string }
  /** The host's planes or decision changed: for operators (`fitha status`). */
  | { readonly type: "host-state"; readonly host: string; readonly planes: HostPlanes; readonly decision: HostDecision };

export interface ControllerStep {
  readonly effects: readonly ControllerEffect[];
  readonly mode: Mode;
  readonly decisions: ReadonlyMap<string, HostDecision>;
  /** When a decision may change with no new input (a grace period ending); undefined if none. */
  readonly nextWakeMs: number | undefined;
}

export class ControllerCore {
  #defense: DefenseState = "normal";
  #mode: Mode | undefined;
  readonly #lastPlanes = new Map<string, Record<Plane, string>>();
  readonly #lastDecision = new Map<string, HostDecision["kind"] | `no-ha:${string}`>();
  /** What was last published per host (planes and decision), to publish changes only. */
  readonly #lastPublished = new Map<string, string>();
  /** Hosts whose recovery was requested in this episode (cleared once healthy). */
  readonly #requested = new Set<string>();
  readonly #blindPlanes = new Set<Plane>();

  /** Whether self-defense suspends HA (whatever maintenance makes of the mode). */
  get selfDefense(): boolean {
    return this.#defense === "self-defense";
  }

  step(inputs: ControllerInputs): ControllerStep {
    const { view, strategy, nowMs } = inputs;
    const effects: ControllerEffect[] = [];
    const event = (kind: EventKind, host: string | null, reason: string) => effects.push({ type: "event", kind, host, reason });

    for (const plane of planes) {
      const reachable = view.clusterReachable(plane);
      if (!reachable && !this.#blindPlanes.has(plane)) {
        this.#blindPlanes.add(plane);
        event("platform-fault", null, `the controller cannot reach the etcd cluster of the ${plane} plane: no HA decisions from its heartbeats`);
      } else if (reachable && this.#blindPlanes.delete(plane)) {
        event("platform-recovered", null, `the etcd cluster of the ${plane} plane is reachable again; its heartbeats count again from now`);
      }
    }

    const counted: Array<{ host: string; planes: HostPlanes }> = [];
    for (const host of view.hosts) {
      const hostPlanes = view.planes(host)!;
      this.#planeEvents(host, hostPlanes, event);
      if (!inputs.hostsInMaintenance.has(host)) counted.push({ host, planes: hostPlanes });
    }

    const mode = this.#nextMode(inputs, counted, event);
    if (mode !== this.#mode) {
      effects.push({ type: "set-mode", mode, reason: this.#modeReason(mode, inputs) });
      this.#mode = mode;
    }

    const decisions = new Map<string, HostDecision>();
    let nextWakeMs: number | undefined;
    for (const host of view.hosts) {
      const hostPlanes = view.planes(host)!;
      const decision = decideHost({ planes: hostPlanes, strategy, mode, hostMaintenance: inputs.hostsInMaintenance.has(host), nowMs });
      decisions.set(host, decision);
      const rowEndsGraceMs = Math.max(...planes.map((plane) => hostPlanes[plane].sinceMs)) + strategy.graceMs;
      // A row the strategy excludes is news only once it has lasted the grace period: planes of
      // a starting host come up one by one, through rows that mean nothing.
      const unsettled = decision.kind === "no-ha" && (decision.why === "grace" || decision.why === "strategy") && nowMs < rowEndsGraceMs;
      if (unsettled) nextWakeMs = nextWakeMs === undefined ? rowEndsGraceMs : Math.min(nextWakeMs, rowEndsGraceMs);
      if (decision.kind === "no-ha" && decision.why === "healthy") {
        this.#requested.delete(host);
        if (inputs.openRequests.has(host)) effects.push({ type: "close-request", host });
      }
      const key = decision.kind === "ha-needed" ? "ha-needed" : unsettled ? (`no-ha:${decision.why}-unsettled` as const) : (`no-ha:${decision.why}` as const);
      // Published when the planes or the kind of decision change (not the reason's running clock).
      const published = JSON.stringify([planes.map((plane) => [hostPlanes[plane].state, hostPlanes[plane].sinceMs]), key]);
      if (this.#lastPublished.get(host) !== published) {
        this.#lastPublished.set(host, published);
        effects.push({ type: "host-state", host, planes: hostPlanes, decision });
      }
      const previous = this.#lastDecision.get(host);
      this.#lastDecision.set(host, key);
      if (decision.kind === "ha-needed") {
        if (!this.#requested.has(host) && !inputs.openRequests.has(host)) {
          event("ha-needed", host, decision.reason);
          effects.push({ type: "request-recovery", host, planes: decision.planes, reason: decision.reason });
        }
        this.#requested.add(host);
      } else if (previous !== key && !unsettled && (decision.why === "strategy" || decision.why === "maintenance" || decision.why === "self-defense")) {
        // Why a host with planes down gets no HA is news once: the strategy excludes its row, or
        // maintenance or self-defense holds it back. (A platform fault is one cluster-wide event.)
        event("ha-not-needed", host, decision.reason);
      }
    }
    for (const host of [...this.#lastDecision.keys()]) if (!decisions.has(host)) this.#forget(host);
    return { effects, mode, decisions, nextWakeMs };
  }

  /**
   * The request for `host` could not be written: it counts as not made, so the next step asks
   * again (the caller retries by stepping).
   */
  requestFailed(host: string): void {
    this.#requested.delete(host);
  }

  #planeEvents(host: string, hostPlanes: HostPlanes, event: (kind: EventKind, host: string | null, reason: string) => void): void {
    const current = { management: hostPlanes.management.state, storage: hostPlanes.storage.state, service: hostPlanes.service.state };
    const previous = this.#lastPlanes.get(host);
    this.#lastPlanes.set(host, current);
    if (previous === undefined) return;
    for (const plane of planes) {
      if (previous[plane] === current[plane] || current[plane] === "unknown" || previous[plane] === "unknown") continue;
      event(current[plane] === "down" ? "plane-down" : "plane-up", host, `${plane} plane heartbeat ${current[plane] === "down" ? "lost" : "seen"}`);
    }
  }

  #nextMode(inputs: ControllerInputs, counted: ReadonlyArray<{ host: string; planes: HostPlanes }>, event: (kind: EventKind, host: string | null, reason: string) => void): Mode {
    // Self-defense counts only hosts whose every plane is known: a blind plane is a platform fault.
    const known = counted.map((h) => knownStates(h.planes)).filter((s): s is PlaneStates => s !== undefined);
    const counts = {
      total: known.length,
      down: known.filter((states) => haWanted(inputs.strategy, states)).length,
      healthy: known.filter((states) => planes.every((plane) => states[plane] === "up")).length,
    };
    const next = nextDefenseState(this.#defense, counts, inputs.settings);
    if (next.state !== this.#defense) {
      this.#defense = next.state;
      event(next.state === "self-defense" ? "self-defense-entered" : "self-defense-left", null, next.reason!);
    }
    if (inputs.globalMaintenance) return "maintenance";
    return this.#defense;
  }

  #modeReason(mode: Mode, inputs: ControllerInputs): string {
    if (mode === "maintenance") return "global maintenance is on";
    if (mode === "self-defense") return `self-defense: at least ${inputs.settings.selfDefenseDownPercent} % of hosts down`;
    return "HA active";
  }

  #forget(host: string): void {
    this.#lastDecision.delete(host);
    this.#lastPublished.delete(host);
    this.#lastPlanes.delete(host);
    this.#requested.delete(host);
  }
}
