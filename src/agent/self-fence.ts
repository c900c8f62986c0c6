/**
 * The agent fencing its own host (src/core/self-fencing.ts): when the planes it reaches itself
 * form a row of the strategy that calls for HA, for the grace period, it stops every VM whose lease
 * this host's lockd holds and releases those leases — so that the VMs start elsewhere at once, even
 * while this host is cut off from etcd but still renews its lease on shared storage.
 *
 * While it reaches the management cluster it follows the controller instead (a recovery request
 * for this host; see src/core/self-fencing.ts). Cut off from it, it cannot read the strategy or
 * maintenance any more, and keeps the last values it read (the default strategy before any).
 * What it fences comes from lockd, which needs no network.
 */
import type { Plane } from "../config/fitha-config.ts";
import type { Clock } from "../core/clock.ts";
import { selfFenceVerdict, type OwnPlane } from "../core/self-fencing.ts";
import { decodeStrategy, defaultStrategy, type Strategy } from "../core/strategy.ts";
import { errorMessage } from "../errors.ts";
import { logger } from "../log.ts";
import type { Keys } from "../store/keys.ts";
import type { Kv } from "../store/kv.ts";
import { maintenanceRecord, recoveryRequest } from "../store/records.ts";
import { followKey } from "../store/follow-key.ts";
import type { PrefixWatcher } from "../store/watcher.ts";
import type { VmActions } from "./vm-actions.ts";

const log = logger("agent");

/** How often the verdict is looked at (it changes with reachability, or when a grace period ends). */
export const selfFencePollMs = 500;

export interface HeldLeases {
  /** The VM leases this host's lockd holds (resource = VM UUID). */
  heldLeases(): Promise<ReadonlyArray<{ readonly vm: string; readonly slot: number }>>;
}

export interface SelfFenceOptions {
  readonly host: string;
  readonly management: Kv;
  readonly keys: Keys;
  readonly clock: Clock;
  readonly own: () => Readonly<Record<Plane, OwnPlane>>;
  readonly lockd: HeldLeases;
  readonly actions: VmActions;
  /** Called after a self-fencing, with what was stopped (an event, best effort). */
  readonly onFenced: (reason: string, vms: readonly string[]) => void;
}

export class SelfFence {
  #strategy: Strategy = defaultStrategy;
  #globalMaintenance = false;
  #hostMaintenance = false;
  /** Whether the controller's recovery request for this host's planes is there (as last read). */
  #recoveryRequested = false;
  /** Fenced in the current episode (until the verdict clears). */
  #fenced = false;
  /** The VMs the current episode stopped. */
  #fencedVms: readonly string[] = [];
  /** Whether the last attempt to ask lockd for its leases failed (its error is logged once per streak). */
  #lockdUnanswered = false;
  #stopping = false;
  readonly #watchers: PrefixWatcher[];
  readonly done: Promise<void>;

  constructor(readonly options: SelfFenceOptions) {
    const { keys, management: kv, clock } = options;
    this.#watchers = [
      followKey(kv, keys.strategy, decodeStrategy, clock, (value) => (this.#strategy = value ?? defaultStrategy)),
      followKey(kv, keys.maintenanceGlobal, maintenanceRecord, clock, (value) => (this.#globalMaintenance = value?.on === true)),
      followKey(kv, keys.maintenanceHost(options.host), maintenanceRecord, clock, (value) => (this.#hostMaintenance = value?.on === true)),
      // A request for lost storage follows lockd's own fencing, which stopped what it had to: only
      // one for this host's planes calls for stopping VMs here (and a stale storage one must not
      // stop VMs started here since, found by the simulator).
      followKey(kv, keys.recoveryRequest(options.host), recoveryRequest, clock, (value) => (this.#recoveryRequested = value?.cause === "planes")),
    ];
    this.done = this.#run();
  }

  async stop(): Promise<void> {
    this.#stopping = true;
    await this.done;
    await Promise.all(this.#watchers.map((w) => w.stop()));
  }

  async #run(): Promise<void> {
    const { clock, own, lockd, actions } = this.options;
    while (!this.#stopping) {
      await clock.sleep(selfFencePollMs);
      if (this.#stopping) return;
      const verdict = selfFenceVerdict(own(), this.#strategy, this.#globalMaintenance || this.#hostMaintenance, this.#recoveryRequested, clock.nowMs());
      if (!verdict.fence) {
        if (this.#fenced) this.#over();
        continue;
      }
      if (this.#fenced) continue;
      let leases: ReadonlyArray<{ vm: string; slot: number }>;
      try {
        leases = await lockd.heldLeases();
      } catch (error) {
        // Said once per streak: lockd may be down for minutes (its restarts), asked twice a second.
        if (!this.#lockdUnanswered) log.error("self-fencing: cannot ask lockd which leases this host holds; retrying until it answers", { error: errorMessage(error) });
        this.#lockdUnanswered = true;
        continue;
      }
      this.#lockdUnanswered = false;
      log.warn("self-fencing: stopping this host's HA VMs and releasing their leases", { reason: verdict.reason, vms: leases.map((l) => l.vm) });
      for (const lease of leases) {
        // In turn with any other action on the VM: a restart in place under way holds its lease
        // and would start the guest after a release made in between (found by the simulator).
        await actions.exclusive(lease.vm, () => actions.stop(lease.vm, lease.slot)).catch((error: unknown) => log.error("self-fencing: could not stop a VM", { vm: lease.vm, error: errorMessage(error) }));
      }
      this.#fenced = true;
      this.#fencedVms = leases.map((l) => l.vm);
      this.options.onFenced(verdict.reason, this.#fencedVms);
    }
  }

  /**
   * The episode is over (this host reaches what it should again). The VMs it stopped are no
   * longer "stopped by fitha" for the VM watch: one the controller did not recover elsewhere —
   * the partition may heal before the controller's own grace ends — starts here again, under its
   * lease; one recovered elsewhere has its lease held there, or its registry names another host.
   */
  #over(): void {
    log.info("self-fencing over: the VMs it stopped start here again unless they were recovered elsewhere", { vms: this.#fencedVms });
    for (const vm of this.#fencedVms) this.options.actions.forget(vm);
    this.#fenced = false;
    this.#fencedVms = [];
  }
}
