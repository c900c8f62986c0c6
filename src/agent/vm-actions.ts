/**
 * What the agent does to a VM on this host — start it under its lease, stop it and release the
 * lease — shared by the order runner (order-runner.ts) and the restart in place (vm-watch.ts),
 * one action per VM at a time so that the two never interleave on one VM.
 *
 * Every action is safe to repeat (an order re-run after a crash, a duplicate order): acquiring a
 * lease this host holds is a no-op in lockd, defining a domain again only replaces its definition,
 * a VM already running is not started again, destroying one that is not running is no error, and
 * releasing a lease this host does not hold releases nothing.
 */
import type { Clock } from "../core/clock.ts";
import { errorMessage, FithaError } from "../errors.ts";
import type { Keys } from "../store/keys.ts";
import type { Kv } from "../store/kv.ts";
import { logger } from "../log.ts";
import type { VmRecord } from "../store/records.ts";
import { describeVm } from "../store/vm-registry.ts";
import { HypervisorError, type DomainInfo, type Hypervisor } from "../virt/hypervisor.ts";
import type { AgentMetrics } from "./agent-metrics.ts";
import type { VmLeases } from "./vm-leases.ts";

const log = logger("agent");

/** What the agent's VM loops (vm-watch.ts, order-runner.ts) work with. */
export interface AgentVmContext {
  readonly host: string;
  /** The management cluster. */
  readonly kv: Kv;
  readonly keys: Keys;
  readonly clock: Clock;
  /** Wall clock, for the records' times. */
  readonly now: () => Date;
  readonly actions: VmActions;
  /** Where orders and restarts in place are counted; none: not measured. */
  readonly metrics?: AgentMetrics;
}

export type StartOutcome =
  | { readonly kind: "started" | "already-active"; readonly detail: string }
  | { readonly kind: "lease-held"; readonly holder: string; readonly freeInMs: number | null };

/**
 * "define": from the registry's XML (an order: the VM may not be defined here yet).
 * "in-place": the definition this host has (a restart after a crash: it is defined here).
 */
export type StartMode = "define" | "in-place";

export class VmActions {
  /** Per VM, the tail of its chain of actions; removed when the chain runs dry (bounded by the VMs acted on at once). */
  readonly #chains = new Map<string, Promise<unknown>>();
  /** VMs fitha stopped (a stop order), until fitha starts them again or they disappear: their shutoff is no crash. */
  readonly #stoppedByFitha = new Set<string>();

  constructor(
    readonly hypervisor: Hypervisor,
    readonly leases: VmLeases,
  ) {}

  /** Runs `action` once every earlier action on `vm` has finished. */
  async exclusive<T>(vm: string, action: () => Promise<T>): Promise<T> {
    const previous = this.#chains.get(vm) ?? Promise.resolve();
    const mine = previous.then(action);
    const tail = mine.catch(() => undefined);
    this.#chains.set(vm, tail);
    try {
      return await mine;
    } finally {
      if (this.#chains.get(vm) === tail) this.#chains.delete(vm);
    }
  }

  /** Whether an action on `vm` is running or waiting. */
  busy(vm: string): boolean {
    return this.#chains.has(vm);
  }

  stoppedByFitha(vm: string): boolean {
    return this.#stoppedByFitha.has(vm);
  }

  /** The VM is gone from this host: nothing to remember about it. */
  forget(vm: string): void {
    this.#stoppedByFitha.delete(vm);
  }

  /**
   * Starts the VM here, under its lease if it is HA (acquired first; held by another host: nothing
   * is defined or started). If the start fails after the lease was acquired, the lease is
   * released — but only once the domain is known not to be running: a running VM keeps its lease
   * whatever else went wrong. Call inside exclusive().
   */
  async start(record: VmRecord, mode: StartMode): Promise<StartOutcome> {
    const { hypervisor } = this;
    // fitha wants it running from now on: a later shutoff is no longer one of fitha's stops.
    this.#stoppedByFitha.delete(record.uuid);
    const current = await hypervisor.lookup(record.uuid);
    // Checked before the lease: a VM that runs here already holds it (or is not HA).
    if (current !== undefined && isActive(current)) return { kind: "already-active", detail: `${describeVm(record)} is already ${current.state} here` };
    if (mode === "in-place" && current === undefined) throw new FithaError(`${describeVm(record)} is no longer defined on ${hypervisor.uri}`);
    const slot = record.ha ? record.slot : null;
    if (slot !== null) {
      const lease = await this.leases.acquire(record.uuid, slot);
      if (lease.kind === "held") return { kind: "lease-held", holder: lease.holder, freeInMs: lease.freeInMs };
    }
    try {
      const domain = mode === "define" ? await hypervisor.define(record.xml) : current!;
      if (domain.uuid !== record.uuid) throw new FithaError(`the registry's XML of ${describeVm(record)} defines domain ${domain.uuid}, not ${record.uuid}`);
      if (isActive(domain)) return { kind: "already-active", detail: `${describeVm(record)} is already ${domain.state} here` };
      // A crashed domain may keep its qemu (on_crash=preserve): destroy it before the start.
      if (domain.state === "crashed") await this.#destroyIfActive(record.uuid);
      await hypervisor.start(record.uuid);
    } catch (error) {
      if (slot !== null) await this.#releaseAfterFailedStart(record, slot);
      throw error;
    }
    return { kind: "started", detail: `${describeVm(record)} started${slot === null ? "" : ` under its lease (slot ${slot})`}` };
  }

  /**
   * Stops the VM here (hard: destroy) and then releases its lease if it has a slot (HA now or
   * before: a lease taken while it was HA may still be held). A destroy that fails leaves the
   * lease held: the VM may still run. Call inside exclusive(), as start().
   */
  async stop(vm: string, slot: number | null): Promise<string> {
    // Before the destroy: the watch must not take the coming shutoff for a crash.
    this.#stoppedByFitha.add(vm);
    const stopped = await this.#destroyIfActive(vm);
    const done = stopped ? `destroyed ${vm}` : `${vm} was not running here`;
    if (slot === null) return done;
    const released = await this.leases.release(vm, slot);
    return `${done}; ${released ? `lease released (slot ${slot})` : `lease was not held by this host (slot ${slot})`}`;
  }

  /** True if it was running and is destroyed now; false if it was not running or not here. */
  async #destroyIfActive(vm: string): Promise<boolean> {
    try {
      await this.hypervisor.destroy(vm);
      return true;
    } catch (error) {
      if (error instanceof HypervisorError && (error.kind === "invalid-state" || error.kind === "no-domain")) return false;
      throw error;
    }
  }

  async #releaseAfterFailedStart(record: VmRecord, slot: number): Promise<void> {
    try {
      const domain = await this.hypervisor.lookup(record.uuid);
      if (domain !== undefined && isActive(domain)) {
        log.warn("start reported a failure but the VM runs: keeping its lease", { vm: record.uuid, state: domain.state });
        return;
      }
      await this.leases.release(record.uuid, slot);
    } catch (error) {
      // Kept: a lease held in vain blocks a start elsewhere until released; released in error, a VM could run twice.
      log.error("start failed and its lease could not be released; release it with fitha lease release", { vm: record.uuid, slot, error: errorMessage(error) });
    }
  }
}

/** Whether the domain has a qemu (running or paused): it needs no start. */
function isActive(domain: DomainInfo): boolean {
  return domain.state === "running" || domain.state === "paused";
}
