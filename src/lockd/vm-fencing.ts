/**
 * Stopping the VMs under leases this host can no longer vouch for: destroy each through the
 * hypervisor, then look again — a VM counts as stopped only when the hypervisor shows it not
 * running (or gone). A VM that survives every attempt is reported, never assumed dead: its lease
 * then stays recorded so the watchdog keeps trying (src/lockd/watchdog.ts), and the lockspace's
 * kill budget K is what that escalation has before other hosts may take the lease.
 *
 * When the hypervisor cannot stop a VM (libvirtd hung, or the destroy failing), the VM's process
 * is killed directly, if a VmProcessKiller is given (src/virt/qemu-processes.ts).
 *
 * A lease's resource names its VM: the domain UUID (as the qemu hook acquires it) or name.
 */
import type { Clock } from "../core/clock.ts";
import { logger } from "../log.ts";
import { HypervisorError, type Hypervisor } from "../virt/hypervisor.ts";
import type { VmProcessKiller } from "../virt/qemu-processes.ts";

const log = logger("fencing");

/** Destroy attempts per VM before it is reported as not stopped. */
export const maxDestroyAttempts = 3;

export interface FenceOutcome {
  /** Destroyed now, or found not running. */
  readonly stopped: readonly string[];
  /** Still running (or unknown) after every attempt, with the last reason. */
  readonly failed: ReadonlyArray<{ readonly vm: string; readonly reason: string }>;
}

export interface FencingTools {
  readonly hypervisor: Hypervisor;
  readonly clock: Clock;
  /** Between destroy attempts of one VM. */
  readonly retryDelayMs: number;
  /** The escalation when the hypervisor cannot stop a VM; none in tests without processes. */
  readonly killer?: VmProcessKiller;
}

/**
 * Stops every VM of `vms`, one after the other (a hypervisor connection serialises its calls
 * anyway), retrying each up to maxDestroyAttempts times `retryDelayMs` apart, then killing its
 * process. Never throws: a failure is in the outcome. Each hypervisor call is bounded by the
 * hypervisor's own timeout, the kill by the killer's.
 */
export async function stopVms(tools: FencingTools, vms: readonly string[]): Promise<FenceOutcome> {
  const { hypervisor, clock, retryDelayMs, killer } = tools;
  const stopped: string[] = [];
  const failed: Array<{ vm: string; reason: string }> = [];
  for (const vm of vms) {
    let reason = "";
    for (let attempt = 1; attempt <= maxDestroyAttempts; attempt++) {
      const result = await stopOnce(hypervisor, vm);
      reason = result.reason;
      if (reason === "") break;
      // A hypervisor that does not answer will not answer the retry either: time is short.
      if (result.unanswered) break;
      log.warn("VM did not stop; retrying", { vm, attempt, reason });
      if (attempt < maxDestroyAttempts) await clock.sleep(retryDelayMs);
    }
    if (reason !== "" && killer !== undefined) {
      const killed = await killer.kill(vm).catch((error: unknown): { outcome: "failed"; reason: string } => ({ outcome: "failed", reason: String(error) }));
      log.error("the hypervisor could not stop a VM: killed its process directly", { vm, hypervisor_reason: reason, ...killed });
      // "none": no process runs for it, which is what fencing needs.
      if (killed.outcome !== "failed") reason = "";
      else reason = `${reason}; ${killed.reason}`;
    }
    if (reason === "") stopped.push(vm);
    else failed.push({ vm, reason });
  }
  if (failed.length > 0) log.error("VMs still running after fencing: the watchdog must stop them", { failed });
  return { stopped, failed };
}

/** One destroy and a check; reason "" when the VM is not running afterwards, else why it may be. */
async function stopOnce(hypervisor: Hypervisor, vm: string): Promise<{ reason: string; unanswered: boolean }> {
  const failure = (error: unknown) => ({
    reason: error instanceof Error ? error.message : String(error),
    unanswered: error instanceof HypervisorError && error.kind === "unanswered",
  });
  let notRunning = false;
  try {
    await hypervisor.destroy(vm);
  } catch (error) {
    // Not there, or not running: nothing to stop. The check below confirms either way.
    if (!(error instanceof HypervisorError && (error.kind === "no-domain" || error.kind === "invalid-state"))) return failure(error);
    notRunning = error.kind === "invalid-state";
  }
  try {
    const domain = await hypervisor.lookup(vm);
    // "crashed" covers both a dead guest and one whose qemu is preserved (on_crash=preserve); only
    // a refused destroy (nothing running) tells them apart.
    if (domain === undefined || domain.state === "shutoff" || (domain.state === "crashed" && notRunning)) return { reason: "", unanswered: false };
    return { reason: `still ${domain.state} after destroy`, unanswered: false };
  } catch (error) {
    return failure(error);
  }
}
