/**
 * One plane's heartbeat of this host: a key (keys.heartbeat) in that plane's own etcd cluster,
 * attached to an etcd lease of heartbeat_ttl_ms that the agent renews every
 * heartbeat_interval_ms. The key's existence is the signal: when this host (or its link on this
 * plane) fails, renewals stop, etcd expires the lease and deletes the key, and the controller's
 * watch sees the plane go down. A renewal is a keepalive, not a write: the steady state costs
 * the cluster no revisions.
 *
 * The heartbeat also tells the agent whether it reaches the plane's cluster itself (its own side
 * of the plane matrix): reachable while the last renewal succeeded.
 */
import type { Plane } from "../config/fitha-config.ts";
import type { Clock } from "../core/clock.ts";
import type { RuntimeSettings } from "../core/settings.ts";
import { errorMessage } from "../errors.ts";
import { logger } from "../log.ts";
import type { Keys } from "../store/keys.ts";
import { KvError, type Kv, type KvLease } from "../store/kv.ts";
import type { Heartbeat } from "../store/records.ts";
import type { AgentMetrics } from "./agent-metrics.ts";

const log = logger("agent");

export interface PlaneHeartbeatOptions {
  readonly kv: Kv;
  readonly keys: Keys;
  readonly plane: Plane;
  readonly host: string;
  readonly clock: Clock;
  /** The current settings (they may change while running: interval and TTL are read each round). */
  readonly settings: () => RuntimeSettings;
  readonly now: () => Date;
  /** Called when reachability changes (and once at the first result). */
  readonly onReachability: (plane: Plane, reachable: boolean, detail: string) => void;
  readonly metrics?: AgentMetrics;
}

export class PlaneHeartbeat {
  #lease: KvLease | undefined;
  /** The TTL `#lease` was asked for (etcd may grant more: whole seconds, a minimum). */
  #leaseAskedTtlMs = 0;
  #sequence = 0;
  #reachable: boolean | undefined;
  #stopping = false;
  #wake: (() => void) | undefined;
  /** When the last round ended (renewed or failed), on options.clock: the loop's progress. */
  #lastRoundEndMs: number;
  /** When the last successful renewal began; when this heartbeat began, before the first. */
  #renewedAtMs: number;
  readonly done: Promise<void>;

  constructor(readonly options: PlaneHeartbeatOptions) {
    this.#lastRoundEndMs = options.clock.nowMs();
    this.#renewedAtMs = options.clock.nowMs();
    this.done = this.#run();
  }

  get lastRoundEndMs(): number {
    return this.#lastRoundEndMs;
  }

  get reachable(): boolean {
    return this.#reachable === true;
  }

  /** Time since the start of the last successful renewal (since this heartbeat began, before the first). */
  get ageMs(): number {
    return this.options.clock.nowMs() - this.#renewedAtMs;
  }

  /** Renews at once (settings changed: a new TTL takes a new lease). */
  nudge(): void {
    this.#wake?.();
  }

  /** Stops renewing. The key is left to expire: an agent restarted within the TTL keeps its planes up. */
  async stop(): Promise<void> {
    this.#stopping = true;
    this.#wake?.();
    await this.done;
  }

  async #run(): Promise<void> {
    const { settings } = this.options;
    while (!this.#stopping) {
      const startMs = this.options.clock.nowMs();
      const ok = await this.#beat();
      this.#lastRoundEndMs = this.options.clock.nowMs();
      if (ok) this.#renewedAtMs = startMs;
      this.options.metrics?.heartbeat(this.options.plane, ok, this.#lastRoundEndMs - startMs);
      if (this.#stopping) return;
      // After a failure, retry sooner than a full interval, but not in a spin.
      const intervalMs = settings().heartbeatIntervalMs;
      await this.#sleep(ok ? intervalMs : Math.min(intervalMs, 1_000));
    }
  }

  /** One round: renew the lease, or (new TTL, lease gone, first round) put the key under a new one. */
  async #beat(): Promise<boolean> {
    const { kv, keys, plane, host } = this.options;
    const ttlMs = this.options.settings().heartbeatTtlMs;
    try {
      if (this.#lease !== undefined && this.#leaseAskedTtlMs === ttlMs) {
        if (await this.#lease.keepAliveOnce()) return this.#result(true, "renewed");
        log.warn("heartbeat lease expired; putting the heartbeat again", { plane, host });
      }
      const previous = this.#lease;
      this.#lease = undefined;
      const lease = await kv.grantLease(ttlMs);
      const value: Heartbeat = { host, plane, sentAt: this.options.now().toISOString(), sequence: this.#sequence++ };
      await kv.put(keys.heartbeat(plane, host), JSON.stringify(value), { leaseId: lease.id });
      this.#lease = lease;
      this.#leaseAskedTtlMs = ttlMs;
      // A replaced lease (new TTL) would keep nothing alive; revoking it is tidiness, so failures are ignored.
      if (previous !== undefined) await previous.revoke().catch(() => undefined);
      return this.#result(true, `heartbeat put under a lease of ${lease.ttlMs} ms`);
    } catch (error) {
      if (!(error instanceof KvError)) throw error;
      return this.#result(false, errorMessage(error));
    }
  }

  #result(reachable: boolean, detail: string): boolean {
    if (reachable !== this.#reachable) {
      this.#reachable = reachable;
      if (reachable) log.info(`${this.options.plane} plane reachable`, { detail });
      else log.warn(`${this.options.plane} plane unreachable: heartbeat failed`, { detail });
      this.options.onReachability(this.options.plane, reachable, detail);
    }
    return reachable;
  }

  async #sleep(ms: number): Promise<void> {
    await new Promise<void>((resolve) => {
      this.#wake = resolve;
      void this.options.clock.sleep(ms).then(resolve);
    });
    this.#wake = undefined;
  }
}
