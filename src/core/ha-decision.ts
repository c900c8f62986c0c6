/**
 * Whether a host's HA VMs must be recovered elsewhere now, and if not, why not. Pure: the plane
 * matrix row of the host, the strategy, maintenance, the cluster's mode and the time in; a
 * decision out, with the reason an operator reads in `fitha status` and the events.
 */
import { planes } from "../config/fitha-config.ts";
import type { Mode } from "../store/records.ts";
import type { HostPlanes } from "./plane-view.ts";
import { describeStates, haWanted, rowNumber, type PlaneStates, type Strategy } from "./strategy.ts";

export type NoHaReason = "healthy" | "strategy" | "grace" | "platform-fault" | "maintenance" | "self-defense";

export type HostDecision =
  | { readonly kind: "ha-needed"; readonly row: number; readonly planes: PlaneStates; readonly reason: string }
  | { readonly kind: "no-ha"; readonly why: NoHaReason; readonly row: number | null; readonly reason: string };

export interface DecisionInputs {
  readonly planes: HostPlanes;
  readonly strategy: Strategy;
  /** The cluster's mode (maintenance = global maintenance). */
  readonly mode: Mode;
  /** This host is in maintenance. */
  readonly hostMaintenance: boolean;
  readonly nowMs: number;
}

/** The known states of `host`'s planes, or undefined when any is unknown. */
export function knownStates(host: HostPlanes): PlaneStates | undefined {
  const { management, storage, service } = host;
  if (management.state === "unknown" || storage.state === "unknown" || service.state === "unknown") return undefined;
  return { management: management.state, storage: storage.state, service: service.state };
}

export function decideHost(inputs: DecisionInputs): HostDecision {
  const { planes: host, strategy, nowMs } = inputs;
  const states = knownStates(host);
  if (states === undefined) {
    const blind = planes.filter((plane) => host[plane].state === "unknown");
    return { kind: "no-ha", why: "platform-fault", row: null, reason: `the controller cannot reach the etcd cluster of the ${blind.join(" and ")} plane${blind.length > 1 ? "s" : ""}: no decision from silence there` };
  }
  const row = rowNumber(states);
  const described = `${describeStates(states)} (strategy row ${row})`;
  if (!haWanted(strategy, states)) {
    const healthy = row === 7;
    return { kind: "no-ha", why: healthy ? "healthy" : "strategy", row, reason: healthy ? "every plane up" : `${described}: the strategy says no HA` };
  }
  // The combination began when the last of its planes entered its current state.
  const rowSinceMs = Math.max(...planes.map((plane) => host[plane].sinceMs));
  const heldMs = nowMs - rowSinceMs;
  if (heldMs < strategy.graceMs) {
    return { kind: "no-ha", why: "grace", row, reason: `${described} for ${Math.round(heldMs)} ms; HA after the grace period of ${strategy.graceMs} ms` };
  }
  if (inputs.mode === "maintenance") return { kind: "no-ha", why: "maintenance", row, reason: `${described}, but the cluster is in maintenance` };
  if (inputs.hostMaintenance) return { kind: "no-ha", why: "maintenance", row, reason: `${described}, but the host is in maintenance` };
  if (inputs.mode === "self-defense") return { kind: "no-ha", why: "self-defense", row, reason: `${described}, but HA is suspended (self-defense: too many hosts down)` };
  return { kind: "ha-needed", row, planes: states, reason: `${described} for ${Math.round(heldMs)} ms, past the grace period of ${strategy.graceMs} ms` };
}
