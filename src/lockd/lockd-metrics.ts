/**
 * lockd's metrics (src/metrics/README.md lists them): what it knows anyway — the host lease's
 * phase and age, the VM leases held, the lockspace's hosts — read at each scrape; renewals,
 * fencing questions, answers and fencings counted where they happen. A LockDaemon without
 * metrics (the simulator, unit tests) calls none of this.
 */
import type { Phase } from "../lease/delta-lease.ts";
import type { HostState } from "../lease/host-view.ts";
import { ioLatencyBucketsSeconds, type Counter, type Histogram, type MetricsRegistry } from "../metrics/registry.ts";
import type { LockDaemon } from "./lock-daemon.ts";
import type { Answer } from "./protocol.ts";

/** Where `fitha lockd` serves its metrics without --metrics-address (the agent's and controller's are 9731 and 9732). */
export const defaultLockdMetricsAddress = "127.0.0.1:9733";

const phases: readonly Phase[] = ["ok", "warn", "grace", "failed"];
const hostStates: readonly HostState[] = ["free", "live", "failing", "dead", "unknown"];
const answers: readonly Answer[] = ["fence", "no-fence"];


export class LockdMetrics {
  readonly #renewalSeconds: Histogram;
  readonly #renewals: Counter<"result">;
  readonly #questions: Counter;
  readonly #answers: Counter<"answer">;
  readonly #fencings: Counter;
  readonly #unstoppable: Counter;

  constructor(readonly registry: MetricsRegistry) {
    this.#renewalSeconds = registry.histogram({ name: "fitha_lockd_renewal_duration_seconds", help: "Time a successful host lease renewal took (its write and read on the lease storage).", buckets: ioLatencyBucketsSeconds });
    this.#renewals = registry.counter({ name: "fitha_lockd_renewals_total", help: "Host lease renewal attempts, by result (ok, failed: an I/O error or timeout).", labels: ["result"], values: { result: ["ok", "failed"] } });
    this.#questions = registry.counter({ name: "fitha_lockd_fencing_questions_total", help: "Fencing questions asked of the subscribers (renewals late: fence or no-fence?)." });
    this.#answers = registry.counter({ name: "fitha_lockd_fencing_answers_total", help: "Answers to fencing questions received, by answer.", labels: ["answer"], values: { answer: answers } });
    this.#fencings = registry.counter({ name: "fitha_lockd_fencings_total", help: "Times lockd fenced: stopped the VMs under its leases (answer fence, no answer in time, or the host lease lost)." });
    this.#unstoppable = registry.counter({ name: "fitha_lockd_fencing_unstopped_vms_total", help: "VMs that fencing could not stop (the hypervisor still showed them running; the watchdog is next)." });
  }

  /** Families read from `daemon` at each scrape. */
  collectFrom(daemon: LockDaemon): void {
    const { registry } = this;
    const nowMs = () => daemon.env.clock.nowMs();
    registry.gauge({
      name: "fitha_lockd_host_lease_phase",
      help: "1 for the host lease's current phase (ok, warn: renewals late, grace: kept by a no-fence answer, failed: lost), 0 for the others.",
      labels: ["phase"],
      values: { phase: phases },
      collect: (emit) => emit({ phase: daemon.lease.phase() }, 1),
    });
    registry.gauge({ name: "fitha_lockd_last_renewal_age_seconds", help: "Time since the start of the last successful host lease renewal.", collect: (emit) => emit({}, (nowMs() - daemon.lease.lastRenewalStartMs) / 1000) });
    registry.gauge({ name: "fitha_lockd_host_lease_valid_seconds", help: "Time left until the host lease's fail point (negative past it).", collect: (emit) => emit({}, (daemon.lease.validUntilMs() - nowMs()) / 1000) });
    registry.gauge({ name: "fitha_lockd_vm_leases_held", help: "VM leases this lockd holds (the VMs it would fence).", collect: (emit) => emit({}, daemon.heldLeaseCount) });
    registry.gauge({ name: "fitha_lockd_subscribers", help: "Connections subscribed to fencing questions (the agent: 0 means nobody can answer).", collect: (emit) => emit({}, daemon.subscriberCount) });
    registry.gauge({
      name: "fitha_lockd_lockspace_hosts",
      help: "Host ids that have joined the lockspace, by state as this lockd sees them on disk (live; failing: renewals late; dead: silent past host-dead; free: released; unknown).",
      labels: ["state"],
      values: { state: hostStates },
      collect: (emit) => {
        const counts = new Map<HostState, number>();
        for (const host of daemon.lease.view.summary()) counts.set(host.state, (counts.get(host.state) ?? 0) + 1);
        for (const [state, count] of counts) emit({ state }, count);
      },
    });
  }

  renewed(latencyMs: number): void {
    this.#renewals.inc({ result: "ok" });
    this.#renewalSeconds.observe({}, latencyMs / 1000);
  }

  renewalFailed(): void {
    this.#renewals.inc({ result: "failed" });
  }

  asked(): void {
    this.#questions.inc({});
  }

  answered(answer: Answer): void {
    this.#answers.inc({ answer });
  }

  fenced(unstopped: number): void {
    this.#fencings.inc({});
    this.#unstoppable.inc({}, unstopped);
  }
}
