/**
 * The plane matrix as the controller sees it: for every registered host and every plane, up or
 * down and since when, from that plane's heartbeat keys — or unknown while the controller cannot
 * reach the plane's cluster (a platform fault: nothing may be concluded from silence there).
 *
 * Times are the controller's own clock, at the moment it learned of each change. A state it
 * did not see begin (at start, after a cluster came back) counts from when it learned of it: a
 * new leader restarts the grace periods instead of trusting history it did not witness, which
 * can only delay a recovery, never hasten one.
 */
import { planes, type Plane } from "../config/fitha-config.ts";

export type ObservedState = "up" | "down" | "unknown";

export interface PlaneObservation {
  readonly state: ObservedState;
  /** When this state began, as far as the controller knows (its clock). */
  readonly sinceMs: number;
}

export type HostPlanes = Readonly<Record<Plane, PlaneObservation>>;

export class PlaneView {
  /** Per host, per plane: whether its heartbeat key exists, and since when. */
  readonly #heartbeats = new Map<string, Map<Plane, { present: boolean; sinceMs: number }>>();
  /** Per plane: whether the controller reaches its cluster, and since when. */
  readonly #clusters = new Map<Plane, { reachable: boolean; sinceMs: number }>();

  constructor(nowMs: number) {
    for (const plane of planes) this.#clusters.set(plane, { reachable: false, sinceMs: nowMs });
  }

  /** The hosts the view knows, registered or heartbeating. */
  get hosts(): string[] {
    return [...this.#heartbeats.keys()].sort();
  }

  /** A registered host; its planes count as down (since now) until heartbeats are seen. */
  addHost(host: string, nowMs: number): void {
    if (this.#heartbeats.has(host)) return;
    this.#heartbeats.set(host, new Map(planes.map((plane) => [plane, { present: false, sinceMs: nowMs }])));
  }

  removeHost(host: string): void {
    this.#heartbeats.delete(host);
  }

  /** The heartbeat key of `host` on `plane` exists (put or renewed) or vanished (lease expired, deleted). */
  heartbeat(host: string, plane: Plane, present: boolean, nowMs: number): void {
    this.addHost(host, nowMs);
    const entry = this.#heartbeats.get(host)!.get(plane)!;
    if (entry.present !== present) {
      entry.present = present;
      entry.sinceMs = nowMs;
    }
  }

  /**
   * A full read of a plane's heartbeats (at start, or once its cluster is back): `present` are the
   * hosts whose key exists. States that differ from what the view held count from now.
   */
  resync(plane: Plane, present: ReadonlySet<string>, nowMs: number): void {
    for (const host of present) this.addHost(host, nowMs);
    for (const [host, byPlane] of this.#heartbeats) {
      const entry = byPlane.get(plane)!;
      const isPresent = present.has(host);
      if (entry.present !== isPresent) byPlane.set(plane, { present: isPresent, sinceMs: nowMs });
    }
  }

  /** Whether the controller reaches `plane`'s cluster. Going from unreachable to reachable should be followed by a resync. */
  cluster(plane: Plane, reachable: boolean, nowMs: number): void {
    const entry = this.#clusters.get(plane)!;
    if (entry.reachable !== reachable) this.#clusters.set(plane, { reachable, sinceMs: nowMs });
  }

  clusterReachable(plane: Plane): boolean {
    return this.#clusters.get(plane)!.reachable;
  }

  /** `host`'s planes; undefined for a host the view does not know. */
  planes(host: string): HostPlanes | undefined {
    const byPlane = this.#heartbeats.get(host);
    if (byPlane === undefined) return undefined;
    const observe = (plane: Plane): PlaneObservation => {
      const cluster = this.#clusters.get(plane)!;
      if (!cluster.reachable) return { state: "unknown", sinceMs: cluster.sinceMs };
      const entry = byPlane.get(plane)!;
      // Known only since both the cluster and the key were last seen as they are.
      return { state: entry.present ? "up" : "down", sinceMs: Math.max(entry.sinceMs, cluster.sinceMs) };
    };
    return { management: observe("management"), storage: observe("storage"), service: observe("service") };
  }
}
