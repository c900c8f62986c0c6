/**
 * The watchdog: a process of its own beside lockd (`fitha watchdog`), which stops the VMs under
 * lockd's leases when lockd hangs or dies and does not come back in time — the job sanlock gives
 * wdmd and the hardware watchdog (a reset of the whole host). Here the host keeps running; only
 * the HA VMs are destroyed, through the hypervisor, as lockd's own fencing would.
 *
 * lockd feeds it through its state file (state-file.ts), rewritten after every renewal: the file
 * names the leases held and `validUntilMs`, the CLOCK_BOOTTIME at which they stop being valid
 * unless renewed (renewal-fail, or the end of a no-fence grace). The watchdog reads it every
 * `pollIntervalMs`; once the time passes without a newer file, it destroys every VM the file
 * names and keeps doing so on each poll while they run. lockd's own fencing point comes one I/O
 * timeout earlier (validUntil − T), so the watchdog acts only when lockd could not: hung
 * (SIGSTOP, stuck in the kernel), crashed and not restarted, or its fencing failed.
 *
 * Timeline at the defaults (T = 10 s, K = 60 s), counted from the last renewal start r:
 *   r + 70 s  lockd fences (if it runs)        r + 80 s  validUntil: the watchdog fences
 *   r + 140 s host-dead at the earliest for any other host: the watchdog has K = 60 s to finish.
 */
import type { Clock } from "../core/clock.ts";
import { logger } from "../log.ts";
import type { Hypervisor } from "../virt/hypervisor.ts";
import type { VmProcessKiller } from "../virt/qemu-processes.ts";
import { StateFileError, type LockdState, type StateStore } from "./state-file.ts";
import { stopVms } from "./vm-fencing.ts";

const log = logger("watchdog");

export interface WatchdogEnvironment {
  readonly clock: Clock;
  readonly store: StateStore;
  readonly hypervisor: Hypervisor;
  readonly bootId: string;
  /** When the hypervisor cannot stop a VM (libvirtd hung too): kills its process. */
  readonly killer?: VmProcessKiller;
}

/** What one look at the state found. */
export type WatchdogCheck =
  | { readonly state: "idle"; readonly why: string }
  | { readonly state: "armed"; readonly firesInMs: number; readonly vms: number }
  | { readonly state: "fired"; readonly stopped: readonly string[]; readonly failed: readonly string[] };

export class Watchdog {
  /** The last state read successfully: an unreadable file must not disarm the watchdog. */
  #lastGood: LockdState | undefined;
  /** VMs already confirmed stopped for this validity end: not destroyed again on every poll. */
  #stoppedFor: { validUntilMs: number; vms: Set<string> } | undefined;

  constructor(readonly env: WatchdogEnvironment) {}

  /** How long to wait before the next check: a quarter of lockd's T keeps the watchdog's lateness well inside K. */
  pollIntervalMs(maxMs: number): number {
    const state = this.#lastGood;
    return state === undefined ? maxMs : Math.max(10, Math.min(maxMs, state.incarnation.ioTimeoutMs / 4));
  }

  async check(): Promise<WatchdogCheck> {
    let state: LockdState | undefined;
    try {
      state = await this.env.store.read();
      this.#lastGood = state;
    } catch (error) {
      if (!(error instanceof StateFileError)) throw error;
      log.error("cannot read lockd's state; going on with the last one read", { reason: error.message });
      state = this.#lastGood;
    }
    if (state === undefined) return { state: "idle", why: "no lockd state" };
    // Boot-time readings of another boot mean nothing here; that boot's VMs are gone with it.
    if (state.bootId !== this.env.bootId) return { state: "idle", why: "the state is from an earlier boot" };
    if (state.leases.length === 0) return { state: "idle", why: "no leases held" };
    const nowMs = this.env.clock.nowMs();
    if (nowMs < state.validUntilMs) return { state: "armed", firesInMs: state.validUntilMs - nowMs, vms: state.leases.length };

    if (this.#stoppedFor?.validUntilMs !== state.validUntilMs) this.#stoppedFor = { validUntilMs: state.validUntilMs, vms: new Set() };
    const stoppedFor = this.#stoppedFor;
    const vms = state.leases.map((l) => l.resource).filter((vm) => !stoppedFor.vms.has(vm));
    if (vms.length === 0) return { state: "fired", stopped: [], failed: [] };
    log.error("lockd did not renew in time: stopping the VMs under its leases", { late_ms: Math.round(nowMs - state.validUntilMs), lockd_pid: state.pid, vms });
    const { hypervisor, clock, killer } = this.env;
    const outcome = await stopVms({ hypervisor, clock, retryDelayMs: state.incarnation.ioTimeoutMs / 4, ...(killer === undefined ? {} : { killer }) }, vms);
    for (const vm of outcome.stopped) stoppedFor.vms.add(vm);
    return { state: "fired", stopped: outcome.stopped, failed: outcome.failed.map((f) => f.vm) };
  }
}
