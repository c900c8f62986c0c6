/**
 * `fitha controller`: three run, one leads (src/store/election.ts). The leader follows etcd —
 * registered hosts, every plane's heartbeats, strategy, settings, maintenance, open recovery
 * requests — into the pure ControllerCore, and carries out what it returns: events, recovery
 * requests, the cluster's mode. Before every write it checks that it still leads; a term ends the
 * moment leadership is in doubt, and everything it built is dropped (a new term starts from a
 * fresh read, and restarts every grace period from what it sees itself).
 */
import { planes, type Plane } from "../config/fitha-config.ts";
import type { Clock } from "../core/clock.ts";
import { ControllerCore, type ControllerEffect } from "../core/controller-core.ts";
import type { HostDecision } from "../core/ha-decision.ts";
import { PlaneView } from "../core/plane-view.ts";
import { decodeSettings, defaultSettings, type RuntimeSettings } from "../core/settings.ts";
import { decodeStrategy, defaultStrategy, type Strategy } from "../core/strategy.ts";
import { errorMessage } from "../errors.ts";
import { logger } from "../log.ts";
import type { Codec } from "../store/codec.ts";
import { Election } from "../store/election.ts";
import { appendEvent, badValueEvent } from "../store/events.ts";
import { hostOfKey, type Keys } from "../store/keys.ts";
import { KvError, type Kv, type KvChange, type KvEntry } from "../store/kv.ts";
import { maintenanceRecord, recoveryRequest, type EventRecord, type HostStateRecord, type ModeRecord, type RecoveryRequest } from "../store/records.ts";
import { decodeEntry } from "../store/typed.ts";
import { PrefixWatcher } from "../store/watcher.ts";
import { AlarmRelay } from "../alarms/relay.ts";
import type { AlarmTransport } from "../alarms/delivery-queue.ts";
import type { ControllerMetrics, ControllerReadings, LeaderReadings } from "./controller-metrics.ts";
import { FencingResponder } from "./fencing-responder.ts";
import { RecoveryExecutor } from "./recovery.ts";

const log = logger("controller");

export interface ControllerOptions {
  readonly name: string;
  /** Leadership lease TTL: a standby takes over within twice this after the leader dies. */
  readonly electionTtlMs: number;
  /** How often the leader checks each plane's cluster answers (a silent cluster is a platform fault). */
  readonly probeIntervalMs: number;
}

export interface ControllerEnvironment {
  readonly clock: Clock;
  readonly now: () => Date;
  readonly kv: Readonly<Record<Plane, Kv>>;
  readonly keys: Keys;
  /** Where the leader sends alarms (src/alarms/); none: the event log only. */
  readonly alarms?: { readonly transport: AlarmTransport; readonly queueLimit: number };
  /** Where leadership changes, fencing answers and recoveries are counted, and the leader's state read at each scrape; none: not measured. */
  readonly metrics?: ControllerMetrics;
}

/** Changes that come close together are decided on together: one step per burst. */
const stepDelayMs = 20;

export class Controller implements ControllerReadings {
  readonly election: Election;
  #term: Term | undefined;
  #stopped = false;
  /** Decision steps taken while leading, all terms (for tests and metrics). */
  stepsTaken = 0;

  constructor(
    readonly options: ControllerOptions,
    readonly env: ControllerEnvironment,
  ) {
    // The margin covers clock-rate differences and the time for etcd to delete the key; a fifth
    // of the TTL, at least 500 ms.
    const marginMs = Math.min(options.electionTtlMs / 2, Math.max(500, options.electionTtlMs / 5));
    this.election = new Election(env.kv.management, env.keys.election, env.clock, {
      ttlMs: options.electionTtlMs,
      marginMs,
      onElected: () => this.#startTerm(),
      onLost: (reason) => this.#endTerm(reason),
    });
    env.metrics?.collectFrom(this);
  }

  /** Campaigns; leads whenever elected, until stop(). */
  start(): void {
    void this.election.campaign(this.options.name).catch((error: unknown) => {
      if (!this.#stopped) log.error("the election stopped", { error: errorMessage(error) });
    });
  }

  get leading(): boolean {
    return this.election.isLeader(this.env.clock.nowMs());
  }

  /** The current term's state, for metrics; undefined while not leading. */
  readings(): LeaderReadings | undefined {
    return this.leading ? this.#term?.readings() : undefined;
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    await this.#term?.stop();
    this.#term = undefined;
    await this.election.resign();
  }

  #startTerm(): void {
    if (this.#stopped) return;
    log.info("leading: this controller decides now", { name: this.options.name });
    this.env.metrics?.leaderChange("elected");
    this.#term = new Term(this);
    void this.#term.event("leader-elected", null, `controller ${this.options.name} leads`);
  }

  #endTerm(reason: string): void {
    const term = this.#term;
    this.#term = undefined;
    if (term === undefined) return;
    log.warn("no longer leading: stopped deciding", { name: this.options.name, reason });
    this.env.metrics?.leaderChange("lost");
    void term.stop();
  }
}

/** One term of leadership: everything the leader follows and decides, dropped when it ends. */
class Term {
  readonly view: PlaneView;
  readonly core = new ControllerCore();
  strategy: Strategy = defaultStrategy;
  settings: RuntimeSettings = defaultSettings;
  globalMaintenance = false;
  readonly hostsInMaintenance = new Set<string>();
  readonly openRequests = new Set<string>();
  readonly registered = new Set<string>();
  /** Per plane, the hosts whose heartbeat key exists (registered or not yet). */
  readonly present = new Map<Plane, Set<string>>(planes.map((plane) => [plane, new Set<string>()]));
  readonly #watchers: PrefixWatcher[] = [];
  readonly #heartbeatWatchers = new Map<Plane, PrefixWatcher>();
  #stopped = false;
  /** A step is scheduled (on the clock: the simulator runs this on virtual time). */
  #stepPending = false;
  /** When the pending wake-up for a grace period is due; a later step replaces it. */
  #wakeAtMs: number | undefined;
  #stepping: Promise<void> = Promise.resolve();
  readonly #probes: Promise<void>;
  readonly recovery: RecoveryExecutor;
  readonly fencing: FencingResponder;
  readonly alarms: AlarmRelay | undefined;
  /** Hosts that may receive recovered VMs: healthy, not in maintenance, and HA active. */
  #eligible: ReadonlySet<string> = new Set();
  /** Each host's decision at the last step. */
  #decisions: ReadonlyMap<string, HostDecision> = new Map();
  /** Per source of deadlines (fencing events, recovery tasks), the pending wake-up: the earliest only. */
  readonly #deadlineWakeAtMs = new Map<string, number>();

  constructor(readonly controller: Controller) {
    const { env } = controller;
    this.view = new PlaneView(env.clock.nowMs());
    const { keys } = env;
    this.#follow(keys.hostsPrefix, (key, value) => this.#onHost(key, value));
    this.#follow(keys.strategy, (key, value) => this.#onStrategy(key, value));
    this.#follow(keys.settings, (key, value) => this.#onSettings(key, value));
    this.#follow(keys.maintenanceGlobal, (key, value) => this.#onMaintenance(key, value));
    this.#follow(keys.maintenanceHostsPrefix, (key, value) => this.#onMaintenance(key, value));
    this.#follow(keys.recoveryRequestsPrefix, (key, value) => this.#onRequest(key, value));
    for (const plane of planes) this.#followHeartbeats(plane);
    this.#probes = this.#probeClusters();
    this.recovery = new RecoveryExecutor({
      kv: env.kv.management,
      keys,
      clock: env.clock,
      now: env.now,
      name: controller.options.name,
      leading: () => this.#leading,
      settings: () => this.settings,
      eligibleHosts: () => this.#eligible,
      heldSources: () => this.hostsInMaintenance,
      changed: () => this.#schedule(),
      ...(env.metrics === undefined ? {} : { metrics: env.metrics }),
    });
    this.fencing = new FencingResponder({
      kv: env.kv,
      keys,
      clock: env.clock,
      now: env.now,
      name: controller.options.name,
      leading: () => this.#leading,
      registeredHosts: () => this.registered,
      changed: () => this.#schedule(),
      ...(env.metrics === undefined ? {} : { metrics: env.metrics }),
    });
    const alarms = env.alarms;
    const metrics = env.metrics;
    this.alarms =
      alarms === undefined
        ? undefined
        : new AlarmRelay({ kv: env.kv.management, keys, clock: env.clock, now: env.now, name: controller.options.name, leading: () => this.#leading, ...alarms, ...(metrics === undefined ? {} : { onOutcome: (outcome) => metrics.alarmOutcome(outcome) }) });
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    await Promise.all([...this.#watchers, ...this.#heartbeatWatchers.values()].map((w) => w.stop()));
    await this.recovery.stop();
    await this.fencing.stop();
    await this.alarms?.stop();
    await this.#probes;
    await this.#stepping;
  }

  get #leading(): boolean {
    return !this.#stopped && this.controller.leading;
  }

  readings(): LeaderReadings {
    return {
      nowMs: this.controller.env.clock.nowMs(),
      hosts: this.view.hosts.map((host) => ({ host, planes: this.view.planes(host)!, decision: this.#decisions.get(host) })),
      unreachablePlanes: new Set(planes.filter((plane) => !this.view.clusterReachable(plane))),
      selfDefense: this.core.selfDefense,
      tasks: [...this.recovery.tasks.values()].map((held) => held.record),
      settings: this.settings,
      alarmQueueDepth: this.alarms?.queue.depth,
    };
  }

  /**
   * Follows one key or prefix of the management cluster: `apply` gets every key's value (undefined
   * once deleted); a snapshot first clears what the prefix held.
   */
  #follow(prefix: string, apply: (key: string, value: KvEntry | undefined) => void): void {
    const { env } = this.controller;
    const held = new Set<string>();
    this.#watchers.push(
      new PrefixWatcher(
        env.kv.management,
        prefix,
        {
          onSnapshot: (entries) => {
            for (const key of held) if (!entries.some((e) => e.key === key)) apply(key, undefined);
            held.clear();
            for (const entry of entries) {
              held.add(entry.key);
              apply(entry.key, entry);
            }
            this.#schedule();
          },
          onRevision: (_revision, changes) => {
            for (const change of changes) {
              if (change.type === "put") held.add(change.key);
              else held.delete(change.key);
              apply(change.key, change.type === "put" ? entryOf(change) : undefined);
            }
            this.#schedule();
          },
          onFailed: (error) => log.error("stopped following etcd; leadership should end", { prefix, error: errorMessage(error) }),
        },
        env.clock,
      ),
    );
  }

  /** A plane's heartbeats; its cluster counts as reachable once a full read of them is in. */
  #followHeartbeats(plane: Plane): void {
    const { env } = this.controller;
    const prefix = env.keys.heartbeatsPrefix(plane);
    const present = this.present.get(plane)!;
    const watcher = new PrefixWatcher(
      env.kv[plane],
      prefix,
      {
        onSnapshot: (entries) => {
          present.clear();
          for (const entry of entries) {
            const host = hostOfKey(prefix, entry.key);
            if (host !== undefined) present.add(host);
          }
          const nowMs = env.clock.nowMs();
          this.view.resync(plane, new Set([...present].filter((h) => this.registered.has(h))), nowMs);
          this.view.cluster(plane, true, nowMs);
          this.#schedule();
        },
        onRevision: (_revision, changes) => {
          const nowMs = env.clock.nowMs();
          for (const change of changes) {
            const host = hostOfKey(prefix, change.key);
            if (host === undefined) continue;
            if (change.type === "put") present.add(host);
            else present.delete(host);
            if (this.registered.has(host)) this.view.heartbeat(host, plane, change.type === "put", nowMs);
          }
          this.#schedule();
        },
        onFailed: (error) => log.error("stopped following heartbeats", { plane, error: errorMessage(error) }),
      },
      env.clock,
    );
    this.#heartbeatWatchers.set(plane, watcher);
  }

  /** Each plane's cluster must answer: a failed probe (or a watch retrying) makes the plane unknown until a fresh read. */
  async #probeClusters(): Promise<void> {
    const { env, options } = this.controller;
    while (!this.#stopped) {
      await Promise.all(
        planes.map(async (plane) => {
          const watcher = this.#heartbeatWatchers.get(plane)!;
          let healthy = watcher.state.kind === "connected" || watcher.state.kind === "resyncing" || watcher.state.kind === "connecting";
          if (healthy) {
            try {
              await env.kv[plane].get(env.keys.mode);
            } catch (error) {
              if (!(error instanceof KvError)) throw error;
              healthy = false;
            }
          }
          if (healthy || !this.view.clusterReachable(plane) || this.#stopped) return;
          log.warn(`cannot reach the ${plane} plane's etcd: no HA decisions from its heartbeats until it answers again`);
          this.view.cluster(plane, false, env.clock.nowMs());
          // A fresh watch starts with a full read; its snapshot makes the plane known again.
          this.#heartbeatWatchers.delete(plane);
          await watcher.stop();
          if (!this.#stopped) this.#followHeartbeats(plane);
          this.#schedule();
        }),
      );
      await env.clock.sleep(options.probeIntervalMs);
    }
  }

  #onHost(key: string, value: KvEntry | undefined): void {
    const { env } = this.controller;
    const host = hostOfKey(env.keys.hostsPrefix, key);
    if (host === undefined) return;
    const nowMs = env.clock.nowMs();
    if (value === undefined) {
      this.registered.delete(host);
      this.view.removeHost(host);
      return;
    }
    if (this.registered.has(host)) return;
    this.registered.add(host);
    this.view.addHost(host, nowMs);
    for (const plane of planes) this.view.heartbeat(host, plane, this.present.get(plane)!.has(host), nowMs);
  }

  #onStrategy(key: string, value: KvEntry | undefined): void {
    const next = this.#decode(key, value, decodeStrategy, defaultStrategy);
    if (next === undefined || next === this.strategy) return;
    this.strategy = next;
    log.info("strategy in force", { grace_ms: next.graceMs, ha_rows: next.rows.flatMap((row, n) => (row.ha ? [n] : [])) });
  }

  #onSettings(key: string, value: KvEntry | undefined): void {
    const next = this.#decode(key, value, decodeSettings, defaultSettings);
    if (next !== undefined) this.settings = next;
  }

  #onMaintenance(key: string, value: KvEntry | undefined): void {
    const { keys } = this.controller.env;
    const record = this.#decode(key, value, maintenanceRecord, undefined);
    const on = record?.on === true;
    if (key === keys.maintenanceGlobal) {
      this.globalMaintenance = on;
      return;
    }
    const host = hostOfKey(keys.maintenanceHostsPrefix, key);
    if (host === undefined) return;
    if (on) this.hostsInMaintenance.add(host);
    else this.hostsInMaintenance.delete(host);
  }

  #onRequest(key: string, value: KvEntry | undefined): void {
    const host = hostOfKey(this.controller.env.keys.recoveryRequestsPrefix, key);
    if (host === undefined) return;
    // The core sees (and closes once the host is healthy) the requests its plane decisions made;
    // one made for lost storage is the recovery executor's to close.
    const request = value === undefined ? undefined : decodeEntry(value, recoveryRequest);
    if (request !== undefined && "record" in request && request.record.cause === "planes") this.openRequests.add(host);
    else this.openRequests.delete(host);
  }

  /**
   * A value decoded, `fallback` when deleted, or undefined for a bad value — which is reported
   * as an event and leaves what is in force alone.
   */
  #decode<T>(key: string, value: KvEntry | undefined, codec: Codec<T>, fallback: T): T | undefined {
    if (value === undefined) return fallback;
    const decoded = decodeEntry(value, codec);
    if ("record" in decoded) return decoded.record;
    log.error("bad value in etcd ignored; what was in force stays", { key, reason: decoded.bad.message });
    if (this.#leading) {
      const { env, options } = this.controller;
      void appendEvent(env.kv.management, env.keys, badValueEvent(decoded.bad, `controller@${options.name}`, env.now())).catch(() => undefined);
    }
    return undefined;
  }

  /** Runs a step soon (changes that arrive together are decided together). */
  #schedule(): void {
    if (this.#stopped || this.#stepPending) return;
    this.#stepPending = true;
    void this.controller.env.clock.sleep(stepDelayMs).then(() => {
      this.#stepPending = false;
      if (this.#stopped) return;
      this.#stepping = this.#stepping.then(() => this.#step()).catch((error: unknown) => log.error("controller step failed", { error: errorMessage(error) }));
    });
  }

  /** A step in `dueInMs` for `source`, unless one for it is pending sooner. */
  #wakeIn(source: string, dueInMs: number | undefined): void {
    if (dueInMs === undefined) return;
    const { clock } = this.controller.env;
    const dueMs = clock.nowMs() + dueInMs;
    const pending = this.#deadlineWakeAtMs.get(source);
    if (pending !== undefined && pending > clock.nowMs() && pending <= dueMs) return;
    this.#deadlineWakeAtMs.set(source, dueMs);
    void clock.sleep(dueInMs + 1).then(() => this.#schedule());
  }

  /** A step at `atMs` (a grace period ends then); only the latest such wake-up counts. */
  #wakeAt(atMs: number): void {
    const { clock } = this.controller.env;
    this.#wakeAtMs = atMs;
    void clock.sleep(Math.max(0, atMs - clock.nowMs()) + 1).then(() => {
      if (this.#wakeAtMs === atMs) this.#schedule();
    });
  }

  async #step(): Promise<void> {
    if (!this.#leading) return;
    this.controller.stepsTaken++;
    const { env } = this.controller;
    const nowMs = env.clock.nowMs();
    const result = this.core.step({
      view: this.view,
      strategy: this.strategy,
      settings: this.settings,
      globalMaintenance: this.globalMaintenance,
      hostsInMaintenance: this.hostsInMaintenance,
      openRequests: this.openRequests,
      nowMs,
    });
    this.#decisions = result.decisions;
    for (const effect of result.effects) {
      if (!this.#leading) return;
      await this.#apply(effect);
    }
    // Recovered VMs go only where HA could act: nowhere in maintenance or self-defense.
    const storageTrouble = this.fencing.openHosts();
    this.#eligible =
      result.mode === "normal"
        ? new Set(
            [...result.decisions]
              .filter(([host, decision]) => decision.kind === "no-ha" && decision.why === "healthy" && !this.hostsInMaintenance.has(host) && !storageTrouble.has(host))
              .map(([host]) => host),
          )
        : new Set();
    this.#wakeIn("fencing", await this.fencing.step());
    this.#wakeIn("recovery", (await this.recovery.step()).nextDueInMs);
    // A grace period ending changes a decision with no new input: wake for it.
    if (result.nextWakeMs === undefined) this.#wakeAtMs = undefined;
    else if (result.nextWakeMs !== this.#wakeAtMs) this.#wakeAt(result.nextWakeMs);
  }

  async #apply(effect: ControllerEffect): Promise<void> {
    const { env, options } = this.controller;
    try {
      switch (effect.type) {
        case "event":
          await this.event(effect.kind, effect.host, effect.reason);
          return;
        case "request-recovery": {
          const request: RecoveryRequest = { host: effect.host, requestedAt: env.now().toISOString(), reason: effect.reason, planes: effect.planes, cause: "planes" };
          await env.kv.management.createIfAbsent(env.keys.recoveryRequest(effect.host), JSON.stringify(request));
          log.warn("recovery requested", { host: effect.host, reason: effect.reason });
          return;
        }
        case "close-request":
          await env.kv.management.delete(env.keys.recoveryRequest(effect.host));
          log.info("recovery request closed: the host is healthy again", { host: effect.host });
          return;
        case "host-state": {
          const nowMs = env.clock.nowMs();
          const wall = (ms: number) => new Date(env.now().getTime() - (nowMs - ms)).toISOString();
          const planeState = (plane: Plane) => ({ state: effect.planes[plane].state, since: wall(effect.planes[plane].sinceMs) });
          const record: HostStateRecord = {
            host: effect.host,
            planes: { management: planeState("management"), storage: planeState("storage"), service: planeState("service") },
            decision: effect.decision.kind === "ha-needed" ? "ha-needed" : effect.decision.why,
            reason: effect.decision.reason,
            at: env.now().toISOString(),
            leader: options.name,
          };
          await env.kv.management.put(env.keys.hostState(effect.host), JSON.stringify(record));
          return;
        }
        case "set-mode": {
          const mode: ModeRecord = { mode: effect.mode, since: env.now().toISOString(), reason: effect.reason, leader: options.name };
          await env.kv.management.put(env.keys.mode, JSON.stringify(mode));
          log.info("mode", { mode: effect.mode, reason: effect.reason });
          return;
        }
      }
    } catch (error) {
      if (!(error instanceof KvError)) throw error;
      log.error("could not carry out a decision; it is retried at the next step", { effect: effect.type, error: error.message });
      if (effect.type === "request-recovery") this.core.requestFailed(effect.host);
      this.#schedule();
    }
  }

  async event(kind: EventRecord["kind"], host: string | null, reason: string): Promise<void> {
    const { env, options } = this.controller;
    await appendEvent(env.kv.management, env.keys, { time: env.now().toISOString(), kind, host, reason, by: `controller@${options.name}` });
  }
}

function entryOf(change: KvChange): KvEntry {
  return { key: change.key, value: change.value, modRevision: change.modRevision };
}
