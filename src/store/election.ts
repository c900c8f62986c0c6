/**
 * Controller leadership, on the management cluster: at most one controller acts at a time, and
 * a standby takes over when the leader dies.
 *
 * The leader is whoever created keys.election; the key lives under the creator's lease (TTL L),
 * so it vanishes when the leader stops renewing. One key rather than etcd3's Election (a queue
 * of keys by create revision): any standby may take over, so no order among them is needed, one
 * `get` says who leads, and the same code runs on MemoryKv, where the loss of leadership can be
 * tested on virtual time with injected faults.
 *
 * What the leader knows: a keepalive started at local time t that succeeded means etcd keeps the
 * lease (and the key) until at least t + L by its clock: etcd received the request after t. So
 * the leader holds isLeader(now) true only while now < t + L − margin, for the t of its last
 * successful renewal (the grant, at first). The margin covers the two clocks running at slightly
 * different rates, and the time between etcd deleting the key and another controller acting on
 * it. Any doubt ends leadership at once: a renewal that fails, a lease etcd calls gone, a key
 * deleted or overwritten, or a renewal with no answer by t + L − margin. The leader then fires
 * onLost, revokes its lease (best effort: it frees the key for a standby at once) and campaigns
 * again like any standby.
 *
 * Timing, with L the granted TTL: renewals every (L − margin) / 3; a leader that dies (or is cut
 * off) loses its key L after its last renewal at most, plus etcd's expiry check (every 500 ms);
 * a standby watching the key then creates it within a few round trips: takeover within 2L. A cut
 * off leader stops believing margin before its key can vanish. (etcd extends every lease by its
 * TTL when its own raft leader changes: takeover is then later, never earlier.)
 */
import type { Clock } from "../core/clock.ts";
import { errorMessage, FithaError } from "../errors.ts";
import { logger } from "../log.ts";
import { Fields, type Codec } from "./codec.ts";
import { KvError, type Kv, type KvLease } from "./kv.ts";

const log = logger("election");

/** The value of keys.election. */
export interface LeaderRecord {
  /** The controller's name, as given to campaign(). */
  readonly name: string;
  /** The lease the key lives under: tells a controller its own key after a lost answer. */
  readonly leaseId: string;
}

export const leaderRecord: Codec<LeaderRecord> = (raw, source) => {
  const f = new Fields(source);
  const r = f.object(raw, "", ["name", "leaseId"]);
  return f.done({ name: f.string(r["name"], "name", { maxLength: 256 }), leaseId: f.string(r["leaseId"], "leaseId", { pattern: /^[0-9]{1,20}$/ }) });
};

export interface Leadership {
  /** True only while this process is sure it leads, at `nowMs` of the election's clock. */
  isLeader(nowMs: number): boolean;
}

export interface ElectionOptions {
  /** L: the lease TTL (etcd rounds it up to whole seconds, 2 s at least by default). */
  readonly ttlMs: number;
  /** Leadership ends this long before the lease could expire; 0 < margin ≤ L / 2. */
  readonly marginMs: number;
  readonly onElected?: () => void;
  /** Leadership ended for `reason` (not on resign()); the election campaigns again. */
  readonly onLost?: (reason: string) => void;
}

export class Election implements Leadership {
  /** Leadership holds until then (the election clock's ms); -Infinity when not leading. */
  #validUntilMs = -Infinity;
  /** keys.election's value while leading. */
  #value: string | undefined;
  #campaign: Promise<void> | undefined;
  #resigning = false;
  readonly #resigned = Promise.withResolvers<"resigned">();
  readonly #elected = Promise.withResolvers<Leadership>();

  constructor(
    private readonly kv: Kv,
    /** keys.election */
    private readonly key: string,
    private readonly clock: Clock,
    private readonly options: ElectionOptions,
  ) {
    if (!(options.ttlMs > 0 && options.marginMs > 0 && options.marginMs <= options.ttlMs / 2)) {
      throw new RangeError(`election: lease TTL ${options.ttlMs} ms and margin ${options.marginMs} ms (need 0 < margin ≤ TTL / 2)`);
    }
    // Rejected on resign(); nobody may be waiting.
    this.#elected.promise.catch(() => undefined);
  }

  isLeader(nowMs: number): boolean {
    return nowMs < this.#validUntilMs;
  }

  /** Campaigns as `name` until resign(); resolves on the first election. */
  campaign(name: string): Promise<Leadership> {
    if (this.#campaign !== undefined) throw new Error("election: campaign() was called already");
    this.#campaign = this.#run(name).catch((error: unknown) => {
      // Not a KvError (those are retried): a bug. Leadership must not outlive it.
      this.#validUntilMs = -Infinity;
      log.error(`election stopped: ${errorMessage(error)}`, { key: this.key });
      this.#elected.reject(error);
    });
    return this.#elected.promise;
  }

  /** Stops leading (at once) and campaigning; revokes the lease so that a standby takes over now. */
  async resign(): Promise<void> {
    this.#resigning = true;
    this.#validUntilMs = -Infinity;
    this.#resigned.resolve("resigned");
    this.#elected.reject(new FithaError(`election on ${this.key}: resigned before being elected`));
    await this.#campaign;
  }

  async #run(name: string): Promise<void> {
    while (!this.#resigning) {
      const lease = await this.#win(name);
      if (lease === undefined) return;
      const reason = this.#resigning ? "resigned" : await this.#lead(name, lease);
      this.#validUntilMs = -Infinity;
      if (reason !== "resigned") {
        log.warn(`lost the controller leadership: ${reason}`, { name, key: this.key });
        this.options.onLost?.(reason);
      }
      await lease.revoke().catch(() => undefined);
    }
  }

  /** Campaigns until this process holds the key (its lease) or resigns (undefined). */
  async #win(name: string): Promise<KvLease | undefined> {
    while (!this.#resigning) {
      try {
        // The range's revision, not the key's: a leader's key is written once and kept alive, so
        // its own revision soon falls out of etcd's history, and a watch from there would fail
        // at once, again and again (a standby spinning on etcd: found by the simulator).
        const range = await this.kv.getPrefix(this.key, { limit: 1 });
        if (!range.entries.some((entry) => entry.key === this.key)) {
          const lease = await this.#tryCreate(name);
          if (lease !== undefined) return lease;
        } else {
          await this.#waitForVacancy(range.revision);
        }
      } catch (error) {
        if (!(error instanceof KvError)) throw error;
        log.debug(`campaign: ${error.message}`, { name, key: this.key });
        await this.#pause(this.options.ttlMs / 4);
      }
    }
    return undefined;
  }

  /** Creates the key under a new lease; the lease if this process now leads. */
  async #tryCreate(name: string): Promise<KvLease | undefined> {
    const startedMs = this.clock.nowMs();
    const lease = await this.kv.grantLease(this.options.ttlMs);
    const value = JSON.stringify({ name, leaseId: lease.id } satisfies LeaderRecord);
    try {
      // A create whose first answer was lost (and was retried) finds the key: its own, by the lease.
      const created = (await this.kv.createIfAbsent(this.key, value, { leaseId: lease.id })) || (await this.kv.get(this.key))?.value === value;
      if (created && !this.#resigning) {
        this.#value = value;
        // The lease was granted after startedMs: etcd keeps it until startedMs + TTL at least.
        this.#validUntilMs = startedMs + lease.ttlMs - this.options.marginMs;
        log.info("elected controller leader", { name, key: this.key, leaseId: lease.id, ttlMs: lease.ttlMs });
        this.options.onElected?.();
        this.#elected.resolve(this);
        return lease;
      }
    } catch (error) {
      await lease.revoke().catch(() => undefined);
      throw error;
    }
    await lease.revoke().catch(() => undefined);
    return undefined;
  }

  /**
   * Waits until the key is deleted after `revision` (seen by a watch), for at most one TTL, or
   * resign(). A watch that breaks ends the wait after a pause, so that a watch failing at once
   * cannot turn the campaign into a busy loop.
   */
  async #waitForVacancy(revision: bigint): Promise<void> {
    const vacated = Promise.withResolvers<void>();
    let broken = false;
    const watch = await this.kv.watchPrefix(this.key, revision + 1n, {
      onChanges: (changes) => {
        if (changes.some((c) => c.key === this.key && c.type === "delete")) vacated.resolve();
      },
      onClosed: () => {
        broken = true;
        vacated.resolve();
      },
    });
    try {
      // The watch normally ends the wait; the timer bounds it should a deletion go unseen.
      await Promise.race([vacated.promise, this.clock.sleep(this.options.ttlMs), this.#resigned.promise]);
    } finally {
      await watch.cancel();
    }
    if (broken) await this.#pause(this.options.ttlMs / 4);
  }

  /** Renews the lease while sure of leading; returns why leadership ended. */
  async #lead(name: string, lease: KvLease): Promise<string> {
    const renewEveryMs = (lease.ttlMs - this.options.marginMs) / 3;
    for (;;) {
      if (await this.#pause(renewEveryMs)) return "resigned";
      const startedMs = this.clock.nowMs();
      const outcome = await Promise.race([
        this.#renew(lease),
        // A renewal without an answer must not keep leadership past its validity.
        this.clock.sleep(Math.max(0, this.#validUntilMs - startedMs)).then(() => `no answer from ${this.kv.name} before the lease could expire`),
        this.#resigned.promise,
      ]);
      if (outcome !== "renewed") return outcome;
      this.#validUntilMs = startedMs + lease.ttlMs - this.options.marginMs;
      log.trace("renewed the controller leadership", { name, leaseId: lease.id });
    }
  }

  /** One renewal: "renewed", or why not. */
  async #renew(lease: KvLease): Promise<string> {
    try {
      if (!(await lease.keepAliveOnce())) return `lease ${lease.id} expired or was revoked`;
      if ((await this.kv.get(this.key))?.value !== this.#value) return `${this.key} was deleted or overwritten`;
      return "renewed";
    } catch (error) {
      return `renewal failed: ${errorMessage(error)}`;
    }
  }

  /** Sleeps `ms` on the clock; true if resign() cut it short. */
  #pause(ms: number): Promise<boolean> {
    return Promise.race([this.clock.sleep(ms).then(() => false), this.#resigned.promise.then(() => true)]);
  }
}
