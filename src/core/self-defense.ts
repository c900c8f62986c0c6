/**
 * Self-defense and self-recovery (seed 001, "More Concerns"): when a large share of the hosts
 * looks down at once, the likelier cause is the platform (a switch, etcd, the controller's own
 * network), and recovering "everything" would make things worse — so HA stops until most hosts
 * are healthy again. Two thresholds with a gap between them (settings.ts checks it), so the mode
 * does not flap around one value.
 */
import type { RuntimeSettings } from "./settings.ts";

export interface HostCounts {
  /** Hosts that count: registered, not in maintenance, with every plane known. */
  readonly total: number;
  /** In a row of the strategy that calls for HA (grace or not). */
  readonly down: number;
  /** Every plane up. */
  readonly healthy: number;
}

export type DefenseState = "normal" | "self-defense";

/** The next state and, when it changes, why. */
export function nextDefenseState(current: DefenseState, counts: HostCounts, settings: RuntimeSettings): { state: DefenseState; reason: string | undefined } {
  if (!(counts.down >= 0 && counts.healthy >= 0 && counts.down + counts.healthy <= counts.total)) {
    throw new RangeError(`host counts ${JSON.stringify(counts)}`);
  }
  if (counts.total === 0) return { state: current, reason: undefined };
  const downPercent = (100 * counts.down) / counts.total;
  const healthyPercent = (100 * counts.healthy) / counts.total;
  if (current === "normal" && downPercent >= settings.selfDefenseDownPercent) {
    return { state: "self-defense", reason: `${counts.down} of ${counts.total} hosts down (${Math.round(downPercent)} % ≥ ${settings.selfDefenseDownPercent} %): HA suspended` };
  }
  if (current === "self-defense" && healthyPercent >= settings.selfRecoveryHealthyPercent) {
    return { state: "normal", reason: `${counts.healthy} of ${counts.total} hosts healthy (${Math.round(healthyPercent)} % ≥ ${settings.selfRecoveryHealthyPercent} %): HA resumed` };
  }
  return { state: current, reason: undefined };
}
