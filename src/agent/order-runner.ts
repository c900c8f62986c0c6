/**
 * Carries out the controller's orders to this host (P/orders/HOST/UUID, records.ts VmOrder):
 *
 * - start: the VM's registry record (P/vms/UUID) → its lease, if HA (held by another live host:
 *   outcome "lease-held", nothing defined or started) → define the registry's XML → start.
 * - stop: destroy (not running is fine) → release the lease, if the VM has a slot.
 *
 * Then the outcome goes to P/order-results/HOST/UUID, and only after that is the order deleted:
 * an agent that dies in between runs the order again at its next start. That is harmless,
 * because every step is (vm-actions.ts): acquiring a lease this host holds, defining a domain
 * again, starting a VM that runs (skipped), destroying one that does not (no error), releasing
 * a lease not held (no-op). The result is written again, the same or newer.
 *
 * At most as many run at once as the controller may send to one host (the runtime setting
 * recovery_concurrency_per_host, at least minConcurrentOrders), and one per VM: an order for a VM
 * that has one running waits for it (the newest one only: an order key holds one order).
 */
import { errorMessage } from "../errors.ts";
import { logger } from "../log.ts";
import { appendEvent, badValueEvent } from "../store/events.ts";
import { KvError, type KvEntry } from "../store/kv.ts";
import { orderResult, vmOrder, vmRecord, type OrderResult, type VmOrder } from "../store/records.ts";
import { decodeEntry, readRecord } from "../store/typed.ts";
import { PrefixWatcher } from "../store/watcher.ts";
import type { AgentVmContext } from "./vm-actions.ts";

const log = logger("agent");

/**
 * Orders carried out at once, at least: a recovery onto this host starts several VMs, each mostly
 * waiting on lockd and libvirt. More when the per-host recovery limit is higher, so that the
 * operator's limit is what bounds a recovery, not a constant here.
 */
export const minConcurrentOrders = 4;
/** Writing a result and deleting its order: tries, and the wait between them (etcd briefly away). */
const maxFinishAttempts = 5;
const finishRetryDelayMs = 1_000;
/** OrderResult.reason's bound (records.ts). */
const maxReasonLength = 4096;

export interface OrderRunnerOptions extends AgentVmContext {
  /** The runtime setting recovery_concurrency_per_host now (the agent follows the settings). */
  readonly perHostLimit: () => number;
}

interface Order {
  readonly order: VmOrder;
  readonly key: string;
  /** The order key's revision: a rewrite of the key is a new order, a redelivery of this one is not. */
  readonly modRevision: bigint;
}

type Outcome = Pick<OrderResult, "outcome" | "reason" | "holder" | "freeInMs">;

export class OrderRunner {
  /** Per VM, the newest order not yet begun (bounded by the order keys: one per VM). */
  readonly #pending = new Map<string, Order>();
  /** Per VM, the revision of the order being carried out. */
  readonly #running = new Map<string, bigint>();
  readonly #tasks = new Set<Promise<void>>();
  readonly #watcher: PrefixWatcher;
  #stopping = false;

  constructor(readonly options: OrderRunnerOptions) {
    const { kv, keys, host, clock } = options;
    this.#watcher = new PrefixWatcher(
      kv,
      keys.ordersPrefix(host),
      {
        onSnapshot: (entries) => {
          for (const entry of entries) this.#offer(entry);
        },
        onRevision: (_revision, changes) => {
          // A deleted order is one this runner finished, or one the controller took back: nothing to do.
          for (const change of changes) if (change.type === "put") this.#offer(change);
        },
        onFailed: (error) => log.error("stopped following this host's orders; restart the agent", { error: errorMessage(error) }),
      },
      clock,
    );
  }

  /** Stops taking orders and waits for those under way (each bounded by the hypervisor's, lockd's and etcd's deadlines). */
  async stop(): Promise<void> {
    this.#stopping = true;
    await this.#watcher.stop();
    await Promise.all(this.#tasks);
  }

  #offer(entry: KvEntry): void {
    const { keys, host } = this.options;
    const decoded = decodeEntry(entry, vmOrder);
    if ("bad" in decoded || keys.order(host, decoded.record.vm) !== entry.key) {
      const problem = "bad" in decoded ? decoded.bad.problems.join("; ") : `the order is about VM ${decoded.record.vm}, not the one of its key`;
      log.error("ignoring a bad order", { key: entry.key, problem });
      if ("bad" in decoded) void appendEvent(this.options.kv, keys, badValueEvent(decoded.bad, `agent@${host}`, this.options.now())).catch(() => undefined);
      return;
    }
    const { vm } = decoded.record;
    // A snapshot after a watch resync delivers orders already known again.
    if (this.#running.get(vm) === entry.modRevision || this.#pending.get(vm)?.modRevision === entry.modRevision) return;
    this.#pending.set(vm, { order: decoded.record, key: entry.key, modRevision: entry.modRevision });
    this.#schedule();
  }

  #schedule(): void {
    for (const [vm, order] of this.#pending) {
      if (this.#stopping || this.#running.size >= Math.max(minConcurrentOrders, this.options.perHostLimit())) return;
      if (this.#running.has(vm)) continue;
      this.#pending.delete(vm);
      this.#running.set(vm, order.modRevision);
      const task = this.#run(order)
        .catch((error: unknown) => log.error("an order ended unexpectedly (a bug); it runs again at the next agent start", { vm, error: errorMessage(error) }))
        .finally(() => {
          this.#running.delete(vm);
          this.#tasks.delete(task);
          this.#schedule();
        });
      this.#tasks.add(task);
    }
  }

  async #run(entry: Order): Promise<void> {
    const { order } = entry;
    log.info("carrying out an order", { vm: order.vm, action: order.action, by: order.by, issued_at: order.issuedAt });
    const outcome = await this.options.actions.exclusive(order.vm, () => this.#carryOut(order)).catch((error: unknown): Outcome => ({ outcome: "failed", reason: errorMessage(error), holder: null, freeInMs: null }));
    this.options.metrics?.order(order.action, outcome.outcome);
    log[outcome.outcome === "failed" ? "warn" : "info"](`order ${outcome.outcome}`, { vm: order.vm, action: order.action, reason: outcome.reason, ...(outcome.holder === null ? {} : { holder: outcome.holder, free_in_ms: outcome.freeInMs }) });
    const reason = outcome.reason.length > maxReasonLength ? `${outcome.reason.slice(0, maxReasonLength - 3)}...` : outcome.reason;
    const result: OrderResult = { vm: order.vm, host: this.options.host, action: order.action, ...outcome, reason, at: this.options.now().toISOString() };
    await this.#finish(entry, result);
  }

  async #carryOut(order: VmOrder): Promise<Outcome> {
    const { kv, keys, actions } = this.options;
    const stored = await readRecord(kv, keys.vm(order.vm), vmRecord);
    if (stored !== undefined && "bad" in stored) return failed(`${stored.bad.source} holds a bad value: ${stored.bad.problems.join("; ")}`);
    if (order.action === "stop") {
      // Stopped even when it is not registered (any more): the controller wants it off this host.
      const detail = await actions.stop(order.vm, stored?.record.slot ?? null);
      return { outcome: "done", reason: detail, holder: null, freeInMs: null };
    }
    if (stored === undefined) return failed(`VM ${order.vm} is not registered (no ${keys.vm(order.vm)}): nothing to define`);
    const started = await actions.start(stored.record, "define");
    if (started.kind === "lease-held") {
      const when = started.freeInMs === null ? "" : `; free in ${started.freeInMs} ms at the earliest`;
      return { outcome: "lease-held", reason: `the VM's lease is held by ${started.holder}${when}`, holder: started.holder, freeInMs: started.freeInMs };
    }
    return { outcome: "done", reason: started.detail, holder: null, freeInMs: null };
  }

  /**
   * The result first, then the order (see the top of the file). The order is deleted only if it
   * is still the one carried out: a newer one in its key is pending here and runs next.
   */
  async #finish(entry: Order, result: OrderResult): Promise<void> {
    const { kv, keys, host, clock } = this.options;
    const value = JSON.stringify(result);
    orderResult(JSON.parse(value), "the order result to write");
    for (let attempt = 1; ; attempt++) {
      try {
        await kv.put(keys.orderResult(host, result.vm), value);
        const current = await kv.get(entry.key);
        if (current?.modRevision === entry.modRevision) await kv.delete(entry.key);
        return;
      } catch (error) {
        if (!(error instanceof KvError)) throw error;
        if (attempt === maxFinishAttempts || this.#stopping) {
          // The order stays in etcd: the next agent start carries it out again (harmlessly).
          log.error("cannot record an order's result; the order stays and runs again at the next agent start", { vm: result.vm, outcome: result.outcome, error: error.message });
          return;
        }
        await clock.sleep(finishRetryDelayMs);
      }
    }
  }
}

function failed(reason: string): Outcome {
  return { outcome: "failed", reason, holder: null, freeInMs: null };
}
