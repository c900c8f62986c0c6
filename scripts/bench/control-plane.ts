/**
 * The control plane under load: a real etcd, a real `dist/fitha controller` process, and N
 * simulated compute hosts heartbeating into it.
 *   node_modules/.bin/bun scripts/bench/control-plane.ts [--hosts 1000] [--window-s 60] [--fast-cuts 6] [--skip-default-cut]
 * (bash scripts/bench/control-plane builds dist/fitha first and removes every temp file even
 * when this process is killed). Results (with machine and date) go to scripts/bench/README.md by hand.
 *
 * The hosts are the real Agent (src/agent/agent.ts) with an in-memory hypervisor, N of them in
 * this one process, so they make exactly the calls a `fitha agent` makes: host-id claim,
 * registration, event, settings read and watch, one leased heartbeat key per plane, a keepalive
 * per plane every interval, reachability records. What differs from N real agents is the
 * connections: the agents share a few etcd clients per plane (--clients), so etcd sees the same
 * requests over fewer TCP connections. Each agent reaches each plane through a "link" (LinkKv)
 * that the bench can cut: while cut, every call on it fails at once as unreachable, as with a
 * dead link (a watch already established through the shared client stays up; agents only watch
 * the settings, which do not change during a cut).
 *
 * One etcd serves all three planes (keys are per plane, so the controller's three watches and
 * the agents' three leases per host are all there; the load on etcd is three planes' load on one
 * member). Measured, per heartbeat profile, over a steady-state window:
 * - CPU (utime + stime from /proc/PID/stat, all threads) and RSS (/proc/PID/status VmRSS,
 *   sampled every second; VmHWM at the end) of the controller, of etcd and of this simulator;
 * - etcd writes: the cluster's revision delta (every put, txn with a put, delete and lease
 *   expiry with keys is one revision), per host per minute, tallied by key kind through a watch;
 * - keepalives, counted apart: the simulator's own count and etcd's (grpc LeaseKeepAlive
 *   messages received, from /metrics).
 * Then detection latency: a host's link on one plane (storage: strategy row 6) or on all three
 * (row 0) is cut, and the bench times, through its own watch on the cluster, when the heartbeat
 * keys vanish, when the controller publishes the new host state and when the recovery request
 * appears.
 */
import { parseArgs } from "node:util";
import { createWriteStream } from "node:fs";
import { join } from "node:path";
import { Agent } from "../../src/agent/agent.ts";
import { planes, type Plane } from "../../src/config/fitha-config.ts";
import { monotonicClock } from "../../src/core/clock.ts";
import { defaultSettings, settingsToJson } from "../../src/core/settings.ts";
import { defaultStrategy, strategyToJson } from "../../src/core/strategy.ts";
import { configureLogging } from "../../src/log.ts";
import { EtcdKv } from "../../src/store/etcd-kv.ts";
import { keys as keysFor } from "../../src/store/keys.ts";
import type { Kv, KvChange } from "../../src/store/kv.ts";
import { LinkKv, newLinkStats } from "./link-kv.ts";
import { bounded, log, round, sampler, sleep, until, type ProcStats } from "./support.ts";
import { PrefixWatcher } from "../../src/store/watcher.ts";
import { MemoryHypervisor } from "../../src/virt/memory-hypervisor.ts";
import { writeConfig } from "../../test/helpers/config.ts";
import { startEtcd, type LocalEtcd } from "../../test/helpers/etcd.ts";
import { etcdSettings } from "../../test/helpers/etcd-settings.ts";
import { terminate } from "../../test/helpers/terminate.ts";
import { tempDir, type TempDir } from "../../test/helpers/tmp.ts";

const { values } = parseArgs({
  options: {
    hosts: { type: "string", default: "1000" },
    "window-s": { type: "string", default: "60" },
    "fast-cuts": { type: "string", default: "6" },
    "skip-default-cut": { type: "boolean", default: false },
    clients: { type: "string", default: "4" },
    "start-concurrency": { type: "string", default: "10" },
    "max-run-s": { type: "string", default: "900" },
    json: { type: "string" },
  },
});
const hostCount = Number(values.hosts);
const windowMs = Number(values["window-s"]) * 1000;
const fastCuts = Number(values["fast-cuts"]);
const clientsPerPlane = Number(values.clients);
const startConcurrency = Number(values["start-concurrency"]);
const maxRunMs = Number(values["max-run-s"]) * 1000;
for (const [name, value] of Object.entries({ hostCount, windowMs, fastCuts, clientsPerPlane, startConcurrency, maxRunMs })) {
  if (!(Number.isSafeInteger(value) && value >= 0) || (value === 0 && name !== "fastCuts")) throw new RangeError(`${name}: ${value}`);
}
if (hostCount > 2000) throw new RangeError("at most 2000 hosts (lockspace host ids)");

interface Profile {
  readonly name: string;
  readonly intervalMs: number;
  readonly ttlMs: number;
  readonly graceMs: number;
}
const defaultProfile: Profile = { name: "default", intervalMs: defaultSettings.heartbeatIntervalMs, ttlMs: defaultSettings.heartbeatTtlMs, graceMs: defaultStrategy.graceMs };
const fastProfile: Profile = { name: "fast", intervalMs: 2_000, ttlMs: 6_000, graceMs: 10_000 };
/** etcd 3.4's lessor looks for expired leases every 500 ms. */
const etcdExpiryCheckMs = 500;
const prefix = "/fitha";
const keys = keysFor(prefix);
const controllerName = "bench-controller";
// ---------------------------------------------------------------------------------------------
// etcd's /metrics

type Metrics = Map<string, number>;

async function etcdMetrics(endpoint: string): Promise<Metrics> {
  const text = await (await fetch(`${endpoint}/metrics`, { signal: AbortSignal.timeout(5_000) })).text();
  const metrics: Metrics = new Map();
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const space = line.lastIndexOf(" ");
    metrics.set(line.slice(0, space), Number(line.slice(space + 1)));
  }
  return metrics;
}

/** The sum of a metric's series (those whose labels contain `labels`, if given). */
function metric(metrics: Metrics, name: string, labels = ""): number {
  let sum = 0;
  for (const [series, value] of metrics) if ((series === name || series.startsWith(`${name}{`)) && series.includes(labels)) sum += value;
  return sum;
}

const etcdCounters = {
  keepalivesReceived: (m: Metrics) => metric(m, "grpc_server_msg_received_total", 'grpc_method="LeaseKeepAlive"'),
  leasesRenewed: (m: Metrics) => metric(m, "etcd_debugging_lease_renewed_total"),
  leasesGranted: (m: Metrics) => metric(m, "etcd_debugging_lease_granted_total"),
  leasesExpired: (m: Metrics) => metric(m, "etcd_debugging_server_lease_expired_total"),
  puts: (m: Metrics) => metric(m, "etcd_mvcc_put_total"),
  deletes: (m: Metrics) => metric(m, "etcd_mvcc_delete_total"),
  txns: (m: Metrics) => metric(m, "etcd_mvcc_txn_total"),
  ranges: (m: Metrics) => metric(m, "etcd_mvcc_range_total"),
};
type EtcdCounts = Record<keyof typeof etcdCounters, number>;

function etcdDelta(before: Metrics, after: Metrics): EtcdCounts {
  return Object.fromEntries(Object.entries(etcdCounters).map(([name, read]) => [name, read(after) - read(before)])) as EtcdCounts;
}

const sim = { ...newLinkStats(), started: 0 };

interface SimHost {
  readonly name: string;
  readonly links: Record<Plane, LinkKv>;
  agent?: Agent;
}

// ---------------------------------------------------------------------------------------------
// The bench's own view of the cluster: every change, timed as it arrives

interface Seen {
  readonly key: string;
  readonly type: KvChange["type"];
  readonly value: string;
  readonly atMs: number;
}

/** Key kind for tallies: the first path element, with the plane for heartbeats. */
function kindOf(key: string): string {
  const parts = key.slice(prefix.length + 1).split("/");
  return parts[0] === "heartbeats" || parts[0] === "maintenance" ? `${parts[0]}/${parts[1]}` : parts[0]!;
}

class ClusterLog {
  /** Changes by kind ("hosts put") since the last reset(). */
  tally = new Map<string, number>();
  /** Every change while recording (detection phases). */
  readonly seen: Seen[] = [];
  recording = false;
  readonly #waiters = new Map<string, Array<(seen: Seen) => void>>();
  readonly watcher: PrefixWatcher;

  constructor(kv: Kv, afterRevision: bigint) {
    this.watcher = new PrefixWatcher(
      kv,
      `${prefix}/`,
      {
        onSnapshot: () => undefined,
        onRevision: (_revision, changes) => {
          const atMs = performance.now();
          for (const change of changes) {
            const kind = `${kindOf(change.key)} ${change.type}`;
            this.tally.set(kind, (this.tally.get(kind) ?? 0) + 1);
            const seen: Seen = { key: change.key, type: change.type, value: change.value, atMs };
            if (this.recording) this.seen.push(seen);
            for (const resolve of this.#waiters.get(`${change.type} ${change.key}`) ?? []) resolve(seen);
            this.#waiters.delete(`${change.type} ${change.key}`);
          }
        },
        onFailed: (error) => log(`the bench's watch failed: ${error.message}`),
      },
      monotonicClock,
      { afterRevision },
    );
  }

  /** The next `type` change of `key`, or undefined after `timeoutMs`. */
  next(type: KvChange["type"], key: string, timeoutMs: number): Promise<Seen | undefined> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(undefined), timeoutMs);
      const list = this.#waiters.get(`${type} ${key}`) ?? [];
      list.push((seen) => {
        clearTimeout(timer);
        resolve(seen);
      });
      this.#waiters.set(`${type} ${key}`, list);
    });
  }
}

// ---------------------------------------------------------------------------------------------
// The run

interface WindowResult {
  readonly profile: string;
  readonly seconds: number;
  readonly processes: Record<string, ProcStats>;
  readonly revisions: number;
  readonly writesPerHostPerMinute: number;
  readonly writesByKind: Record<string, number>;
  readonly keepalivesSent: number;
  readonly keepalivesPerHostPerMinute: number;
  readonly keepaliveFailures: number;
  /** Round trip of one keepalive (a fresh stream each, as PlaneHeartbeat does), as the simulator saw it. */
  readonly keepaliveMs: { readonly p50: number; readonly p99: number } | undefined;
  readonly etcd: EtcdCounts;
}

interface CutResult {
  readonly profile: string;
  readonly host: string;
  readonly planes: readonly Plane[];
  /** Cut → recovery request seen; undefined if none came in time. */
  readonly detectionMs: number | undefined;
  /** Cut → the last cut plane's heartbeat key deleted. */
  readonly planeDownMs: number | undefined;
  /** That plane's last renewal (sent) → its key deleted: the lease TTL plus etcd's expiry check. */
  readonly renewalToDownMs: number | undefined;
  /** Key deleted → the controller's host-state record for it (watch + step + write). */
  readonly reactionMs: number | undefined;
  /** Key deleted → request, less the grace period: what the controller adds (as the bench's watch saw it). */
  readonly beyondGraceMs: number | undefined;
  /**
   * The same by the controller's own records: the request's requestedAt less the time its
   * host-state record says the row began (the controller's observation of the last key deleted), less the grace.
   */
  readonly beyondGraceOwnMs: number | undefined;
}

/** One detection phase: its cuts, and what they cost etcd from the cut until every cut host was healthy again. */
interface Episode {
  readonly profile: string;
  readonly cuts: number;
  readonly revisions: number;
  readonly writesByKind: Record<string, number>;
}

let etcd: LocalEtcd | undefined;
let dir: TempDir | undefined;
let controller: Bun.Subprocess | undefined;
let admin: EtcdKv | undefined;
let clusterLog: ClusterLog | undefined;
const clients: EtcdKv[] = [];
const hosts: SimHost[] = [];
let cleaning: Promise<void> | undefined;

function cleanup(): Promise<void> {
  return (cleaning ??= (async () => {
    await bounded("stopping the agents", Promise.all(hosts.map((h) => h.agent?.stop())), 20_000);
    await bounded("stopping the bench's watch", clusterLog?.watcher.stop() ?? Promise.resolve(), 5_000);
    for (const client of clients) client.close();
    admin?.close();
    if (controller !== undefined) await terminate(controller, 5_000);
    await etcd?.stop();
    await dir?.remove();
  })());
}

for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.on(signal, () => {
    log(`${signal}: cleaning up`);
    void cleanup().finally(() => process.exit(130));
  });
}
const runTimer = setTimeout(() => {
  log(`the whole run exceeded ${maxRunMs / 1000} s (--max-run-s): cleaning up`);
  void cleanup().finally(() => process.exit(1));
}, maxRunMs);

async function revision(): Promise<bigint> {
  return (await admin!.getPrefix(`${prefix}/`, { limit: 1 })).revision;
}

async function applyProfile(profile: Profile): Promise<void> {
  await admin!.put(keys.settings, JSON.stringify({ ...settingsToJson(defaultSettings), heartbeat_interval_ms: profile.intervalMs, heartbeat_ttl_ms: profile.ttlMs }));
  await admin!.put(keys.strategy, JSON.stringify({ ...strategyToJson(defaultStrategy), grace_ms: profile.graceMs }));
}

/** Hosts whose published state is "healthy", from the controller's host-state records. */
async function healthyHosts(): Promise<Set<string>> {
  const range = await admin!.getPrefix(keys.hostStatesPrefix);
  return new Set(range.entries.flatMap((e) => ((JSON.parse(e.value) as { decision: string }).decision === "healthy" ? [e.key.slice(keys.hostStatesPrefix.length)] : [])));
}

/** Every host healthy in the controller's eyes and no write for `quietMs`. */
async function settle(what: string, timeoutMs: number, quietMs = 5_000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  await until(`${what}: the controller sees all ${hostCount} hosts healthy`, timeoutMs, 2_000, async () => (await healthyHosts()).size >= hostCount);
  let last = await revision();
  let quietSinceMs = performance.now();
  await until(`${what}: no write for ${quietMs / 1000} s`, Math.max(1_000, deadline - performance.now()), 500, async () => {
    const now = await revision();
    if (now !== last) {
      last = now;
      quietSinceMs = performance.now();
    }
    return performance.now() - quietSinceMs >= quietMs;
  });
}

async function measureWindow(profile: Profile): Promise<WindowResult> {
  log(`${profile.name} profile (interval ${profile.intervalMs / 1000} s, TTL ${profile.ttlMs / 1000} s): measuring a ${windowMs / 1000} s window`);
  const r0 = await revision();
  const m0 = await etcdMetrics(etcd!.endpoint);
  const sent0 = sim.keepalives;
  const failed0 = sim.keepaliveFailures;
  clusterLog!.tally = new Map();
  sim.keepaliveMs = [];
  sim.timing = true;
  const t0 = performance.now();
  const sampling = sampler({ controller: controller!.pid, etcd: etcd!.pid, simulator: "self", machine: "machine" });
  await sleep(windowMs);
  const processes = await sampling.stop();
  sim.timing = false;
  const seconds = (performance.now() - t0) / 1000;
  const sorted = sim.keepaliveMs.sort((a, b) => a - b);
  const at = (q: number) => round(sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!);
  const r1 = await revision();
  const m1 = await etcdMetrics(etcd!.endpoint);
  const revisions = Number(r1 - r0);
  const minutes = seconds / 60;
  const keepalivesSent = sim.keepalives - sent0;
  return {
    profile: profile.name,
    seconds: round(seconds),
    processes,
    revisions,
    writesPerHostPerMinute: round(revisions / hostCount / minutes, 4),
    writesByKind: Object.fromEntries(clusterLog!.tally),
    keepalivesSent,
    keepalivesPerHostPerMinute: round(keepalivesSent / hostCount / minutes, 2),
    keepaliveFailures: sim.keepaliveFailures - failed0,
    keepaliveMs: sorted.length === 0 ? undefined : { p50: at(0.5), p99: at(0.99) },
    etcd: etcdDelta(m0, m1),
  };
}

/** Cuts each host's links on its planes, `staggerMs` apart, and times what follows. */
const episodes: Episode[] = [];

async function detect(profile: Profile, cuts: ReadonlyArray<{ host: SimHost; planes: readonly Plane[] }>, staggerMs: number): Promise<CutResult[]> {
  const log_ = clusterLog!;
  const r0 = await revision();
  log_.tally = new Map();
  const boundMs = profile.ttlMs + profile.graceMs + 30_000;
  log(`${profile.name} profile: cutting ${cuts.length} host link set(s); each waits at most ${boundMs / 1000} s for its recovery request`);
  log_.recording = true;
  const results = await Promise.all(
    cuts.map(async ({ host, planes: cutPlanes }, index) => {
      await sleep(index * staggerMs);
      const request = log_.next("put", keys.recoveryRequest(host.name), boundMs);
      const cutAtMs = performance.now();
      for (const plane of cutPlanes) host.links[plane].cut = true;
      const lastRenewal = Object.fromEntries(cutPlanes.map((plane) => [plane, host.links[plane].lastRenewalSentMs])) as Record<Plane, number>;
      const requested = await request;
      const after = (s: Seen) => s.atMs >= cutAtMs;
      const downs = cutPlanes.map((plane) => ({ plane, seen: log_.seen.find((s) => after(s) && s.type === "delete" && s.key === keys.heartbeat(plane, host.name)) }));
      const lastDown = downs.every((d) => d.seen !== undefined) ? downs.reduce((a, b) => (b.seen!.atMs > a.seen!.atMs ? b : a)) : undefined;
      const downMs = lastDown?.seen?.atMs;
      const state = downMs === undefined ? undefined : log_.seen.find((s) => s.atMs >= downMs && s.type === "put" && s.key === keys.hostState(host.name));
      // The controller's own account: its last host-state record with every cut plane down says since when.
      type StateRecord = { planes: Record<Plane, { state: string; since: string }> };
      const rowState = log_.seen
        .filter((s) => s.type === "put" && s.key === keys.hostState(host.name) && (requested === undefined || s.atMs <= requested.atMs))
        .map((s) => JSON.parse(s.value) as StateRecord)
        .filter((r) => cutPlanes.every((plane) => r.planes[plane].state === "down"))
        .at(-1);
      const rowSinceMs = rowState === undefined ? undefined : Math.max(...cutPlanes.map((plane) => Date.parse(rowState.planes[plane].since)));
      const requestedAtMs = requested === undefined ? undefined : Date.parse((JSON.parse(requested.value) as { requestedAt: string }).requestedAt);
      const result: CutResult = {
        profile: profile.name,
        host: host.name,
        planes: cutPlanes,
        detectionMs: requested === undefined ? undefined : round(requested.atMs - cutAtMs, 0),
        planeDownMs: downMs === undefined ? undefined : round(downMs - cutAtMs, 0),
        renewalToDownMs: lastDown?.seen === undefined ? undefined : round(lastDown.seen.atMs - lastRenewal[lastDown.plane], 0),
        reactionMs: state === undefined || downMs === undefined ? undefined : round(state.atMs - downMs, 0),
        beyondGraceMs: requested === undefined || downMs === undefined ? undefined : round(requested.atMs - downMs - profile.graceMs, 0),
        beyondGraceOwnMs: requestedAtMs === undefined || rowSinceMs === undefined ? undefined : requestedAtMs - rowSinceMs - profile.graceMs,
      };
      log(`  ${host.name} (${cutPlanes.join("+")} cut): ${result.detectionMs === undefined ? "NO recovery request in time" : `recovery request after ${(result.detectionMs / 1000).toFixed(2)} s`}`);
      return result;
    }),
  );
  log_.recording = false;
  log_.seen.length = 0;
  for (const { host, planes: cutPlanes } of cuts) for (const plane of cutPlanes) host.links[plane].cut = false;
  const names = new Set(cuts.map((c) => c.host.name));
  await until("the cut hosts are healthy again after their links came back", 60_000, 1_000, async () => {
    const healthy = await healthyHosts();
    return [...names].every((name) => healthy.has(name));
  });
  episodes.push({ profile: profile.name, cuts: cuts.length, revisions: Number((await revision()) - r0), writesByKind: Object.fromEntries(log_.tally) });
  return results;
}

async function main(): Promise<void> {
  dir = await tempDir("bench-cp");
  etcd = await startEtcd({ name: "bench-cp" });
  log(`etcd ${etcd.endpoint} (pid ${etcd.pid}), data in ${etcd.dataDir}`);
  const settings = etcdSettings({ endpoint: etcd.endpoint, prefix, requestTimeoutMs: 5_000, dialTimeoutMs: 3_000 });
  admin = EtcdKv.connect(settings, "management");
  // The agents and the controller log warnings and errors only, to a file.
  const simLog = join(dir.path, "simulator.log");
  configureLogging({ level: "warn", format: "json", stream: createWriteStream(simLog) });

  const config = await writeConfig(dir.path, { management: etcd.endpoint, prefix, extra: `[controller]\nname = "${controllerName}"\n` });
  const controllerLog = join(dir.path, "controller.log");
  // setpriv: the controller dies with this process, whatever kills it.
  controller = Bun.spawn(["setpriv", "--pdeathsig", "KILL", "--", join(import.meta.dir, "../../dist/fitha"), "controller", "--config", config, "--log-format", "json"], {
    stdin: "ignore",
    stdout: Bun.file(controllerLog),
    stderr: Bun.file(controllerLog),
    env: { PATH: "/usr/bin:/bin" },
  });
  await until("the controller leads", 30_000, 200, async () => {
    if (controller!.exitCode !== null) throw new Error(`the controller exited (${controller!.exitCode}): ${await Bun.file(controllerLog).text()}`);
    return (await admin!.get(keys.election))?.value.includes(controllerName) === true;
  });
  log(`controller pid ${controller.pid} leads`);

  // The simulated hosts: clientsPerPlane shared clients per plane, one link per host and plane.
  const pool = Object.fromEntries(planes.map((plane) => [plane, Array.from({ length: clientsPerPlane }, () => EtcdKv.connect(settings, plane))])) as Record<Plane, EtcdKv[]>;
  for (const plane of planes) clients.push(...pool[plane]);
  const hypervisor = new MemoryHypervisor();
  for (let i = 0; i < hostCount; i++) {
    const name = `sim-${String(i + 1).padStart(4, "0")}`;
    hosts.push({ name, links: Object.fromEntries(planes.map((plane) => [plane, new LinkKv(pool[plane][i % clientsPerPlane]!, sim)])) as Record<Plane, LinkKv> });
  }

  const registrationR0 = await revision();
  clusterLog = new ClusterLog(admin, registrationR0);
  const registration = sampler({ controller: controller.pid, etcd: etcd.pid, simulator: "self" });
  const registrationT0 = performance.now();
  log(`starting ${hostCount} simulated agents, ${startConcurrency} at a time (default heartbeat profile: nothing in etcd's settings yet)`);
  let next = 0;
  await Promise.all(
    Array.from({ length: startConcurrency }, async () => {
      while (next < hosts.length) {
        const host = hosts[next++]!;
        const addresses = { management: `10.1.0.${next}`, storage: `10.2.0.${next}`, service: `10.3.0.${next}` };
        const agent = await Agent.start({ host: host.name, addresses, agentVersion: "bench" }, { clock: monotonicClock, now: () => new Date(), kv: host.links, keys, hypervisor });
        host.agent = agent;
        if (++sim.started % 100 === 0) log(`  ${sim.started} agents started`);
      }
    }),
  );
  const agentsUpS = (performance.now() - registrationT0) / 1000;
  log(`all agents started in ${agentsUpS.toFixed(1)} s; waiting for the controller to see every host healthy`);
  await settle("registration", 180_000);
  const registrationResult = {
    seconds: round((performance.now() - registrationT0) / 1000),
    agentsUpSeconds: round(agentsUpS),
    writesPerHost: round(Number((await revision()) - registrationR0) / hostCount, 1),
    writesByKind: Object.fromEntries(clusterLog.tally),
    processes: await registration.stop(),
  };

  // Default profile: the steady state, then (optionally) one real detection of each kind.
  const windows: WindowResult[] = [await measureWindow(defaultProfile)];
  const cuts: CutResult[] = [];
  let hostCursor = 0;
  const pick = () => hosts[(hostCursor++ * 97 + 13) % hosts.length]!;
  if (!values["skip-default-cut"]) {
    // Explicit, so that the strategy and settings are what the table says whatever the build's defaults.
    await applyProfile(defaultProfile);
    await sleep(1_000);
    cuts.push(...(await detect(defaultProfile, [{ host: pick(), planes: planes }, { host: pick(), planes: ["storage"] }], 0)));
  }

  // Fast profile: every agent takes a new lease of the new TTL at once (nudged by the settings watch).
  log("switching to the fast profile");
  const grants0 = sim.grants;
  await applyProfile(fastProfile);
  await until("every agent re-leased its heartbeats for the new TTL", 60_000, 500, () => sim.grants - grants0 >= 3 * hostCount);
  await settle("fast profile", 120_000);
  windows.push(await measureWindow(fastProfile));
  if (fastCuts > 0) {
    const fast = Array.from({ length: fastCuts }, (_, i) => ({ host: pick(), planes: i % 2 === 0 ? (["storage"] as Plane[]) : planes }));
    cuts.push(...(await detect(fastProfile, fast, 2_300)));
  }

  const results = { hosts: hostCount, windowS: windowMs / 1000, clientsPerPlane, registration: registrationResult, windows, cuts, episodes, etcdEndpointShared: true };
  report(results.registration, episodes, windows, cuts);
  if (values.json !== undefined) await Bun.write(values.json, JSON.stringify(results, null, 2));
  // Expected: the cut hosts' "plane unreachable" and, once back, "lease expired; putting the
  // heartbeat again"; the controller's "recovery requested". Anything else is worth a look.
  for (const [who, path] of [["simulated agents", simLog], ["controller", controllerLog]] as const) {
    const warnings = new Map<string, number>();
    for (const line of (await Bun.file(path).text()).split("\n")) {
      if (!line.startsWith("{")) continue;
      const { level, msg } = JSON.parse(line) as { level?: string; msg?: string };
      if (level === "warn" || level === "error") warnings.set(`${level}: ${msg}`, (warnings.get(`${level}: ${msg}`) ?? 0) + 1);
    }
    for (const [message, count] of warnings) log(`${who} logged ${count} × ${message}`);
  }
}

// ---------------------------------------------------------------------------------------------
// The results table

const stats = (list: readonly (number | undefined)[]) => {
  const values = list.filter((v): v is number => v !== undefined).sort((a, b) => a - b);
  if (values.length === 0) return undefined;
  return { min: values[0]!, median: values.length % 2 === 1 ? values[(values.length - 1) / 2]! : (values[values.length / 2 - 1]! + values[values.length / 2]!) / 2, max: values.at(-1)!, n: values.length };
};
const seconds = (ms: number) => (ms / 1000).toFixed(2);
/** "hosts put 1, heartbeats/storage put 1, …" per unit. */
const tallyText = (tally: Record<string, number>, per: number) =>
  Object.entries(tally)
    .sort((a, b) => b[1] - a[1])
    .map(([kind, count]) => `${kind} ${round(count / per, 2)}`)
    .join(", ") || "none";
const mmm = (list: readonly (number | undefined)[], unit: (ms: number) => string = seconds) => {
  const s = stats(list);
  return s === undefined ? "—" : s.n === 1 ? unit(s.min) : `${unit(s.min)} / ${unit(s.median)} / ${unit(s.max)} (n=${s.n})`;
};

function report(registration: { seconds: number; agentsUpSeconds: number; writesPerHost: number; writesByKind: Record<string, number>; processes: Record<string, ProcStats> }, episodes: readonly Episode[], windows: readonly WindowResult[], cuts: readonly CutResult[]): void {
  const out: string[] = [];
  const row = (...cells: (string | number)[]) => out.push(`| ${cells.join(" | ")} |`);
  const header = (...cells: string[]) => {
    row(...cells);
    row(...cells.map(() => "---"));
  };
  const [d, f] = [windows.find((w) => w.profile === "default")!, windows.find((w) => w.profile === "fast")!];
  out.push("", `## Control plane, ${hostCount} simulated hosts, one etcd for all three planes, ${windowMs / 1000} s steady-state windows`, "");
  header("measure", `default: interval ${defaultProfile.intervalMs / 1000} s, TTL ${defaultProfile.ttlMs / 1000} s`, `fast: interval ${fastProfile.intervalMs / 1000} s, TTL ${fastProfile.ttlMs / 1000} s`);
  for (const [name, label] of [["controller", "controller"], ["etcd", "etcd"], ["simulator", `simulator (${hostCount} agents, this process)`]] as const) {
    const p = (w: WindowResult) => w.processes[name]!;
    row(`${label} CPU, average (busiest 1 s)`, `${p(d).cpuAvgPercent} % (${p(d).cpuMaxPercent} %)`, `${p(f).cpuAvgPercent} % (${p(f).cpuMaxPercent} %)`);
    row(`${label} RSS, peak in window (VmHWM since start)`, `${p(d).rssPeakMiB} MiB (${p(d).hwmMiB} MiB)`, `${p(f).rssPeakMiB} MiB (${p(f).hwmMiB} MiB)`);
  }
  const others = (w: WindowResult) => round(w.processes["machine"]!.cpuAvgPercent - w.processes["controller"]!.cpuAvgPercent - w.processes["etcd"]!.cpuAvgPercent - w.processes["simulator"]!.cpuAvgPercent);
  row(`whole machine CPU, average, of ${navigator.hardwareConcurrency} cores × 100 % (other processes' share)`, `${d.processes["machine"]!.cpuAvgPercent} % (${others(d)} %)`, `${f.processes["machine"]!.cpuAvgPercent} % (${others(f)} %)`);
  row("etcd revisions in the window (writes)", d.revisions, f.revisions);
  row("**writes per host per minute**", `**${d.writesPerHostPerMinute}**`, `**${f.writesPerHostPerMinute}**`);
  row("writes by key kind", Object.entries(d.writesByKind).map(([k, v]) => `${k} ${v}`).join(", ") || "none", Object.entries(f.writesByKind).map(([k, v]) => `${k} ${v}`).join(", ") || "none");
  row("keepalives per host per minute: expected (3 planes × 60 s ÷ interval)", 3 * (60_000 / defaultProfile.intervalMs), 3 * (60_000 / fastProfile.intervalMs));
  row("keepalives per host per minute: sent by the agents", d.keepalivesPerHostPerMinute, f.keepalivesPerHostPerMinute);
  row("keepalives received by etcd (LeaseKeepAlive messages), total", d.etcd.keepalivesReceived, f.etcd.keepalivesReceived);
  const rtt = (w: WindowResult) => (w.keepaliveMs === undefined ? "—" : `${w.keepaliveMs.p50} / ${w.keepaliveMs.p99} ms`);
  row("keepalive round trip p50 / p99, as the simulator saw it", rtt(d), rtt(f));
  row("keepalive failures / lease grants / lease expiries", `${d.keepaliveFailures} / ${d.etcd.leasesGranted} / ${d.etcd.leasesExpired}`, `${f.keepaliveFailures} / ${f.etcd.leasesGranted} / ${f.etcd.leasesExpired}`);
  row("etcd range requests (reads), total", d.etcd.ranges, f.etcd.ranges);
  out.push("");
  out.push(`Registration of ${hostCount} hosts: agents up in ${registration.agentsUpSeconds} s, all healthy in the controller's view after ${registration.seconds} s; ${registration.writesPerHost} etcd writes per host (${tallyText(registration.writesByKind, hostCount)}); controller CPU ${registration.processes["controller"]!.cpuAvgPercent} % on average meanwhile (etcd ${registration.processes["etcd"]!.cpuAvgPercent} %).`);
  out.push("");
  header("detection (cut → recovery request in etcd)", "profile", "cut", "min / median / max", "computed range");
  for (const profile of [fastProfile, defaultProfile]) {
    for (const kind of ["storage", "all planes"] as const) {
      const list = cuts.filter((c) => c.profile === profile.name && (kind === "storage" ? c.planes.length === 1 : c.planes.length === 3));
      if (list.length === 0) continue;
      const range = `${seconds(profile.ttlMs - profile.intervalMs + profile.graceMs)} – ${seconds(profile.ttlMs + etcdExpiryCheckMs + profile.graceMs)} s + controller`;
      row("cut → request, s", `${profile.name} (${profile.intervalMs / 1000} / ${profile.ttlMs / 1000} / ${profile.graceMs / 1000} s)`, kind === "storage" ? "storage plane (row 6)" : "all planes (row 0)", mmm(list.map((c) => c.detectionMs)), range);
    }
  }
  out.push("");
  header("detection, the parts", "profile", "min / median / max");
  for (const profile of [fastProfile, defaultProfile]) {
    const list = cuts.filter((c) => c.profile === profile.name);
    if (list.length === 0) continue;
    const ms = (v: number) => `${Math.round(v)}`;
    row("cut → last cut plane's key deleted, s", profile.name, mmm(list.map((c) => c.planeDownMs)));
    row("its last renewal → key deleted, ms (TTL + etcd's expiry check)", profile.name, mmm(list.map((c) => c.renewalToDownMs), ms));
    row("key deleted → controller's host-state record, ms", profile.name, mmm(list.map((c) => c.reactionMs), ms));
    row("key deleted → request, less the grace period, ms", profile.name, mmm(list.map((c) => c.beyondGraceMs), ms));
    row("the same by the controller's own records (requestedAt − row since − grace), ms", profile.name, mmm(list.map((c) => c.beyondGraceOwnMs), ms));
  }
  out.push("");
  for (const e of episodes) {
    out.push(`Writes of the ${e.profile} profile's cuts, from the first cut until every cut host was healthy again: ${e.revisions} for ${e.cuts} cut host(s), ${round(e.revisions / e.cuts)} per host (${tallyText(e.writesByKind, e.cuts)}).`);
  }
  console.log(out.join("\n"));
}

try {
  await main();
} catch (error) {
  // After a signal the clients close under main's feet: that is no failure to report.
  if (cleaning === undefined) log(`failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`);
  process.exitCode = 1;
} finally {
  clearTimeout(runTimer);
  await cleanup();
}
// grpc-js timers may linger after the clients close.
process.exit(process.exitCode ?? 0);
