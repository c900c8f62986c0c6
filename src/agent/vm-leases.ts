/**
 * The agent's access to VM leases: acquire before starting an HA VM, release after stopping it.
 * Two implementations: LockdVmLeases (this host's `fitha lockd`, over its unix socket) and
 * MemoryVmLeases (unit tests and the simulator, with leases placed on other hosts on demand).
 *
 * The qemu hook acquires the lease at every start anyway; the agent asks first so that a lease
 * held by another host comes back as such (holder, when it frees itself) instead of as libvirt's
 * opaque "hook script failed", and so that nothing is defined or started in that case.
 */
import { FithaError } from "../errors.ts";
import { socketTransport, type LockdTransport } from "../lockd/client.ts";

export type LeaseAcquisition =
  /** This host holds the lease now (it may have held it already: acquiring is idempotent). */
  | { readonly kind: "acquired" }
  /**
   * Another live host holds it: `holder` names it (host name, else "host id N"); `freeInMs` is
   * when it is dead at the earliest in lockd's view, null when lockd cannot tell yet.
   */
  | { readonly kind: "held"; readonly holder: string; readonly freeInMs: number | null };

export interface VmLeases {
  /** Fails (throws) when the lease service cannot answer or refuses for another reason than "held". */
  acquire(vm: string, slot: number): Promise<LeaseAcquisition>;
  /** True if this host held the lease and released it; false if it was not this host's. */
  release(vm: string, slot: number): Promise<boolean>;
}

/**
 * Deadline of one lockd request from the agent: an acquire of a free lease may take six I/O
 * batches of lockd's I/O timeout (src/cli/commands/hook.ts: 60 s at the defaults).
 */
export const lockdRequestTimeoutMs = 60_000;

/** OrderResult.freeInMs's bound (records.ts): a day; a longer wait is reported as a day. */
const maxFreeInMs = 86_400_000;

/** lockd's `owner` of a held lease (src/lockd/lock-daemon.ts writes it). */
interface LockdOwner {
  readonly host_id?: unknown;
  readonly host_name?: unknown;
  readonly dead_in_ms?: unknown;
}

export class LockdVmLeases implements VmLeases {
  constructor(
    /** Where lockd is, for messages: its socket path. */
    readonly where: string,
    readonly request: LockdTransport,
  ) {}

  /** This host's lockd over its socket; each request bounded by `timeoutMs` (lockdRequestTimeoutMs explains the 60 s an acquire may take). */
  static overSocket(socketPath: string, timeoutMs: number): LockdVmLeases {
    return new LockdVmLeases(socketPath, socketTransport(socketPath, timeoutMs));
  }

  async acquire(vm: string, slot: number): Promise<LeaseAcquisition> {
    const reply = await this.request({ op: "acquire", vm, slot });
    if (reply.ok) return { kind: "acquired" };
    if (reply.error !== "held") throw new FithaError(`lockd at ${this.where} refused to acquire the lease of ${vm} (slot ${slot}): ${reply.message}`);
    const owner = (typeof reply["owner"] === "object" && reply["owner"] !== null ? reply["owner"] : {}) as LockdOwner;
    const holder = typeof owner.host_name === "string" && owner.host_name !== "" ? owner.host_name : typeof owner.host_id === "number" ? `host id ${owner.host_id}` : "another host";
    const deadInMs = owner.dead_in_ms;
    const freeInMs = typeof deadInMs === "number" && Number.isFinite(deadInMs) ? Math.min(maxFreeInMs, Math.max(0, Math.round(deadInMs))) : null;
    return { kind: "held", holder, freeInMs };
  }

  async release(vm: string, slot: number): Promise<boolean> {
    const reply = await this.request({ op: "release", vm, slot });
    if (!reply.ok) throw new FithaError(`lockd at ${this.where} refused to release the lease of ${vm} (slot ${slot}): ${reply.message}`);
    return reply["released"] === true;
  }
}

/** Leases in memory: this host's, and other hosts' placed by the test. */
export class MemoryVmLeases implements VmLeases {
  /** Slot → holder; this host is `self`. */
  readonly #holders = new Map<number, { readonly vm: string; readonly host: string; readonly freeInMs: number | null }>();
  #failures = 0;
  /** Every call, in order, for tests to check: "acquire VM SLOT" or "release VM SLOT". */
  readonly calls: string[] = [];

  constructor(readonly self: string) {}

  async acquire(vm: string, slot: number): Promise<LeaseAcquisition> {
    this.calls.push(`acquire ${vm} ${slot}`);
    this.#takeFailure("acquire", vm);
    const holder = this.#holders.get(slot);
    if (holder !== undefined && holder.host !== this.self) return { kind: "held", holder: holder.host, freeInMs: holder.freeInMs };
    this.#holders.set(slot, { vm, host: this.self, freeInMs: null });
    return { kind: "acquired" };
  }

  async release(vm: string, slot: number): Promise<boolean> {
    this.calls.push(`release ${vm} ${slot}`);
    this.#takeFailure("release", vm);
    const holder = this.#holders.get(slot);
    if (holder === undefined || holder.host !== this.self || holder.vm !== vm) return false;
    this.#holders.delete(slot);
    return true;
  }

  /** Another host takes the lease in `slot` (a live one: it frees itself in `freeInMs`, if known). */
  holdElsewhere(vm: string, slot: number, host: string, freeInMs: number | null): void {
    this.#holders.set(slot, { vm, host, freeInMs });
  }

  /** Who holds the lease in `slot`, if anyone. */
  holderOf(slot: number): string | undefined {
    return this.#holders.get(slot)?.host;
  }

  /** The next `times` calls fail as an unreachable lockd would. */
  failNext(times = 1): void {
    this.#failures += times;
  }

  #takeFailure(operation: string, vm: string): void {
    if (this.#failures === 0) return;
    this.#failures -= 1;
    throw new FithaError(`cannot ${operation} the lease of ${vm}: injected failure`);
  }
}
