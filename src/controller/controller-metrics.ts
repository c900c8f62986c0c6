/**
 * The controller's metrics (src/metrics/README.md lists them): what the leader holds anyway — its
 * plane view of every host, each host's decision, the recovery tasks, self-defense — read at each
 * scrape; leadership changes, fencing answers and finished recoveries counted where they happen.
 * A standby exports no per-host series (it follows nothing), and 0 for the leader's gauges. A
 * controller without metrics (the simulator, unit tests) calls none of this.
 */
import { planes, type Plane } from "../config/fitha-config.ts";
import type { HostDecision } from "../core/ha-decision.ts";
import type { HostPlanes } from "../core/plane-view.ts";
import { taskStates, type RecoveryTask } from "../core/recovery-tasks.ts";
import type { RuntimeSettings } from "../core/settings.ts";
import type { Counter, Histogram, MetricsRegistry } from "../metrics/registry.ts";
import { maxHostIds } from "../store/host-ids.ts";

/** What the leader reports at a scrape (Controller.readings()). */
export interface LeaderReadings {
  /** The controller's clock, that of the plane view's times. */
  readonly nowMs: number;
  readonly hosts: ReadonlyArray<{ readonly host: string; readonly planes: HostPlanes; readonly decision: HostDecision | undefined }>;
  /** Planes whose etcd cluster the leader does not reach (a platform fault: no decisions from their heartbeats). */
  readonly unreachablePlanes: ReadonlySet<Plane>;
  readonly selfDefense: boolean;
  readonly tasks: readonly RecoveryTask[];
  readonly settings: RuntimeSettings;
  /** Alarms waiting for the webhook; undefined without one. */
  readonly alarmQueueDepth: number | undefined;
}

/** What the metrics read of a controller at a scrape. */
export interface ControllerReadings {
  readonly leading: boolean;
  readonly stepsTaken: number;
  /** Undefined while not leading. */
  readings(): LeaderReadings | undefined;
}

const decisions = ["ha-needed", "healthy", "strategy", "grace", "platform-fault", "maintenance", "self-defense"] as const;

/** From a VM restarted at once (seconds) to a wait for its old host's lease (host-dead: minutes), to a task given up. */
const recoveryBucketsSeconds = [1, 2.5, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1800, 3600];

export class ControllerMetrics {
  readonly #leaderChanges: Counter<"change">;
  readonly #fencingAnswers: Counter<"answer">;
  readonly #recoverySeconds: Histogram<"result">;
  readonly #alarms: Counter<"outcome">;

  constructor(readonly registry: MetricsRegistry) {
    this.#leaderChanges = registry.counter({ name: "fitha_controller_leader_changes_total", help: "This controller's leadership changes: elected (it began to lead), lost (it stopped).", labels: ["change"], values: { change: ["elected", "lost"] } });
    this.#fencingAnswers = registry.counter({ name: "fitha_controller_fencing_answers_total", help: "Answers this controller gave to hosts' fencing questions, by answer.", labels: ["answer"], values: { answer: ["fence", "no-fence"] } });
    this.#alarms = registry.counter({ name: "fitha_controller_alarms_total", help: "Alarms this controller handled as leader, by outcome: delivered to the webhook, given_up after every retry, dropped (queue full).", labels: ["outcome"], values: { outcome: ["delivered", "given_up", "dropped"] } });
    this.#recoverySeconds = registry.histogram({ name: "fitha_controller_recovery_duration_seconds", help: "From a recovery task's creation to its end, by result (done: the VM runs on its new host; failed: given up).", labels: ["result"], values: { result: ["done", "failed"] }, buckets: recoveryBucketsSeconds });
  }

  /** Families read from `controller` at each scrape. */
  collectFrom(controller: ControllerReadings): void {
    const { registry } = this;
    // Each family reads afresh; a scrape renders them all synchronously, so they agree.
    const leader = () => controller.readings();
    registry.gauge({ name: "fitha_controller_is_leader", help: "1 while this controller leads (decides and recovers), else 0.", collect: (emit) => emit({}, controller.leading ? 1 : 0) });
    registry.counter({ name: "fitha_controller_decision_steps_total", help: "Decision steps this controller took while leading.", collect: (emit) => emit({}, controller.stepsTaken) });
    registry.gauge({
      name: "fitha_controller_host_plane_up",
      help: "Leader only: 1 while the host's heartbeat on the plane exists, 0 while it is absent; no series while the leader cannot reach that plane's cluster.",
      labels: ["host", "plane"],
      maxSeries: maxHostIds * planes.length,
      collect: (emit) => {
        for (const { host, planes: observed } of leader()?.hosts ?? []) {
          for (const plane of planes) if (observed[plane].state !== "unknown") emit({ host, plane }, observed[plane].state === "up" ? 1 : 0);
        }
      },
    });
    registry.gauge({
      name: "fitha_controller_host_plane_state_seconds",
      help: "Leader only: how long the host's heartbeat on the plane has been present (up) or absent (down) or unknown, as the leader has seen it (a new leader counts from its start).",
      labels: ["host", "plane"],
      maxSeries: maxHostIds * planes.length,
      collect: (emit) => {
        const readings = leader();
        for (const { host, planes: observed } of readings?.hosts ?? []) {
          for (const plane of planes) emit({ host, plane }, (readings!.nowMs - observed[plane].sinceMs) / 1000);
        }
      },
    });
    registry.gauge({
      name: "fitha_controller_host_decision",
      help: "Leader only: 1 for each host's current decision: ha-needed, or why not (healthy, strategy, grace, platform-fault, maintenance, self-defense).",
      labels: ["host", "decision"],
      values: { decision: decisions },
      maxSeries: maxHostIds,
      collect: (emit) => {
        for (const { host, decision } of leader()?.hosts ?? []) {
          if (decision !== undefined) emit({ host, decision: decision.kind === "ha-needed" ? "ha-needed" : decision.why }, 1);
        }
      },
    });
    registry.gauge({
      name: "fitha_controller_platform_fault",
      help: "Leader only: 1 while the leader cannot reach the plane's etcd cluster (no HA decisions from its heartbeats), else 0.",
      labels: ["plane"],
      values: { plane: planes },
      collect: (emit) => {
        const readings = leader();
        for (const plane of readings?.unreachablePlanes ?? []) emit({ plane }, 1);
      },
    });
    registry.gauge({ name: "fitha_controller_self_defense_active", help: "Leader only: 1 while self-defense suspends HA (too many hosts down at once), else 0.", collect: (emit) => emit({}, leader()?.selfDefense === true ? 1 : 0) });
    registry.gauge({
      name: "fitha_controller_recovery_tasks",
      help: "Leader only: recovery tasks in etcd by state; queued plus retrying is the queue, starting what counts against the limits.",
      labels: ["state"],
      values: { state: taskStates },
      collect: (emit) => {
        const counts = new Map<string, number>();
        for (const task of leader()?.tasks ?? []) counts.set(task.state, (counts.get(task.state) ?? 0) + 1);
        for (const [state, count] of counts) emit({ state }, count);
      },
    });
    registry.gauge({
      name: "fitha_controller_alarm_queue",
      help: "Leader only, with a webhook: alarms waiting for delivery (up to [alarms] queue_limit).",
      collect: (emit) => {
        const depth = leader()?.alarmQueueDepth;
        if (depth !== undefined) emit({}, depth);
      },
    });
    registry.gauge({
      name: "fitha_controller_recovery_concurrency_limit",
      help: "Leader only: recoveries allowed at once, cluster-wide (recovery_concurrency) and onto one host (recovery_concurrency_per_host).",
      labels: ["scope"],
      values: { scope: ["cluster", "per_host"] },
      collect: (emit) => {
        const settings = leader()?.settings;
        if (settings === undefined) return;
        emit({ scope: "cluster" }, settings.recoveryConcurrency);
        emit({ scope: "per_host" }, settings.recoveryConcurrencyPerHost);
      },
    });
  }

  alarmOutcome(outcome: "delivered" | "given-up" | "dropped"): void {
    this.#alarms.inc({ outcome: outcome === "given-up" ? "given_up" : outcome });
  }

  leaderChange(change: "elected" | "lost"): void {
    this.#leaderChanges.inc({ change });
  }

  fencingAnswered(answer: "fence" | "no-fence"): void {
    this.#fencingAnswers.inc({ answer });
  }

  /** A task reached done or failed, `seconds` after it was created. */
  recoveryEnded(result: "done" | "failed", seconds: number): void {
    this.#recoverySeconds.observe({ result }, seconds);
  }
}
