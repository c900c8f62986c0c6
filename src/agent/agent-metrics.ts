/**
 * The agent's metrics (src/metrics/README.md lists them): each plane's heartbeat — its age and
 * whether the last attempt got through — read at each scrape; heartbeat renewals, orders carried
 * out, restarts in place and self-fencings counted where they happen. An agent without metrics
 * (the simulator, unit tests) calls none of this.
 */
import { planes, type Plane } from "../config/fitha-config.ts";
import { ioLatencyBucketsSeconds, type Counter, type Histogram, type MetricsRegistry } from "../metrics/registry.ts";
import type { OrderResult, VmOrder } from "../store/records.ts";

/** What the agent reports of each plane's heartbeat at a scrape. */
export interface HeartbeatReading {
  readonly plane: Plane;
  /** The last attempt got through to the plane's cluster. */
  readonly reachable: boolean;
  /** Since the start of the last successful renewal (since the heartbeat began, before the first). */
  readonly ageMs: number;
}

export type RestartResult = "started" | "lease-held" | "failed";

export class AgentMetrics {
  readonly #renewalSeconds: Histogram<"plane">;
  readonly #renewals: Counter<"plane" | "result">;
  readonly #orders: Counter<"action" | "outcome">;
  readonly #restarts: Counter<"result">;
  readonly #selfFencings: Counter;

  constructor(readonly registry: MetricsRegistry) {
    this.#renewalSeconds = registry.histogram({ name: "fitha_agent_heartbeat_renewal_duration_seconds", help: "Time a successful heartbeat renewal took (a keepalive of its etcd lease, or a new lease and put), by plane.", labels: ["plane"], values: { plane: planes }, buckets: ioLatencyBucketsSeconds });
    this.#renewals = registry.counter({ name: "fitha_agent_heartbeat_renewals_total", help: "Heartbeat renewal attempts by plane and result (failed: that plane's etcd cluster not reached).", labels: ["plane", "result"], values: { plane: planes, result: ["ok", "failed"] } });
    const actions: ReadonlyArray<VmOrder["action"]> = ["start", "stop"];
    const outcomes: ReadonlyArray<OrderResult["outcome"]> = ["done", "lease-held", "failed"];
    this.#orders = registry.counter({ name: "fitha_agent_orders_total", help: "The controller's orders carried out on this host, by action and outcome.", labels: ["action", "outcome"], values: { action: actions, outcome: outcomes } });
    const results: readonly RestartResult[] = ["started", "lease-held", "failed"];
    this.#restarts = registry.counter({ name: "fitha_agent_vm_restarts_total", help: "Restarts in place of HA VMs found down without a stop order from fitha, by result (lease-held: it is being recovered elsewhere).", labels: ["result"], values: { result: results } });
    this.#selfFencings = registry.counter({ name: "fitha_agent_self_fencings_total", help: "Times the agent fenced its own host (stopped the VMs under its leases)." });
  }

  /** Families read from the agent's heartbeats at each scrape. */
  collectFrom(heartbeats: () => readonly HeartbeatReading[]): void {
    const { registry } = this;
    registry.gauge({
      name: "fitha_agent_heartbeat_age_seconds",
      help: "Time since the start of the last successful heartbeat renewal on each plane (the heartbeat vanishes heartbeat_ttl_ms after it).",
      labels: ["plane"],
      values: { plane: planes },
      collect: (emit) => {
        for (const heartbeat of heartbeats()) emit({ plane: heartbeat.plane }, heartbeat.ageMs / 1000);
      },
    });
    registry.gauge({
      name: "fitha_agent_plane_reachable",
      help: "1 when the last heartbeat attempt on the plane got through to its etcd cluster, else 0.",
      labels: ["plane"],
      values: { plane: planes },
      collect: (emit) => {
        for (const heartbeat of heartbeats()) emit({ plane: heartbeat.plane }, heartbeat.reachable ? 1 : 0);
      },
    });
  }

  heartbeat(plane: Plane, ok: boolean, latencyMs: number): void {
    this.#renewals.inc({ plane, result: ok ? "ok" : "failed" });
    if (ok) this.#renewalSeconds.observe({ plane }, latencyMs / 1000);
  }

  order(action: VmOrder["action"], outcome: OrderResult["outcome"]): void {
    this.#orders.inc({ action, outcome });
  }

  restart(result: RestartResult): void {
    this.#restarts.inc({ result });
  }

  selfFenced(): void {
    this.#selfFencings.inc({});
  }
}
