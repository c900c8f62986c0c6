/**
 * The agent's own verdict on its host (DESIGN §5): it evaluates the same strategy as the
 * controller, from its side — which planes' clusters it reaches itself. When that is a row calling
 * for HA and has lasted the grace period, the controller (seeing the mirror image) is recovering
 * this host's VMs elsewhere; stopping them here and releasing their leases lets the others start
 * them at once instead of waiting for the leases to expire — and is what lets them start at all
 * while this host is cut off from every plane but still renews its lease (the seed's cases 3, 4).
 * Never in maintenance (seed: "ha_maintenance ON → not fencing").
 *
 * Its own view counts only while it cannot reach the management cluster (DESIGN §4.1). While it
 * can, the controller's decision is there to read: it fences when the controller has requested
 * the recovery of this host for its planes, and not otherwise — so a storage or service etcd
 * cluster lost for everyone (rows 4 and 6 for every agent, a platform fault for the controller)
 * stops nothing. (A request for lost lease storage follows lockd's fencing, which did the job.)
 */
import { planes, type Plane } from "../config/fitha-config.ts";
import { describeStates, haWanted, type PlaneStates, type Strategy } from "./strategy.ts";

export interface OwnPlane {
  readonly reachable: boolean;
  /** Since when (the agent's clock). */
  readonly sinceMs: number;
}

export type SelfFenceVerdict = { readonly fence: true; readonly reason: string } | { readonly fence: false; /** When to look again, if a grace period is running. */ readonly wakeAtMs: number | undefined };

/**
 * `recoveryRequested`: whether the controller's recovery request for this host's planes was there
 * at the agent's last look (it matters only while management is reachable).
 */
export function selfFenceVerdict(own: Readonly<Record<Plane, OwnPlane>>, strategy: Strategy, maintenance: boolean, recoveryRequested: boolean, nowMs: number): SelfFenceVerdict {
  if (maintenance) return { fence: false, wakeAtMs: undefined };
  if (own.management.reachable) {
    return recoveryRequested ? { fence: true, reason: "the controller requested the recovery of this host: its HA VMs are being recovered elsewhere" } : { fence: false, wakeAtMs: undefined };
  }
  const states: PlaneStates = { management: "down", storage: own.storage.reachable ? "up" : "down", service: own.service.reachable ? "up" : "down" };
  if (!haWanted(strategy, states)) return { fence: false, wakeAtMs: undefined };
  const sinceMs = Math.max(...planes.map((plane) => own[plane].sinceMs));
  if (nowMs - sinceMs < strategy.graceMs) return { fence: false, wakeAtMs: sinceMs + strategy.graceMs };
  return { fence: true, reason: `this host reaches ${describeStates(states)} for ${Math.round(nowMs - sinceMs)} ms (grace ${strategy.graceMs} ms): its HA VMs are being recovered elsewhere` };
}
