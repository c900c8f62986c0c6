/**
 * `fitha agent`'s control-plane half: registers this compute host (a lockspace host id from an
 * etcd transaction, its plane addresses and capacity), keeps one heartbeat per plane alive in
 * that plane's cluster (plane-heartbeat.ts), records which planes it reaches itself, and follows
 * the runtime settings (heartbeat interval and TTL change without a restart).
 *
 * With lease access (AgentEnvironment.leases) it also manages this host's VMs: reports their
 * states and restarts crashed HA VMs in place (vm-watch.ts), and carries out the controller's
 * start and stop orders (order-runner.ts).
 */
import { planes, type Plane } from "../config/fitha-config.ts";
import type { Clock } from "../core/clock.ts";
import { decodeSettings, defaultSettings, type RuntimeSettings } from "../core/settings.ts";
import { errorMessage } from "../errors.ts";
import { logger } from "../log.ts";
import { badValueEvent, appendEvent } from "../store/events.ts";
import { allocateHostId, maxHostIds } from "../store/host-ids.ts";
import type { Keys } from "../store/keys.ts";
import { KvError, type Kv } from "../store/kv.ts";
import { hostRecord, type EventRecord, type HostRecord, type Reachability } from "../store/records.ts";
import { readRecord } from "../store/typed.ts";
import { followKey } from "../store/follow-key.ts";
import type { PrefixWatcher } from "../store/watcher.ts";
import type { Hypervisor } from "../virt/hypervisor.ts";
import { ClockWatch } from "./clock-watch.ts";
import type { AgentMetrics } from "./agent-metrics.ts";
import { OrderRunner } from "./order-runner.ts";
import { FencingBridge, type LockdQuestions } from "./fencing-bridge.ts";
import { SelfFence, type HeldLeases } from "./self-fence.ts";
import { PlaneHeartbeat } from "./plane-heartbeat.ts";
import { VmActions } from "./vm-actions.ts";
import type { VmLeases } from "./vm-leases.ts";
import { VmWatch } from "./vm-watch.ts";

const log = logger("agent");

export interface AgentOptions {
  readonly host: string;
  readonly addresses: Readonly<Record<Plane, string>>;
  readonly agentVersion: string;
  /** Lockspace host ids go up to this (the lease file's host count). */
  readonly maxHostId?: number;
}

export interface AgentEnvironment {
  readonly clock: Clock;
  /** Wall clock, for the times written into records. */
  readonly now: () => Date;
  /** Each plane's cluster (all three may be one). */
  readonly kv: Readonly<Record<Plane, Kv>>;
  readonly keys: Keys;
  readonly hypervisor: Hypervisor;
  /**
   * This host's VM leases (lockd). Without them the agent manages no VMs — no state reports, no
   * orders, no restarts — and is only the control-plane half (tests and benches of that half).
   */
  readonly leases?: VmLeases;
  /**
   * This host's lockd: its fencing questions, bridged to the controller (fencing-bridge.ts), and
   * the leases it holds, for self-fencing (self-fence.ts, with `leases`). None: lockd decides
   * alone (it fences at its deadline) and the agent never fences its host.
   */
  readonly questions?: LockdQuestions & HeldLeases;
  /** Where heartbeats, orders, restarts and self-fencings are counted, and the heartbeats read at each scrape; none: not measured. */
  readonly metrics?: AgentMetrics;
}

export class Agent {
  #settings: RuntimeSettings = defaultSettings;
  readonly #reachable = new Map<Plane, boolean>();
  readonly #heartbeats: PlaneHeartbeat[] = [];
  #settingsWatch: PrefixWatcher | undefined;
  #reachabilityWrite: Promise<void> = Promise.resolve();
  #vmWatch: VmWatch | undefined;
  #orders: OrderRunner | undefined;
  #fencing: FencingBridge | undefined;
  #selfFence: SelfFence | undefined;
  #clockWatch: ClockWatch | undefined;
  /** Since when each plane has been reachable or not (the agent's clock), for self-fencing. */
  readonly #reachableSinceMs = new Map<Plane, number>();

  private constructor(
    readonly options: AgentOptions,
    readonly env: AgentEnvironment,
    readonly hostId: number,
  ) {}

  static async start(options: AgentOptions, env: AgentEnvironment): Promise<Agent> {
    const management = env.kv.management;
    const hostId = await allocateHostId(management, env.keys, options.host, options.maxHostId ?? maxHostIds, {
      now: env.now,
      onBadValue: (error) => void appendEvent(management, env.keys, badValueEvent(error, `agent@${options.host}`, env.now())).catch(() => undefined),
    });
    const agent = new Agent(options, env, hostId);
    await agent.#register();
    // Read before the first heartbeat, so that its lease has the configured TTL from the start.
    const stored = await readRecord(management, env.keys.settings, decodeSettings);
    if (stored !== undefined && "record" in stored) agent.#settings = stored.record;
    else if (stored !== undefined) log.error("ignoring bad runtime settings; using the defaults", { reason: stored.bad.message });
    agent.#settingsWatch = agent.#watchSettings();
    for (const plane of planes) {
      agent.#heartbeats.push(
        new PlaneHeartbeat({
          kv: env.kv[plane],
          keys: env.keys,
          plane,
          host: options.host,
          clock: env.clock,
          settings: () => agent.#settings,
          now: env.now,
          onReachability: (p, reachable) => agent.#onReachability(p, reachable),
          ...(env.metrics === undefined ? {} : { metrics: env.metrics }),
        }),
      );
    }
    // One VmActions for every VM action of this agent: actions on one VM never interleave, and
    // a stop by self-fencing is a stop by fitha for the watch (no restart in place).
    const actions = env.leases === undefined ? undefined : new VmActions(env.hypervisor, env.leases);
    if (actions !== undefined) {
      const vms = { host: options.host, kv: management, keys: env.keys, clock: env.clock, now: env.now, actions, ...(env.metrics === undefined ? {} : { metrics: env.metrics }) };
      agent.#vmWatch = new VmWatch(vms);
      agent.#orders = new OrderRunner({ ...vms, perHostLimit: () => agent.#settings.recoveryConcurrencyPerHost });
    }
    if (env.questions !== undefined) {
      agent.#fencing = new FencingBridge({ host: options.host, kv: env.kv, keys: env.keys, clock: env.clock, now: env.now, lockd: env.questions });
    }
    if (env.questions !== undefined && actions !== undefined) {
      agent.#selfFence = new SelfFence({
        host: options.host,
        management,
        keys: env.keys,
        clock: env.clock,
        own: () => agent.#ownPlanes(),
        lockd: env.questions,
        actions,
        onFenced: (reason, vms) => {
          env.metrics?.selfFenced();
          void agent.#event("self-fenced", `${reason}; stopped ${vms.length} VM(s)${vms.length > 0 ? `: ${vms.join(", ")}` : ""}`);
        },
      });
    }
    agent.#clockWatch = new ClockWatch({ clock: env.clock, now: env.now, onJump: (_jumpMs, reason) => void agent.#event("clock-jump", reason) });
    env.metrics?.collectFrom(() => agent.#heartbeats.map((h) => ({ plane: h.options.plane, reachable: h.reachable, ageMs: h.ageMs })));
    log.info("agent started", { host: options.host, host_id: hostId, manages_vms: env.leases !== undefined });
    return agent;
  }

  get settings(): RuntimeSettings {
    return this.#settings;
  }

  /** Which planes' clusters this agent reaches (its last heartbeat on each succeeded). */
  reachability(): Record<Plane, boolean> {
    return { management: this.#reachable.get("management") === true, storage: this.#reachable.get("storage") === true, service: this.#reachable.get("service") === true };
  }

  /**
   * Why a plane's heartbeat loop looks stuck, or undefined while every plane's completes rounds:
   * what systemd's watchdog keep-alives stand for (src/cli/systemd-notify.ts). The heartbeats are
   * what the controller judges this host by, so a wedged loop must be replaced before its TTL
   * runs out. A round is at most 4 etcd requests (each bounded by `requestTimeoutMs`), then a
   * sleep of at most the interval; one request timeout more is margin. An unreachable etcd is not
   * stuck: rounds fail within their deadlines and are retried, and a restart would not help.
   */
  heartbeatStall(requestTimeoutMs: number, nowMs = this.env.clock.nowMs()): string | undefined {
    const limitMs = this.#settings.heartbeatIntervalMs + 5 * requestTimeoutMs;
    for (const heartbeat of this.#heartbeats) {
      const silentMs = nowMs - heartbeat.lastRoundEndMs;
      if (silentMs > limitMs) return `the ${heartbeat.options.plane} plane's heartbeat loop has not finished a round for ${Math.round(silentMs)} ms (limit ${limitMs} ms)`;
    }
    return undefined;
  }

  async stop(): Promise<void> {
    // Orders first: one under way finishes (result written) before the rest stops.
    await this.#orders?.stop();
    await this.#fencing?.stop();
    await this.#selfFence?.stop();
    await this.#vmWatch?.stop();
    await this.#clockWatch?.stop();
    await Promise.all(this.#heartbeats.map((h) => h.stop()));
    await this.#settingsWatch?.stop();
    await this.#reachabilityWrite;
  }

  /** Writes this host's record; a re-registration keeps the first registration time. */
  async #register(): Promise<void> {
    const { kv, keys, hypervisor, now } = this.env;
    const key = keys.host(this.options.host);
    const existing = await readRecord(kv.management, key, hostRecord);
    const node = await hypervisor.nodeInfo();
    const record: HostRecord = {
      name: this.options.host,
      hostId: this.hostId,
      addresses: this.options.addresses,
      capacity: { cpus: node.cpus, memoryKiB: node.memoryKiB },
      agentVersion: this.options.agentVersion,
      registeredAt: existing !== undefined && "record" in existing ? existing.record.registeredAt : now().toISOString(),
    };
    await kv.management.put(key, JSON.stringify(record));
    if (existing === undefined) await this.#event("host-registered", `registered with lockspace host id ${this.hostId}, ${node.cpus} CPUs, ${Math.round(node.memoryKiB / 1024)} MiB`);
  }

  #watchSettings(): PrefixWatcher {
    const { kv, keys, clock } = this.env;
    return followKey(kv.management, keys.settings, decodeSettings, clock, (settings) => {
      const before = this.#settings;
      this.#settings = settings ?? defaultSettings;
      if (before.heartbeatIntervalMs !== this.#settings.heartbeatIntervalMs || before.heartbeatTtlMs !== this.#settings.heartbeatTtlMs) {
        log.info("heartbeat settings changed", { interval_ms: this.#settings.heartbeatIntervalMs, ttl_ms: this.#settings.heartbeatTtlMs });
        for (const heartbeat of this.#heartbeats) heartbeat.nudge();
      }
    });
  }

  /** Each plane as this agent reaches it, and since when; a plane never tried yet counts as reachable since start. */
  #ownPlanes(): Record<Plane, { reachable: boolean; sinceMs: number }> {
    const own = (plane: Plane) => ({ reachable: this.#reachable.get(plane) !== false, sinceMs: this.#reachableSinceMs.get(plane) ?? 0 });
    return { management: own("management"), storage: own("storage"), service: own("service") };
  }

  #onReachability(plane: Plane, reachable: boolean): void {
    if (this.#reachable.get(plane) !== reachable) this.#reachableSinceMs.set(plane, this.env.clock.nowMs());
    this.#reachable.set(plane, reachable);
    // Serialised, and each write carries the latest view: a late write never overwrites a newer one.
    this.#reachabilityWrite = this.#reachabilityWrite.then(async () => {
      const record: Reachability = { host: this.options.host, planes: this.reachability(), at: this.env.now().toISOString() };
      try {
        await this.env.kv.management.put(this.env.keys.reachability(this.options.host), JSON.stringify(record));
      } catch (error) {
        // Management unreachable: the controller sees that plane down anyway; the next change rewrites it.
        if (!(error instanceof KvError)) throw error;
        log.debug("could not record reachability", { error: error.message });
      }
    });
  }

  async #event(kind: EventRecord["kind"], reason: string): Promise<void> {
    const event: EventRecord = { time: this.env.now().toISOString(), kind, host: this.options.host, reason, by: `agent@${this.options.host}` };
    await appendEvent(this.env.kv.management, this.env.keys, event).catch((error: unknown) => log.warn("could not record an event", { kind, error: errorMessage(error) }));
  }
}
