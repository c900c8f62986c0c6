/**
 * Recovery at the seed's scale (seeds/001, "Scenarios"): 38 compute hosts, 1,741 VMs of which
 * 1,000 HA, 20 hosts fail at once; the global recovery limit at 20 and 100; every VM start taking
 * 0 s, or 30 s to imitate a guest's boot.
 *   node_modules/.bin/bun scripts/bench/failover.ts [--limits 20,100] [--start-s 0,30] [--json FILE]
 * (bash scripts/bench/failover builds dist/fitha first and removes every temp file however the
 * run ends). Results (with machine and date) go to scripts/bench/README.md by hand.
 *
 * Per scenario (one per limit × start time), a fresh cluster on this machine:
 * - a real etcd (all three planes) and a real `dist/fitha controller` process;
 * - one real `dist/fitha lockd` process per host, all on one lease file on a real file system
 *   (O_DIRECT), so every recovered VM's lease is a real Disk Paxos acquire, refused ("held")
 *   until the failed host is dead by the lease algorithm;
 * - per host the real Agent (src/agent/agent.ts) in this process, talking to its lockd over its
 *   socket (LockdVmLeases, LockdQuestionsClient) and to etcd through a link the bench can cut
 *   (link-kv.ts; the agents share a few etcd clients per plane); its hypervisor is in memory
 *   (MemoryHypervisor with startMs = the start time), the one part that is not real: libvirt's
 *   test driver cannot take 30 s to start a VM, and 38 libvirtds would measure libvirtd.
 *
 * The failure: the 20 hosts' lockds are SIGKILLed, their agents' links to all three planes cut and
 * the agents stopped, all at once (T0). Then the bench waits until each of the 1,000 HA VMs runs
 * on a surviving host, timing each start's completion in the hypervisors.
 *
 * The floor nothing can beat: a VM may start only once the controller may decide its host failed
 * (the last of the host's three heartbeat keys expired — TTL after its last keepalive, which the
 * bench's links note — plus the grace period, which runs from the last plane down) and its lease is free (8T + K after the host's last
 * lease renewal, which lockd's state file gives on CLOCK_BOOTTIME). Both run at the same time, so
 * floor = the later of the two, for the latest failed host; then the starts themselves take start
 * time × VMs ÷ limit. Overhead = total − (floor + that): what fitha adds (etcd's expiry check
 * every 500 ms, the controller's reaction, orders, the agents, lockd's acquires, retries after a
 * lease-held answer).
 */
import { createWriteStream } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { clockBoottimeMs } from "../../ffi/libc.ts";
import { Agent } from "../../src/agent/agent.ts";
import { forEachConcurrently } from "../../src/concurrently.ts";
import { LockdQuestionsClient } from "../../src/agent/lockd-questions.ts";
import { LockdVmLeases, lockdRequestTimeoutMs } from "../../src/agent/vm-leases.ts";
import { logLevels, planes, type LogLevel, type Plane } from "../../src/config/fitha-config.ts";
import { monotonicClock } from "../../src/core/clock.ts";
import { defaultSettings, settingsToJson } from "../../src/core/settings.ts";
import { defaultStrategy, strategyToJson } from "../../src/core/strategy.ts";
import { configureLogging } from "../../src/log.ts";
import { EtcdKv } from "../../src/store/etcd-kv.ts";
import { listEvents } from "../../src/store/events.ts";
import { keys as keysFor } from "../../src/store/keys.ts";
import { taskRecord, type VmRecord } from "../../src/store/records.ts";
import { addVm } from "../../src/store/vm-registry.ts";
import { readDomainDefinition } from "../../src/virt/domain-definition.ts";
import { MemoryHypervisor } from "../../src/virt/memory-hypervisor.ts";
import type { NodeInfo } from "../../src/virt/hypervisor.ts";
import { writeConfig } from "../../test/helpers/config.ts";
import { startEtcd, type LocalEtcd } from "../../test/helpers/etcd.ts";
import { etcdSettings } from "../../test/helpers/etcd-settings.ts";
import { daemonCommand, runFitha } from "../../test/helpers/fitha.ts";
import { killStartedLockds, startLockd } from "../../test/helpers/lockd.ts";
import { terminate } from "../../test/helpers/terminate.ts";
import { tempDir, type TempDir } from "../../test/helpers/tmp.ts";
import { LinkKv, newLinkStats } from "./link-kv.ts";
import { bounded, log, round, sampler, until, type ProcStats } from "./support.ts";

const { values } = parseArgs({
  options: {
    hosts: { type: "string", default: "38" },
    failed: { type: "string", default: "20" },
    vms: { type: "string", default: "1741" },
    "ha-vms": { type: "string", default: "1000" },
    limits: { type: "string", default: "20,100" },
    "start-s": { type: "string", default: "0,30" },
    "io-timeout-s": { type: "string", default: "2" },
    "kill-budget-s": { type: "string", default: "4" },
    clients: { type: "string", default: "4" },
    "max-run-s": { type: "string", default: "7200" },
    json: { type: "string" },
    /** Keep each scenario's directory (logs of the controller, the agents and every lockd) under --keep-dir. */
    "keep-dir": { type: "string" },
    /** The in-process agents' log level (their log goes to agents.log in the scenario's directory). */
    "log-level": { type: "string", default: "warn" },
    /** Run the controller from source under Bun's CPU profiler; its profile (markdown) lands in this directory when it stops. */
    "profile-controller": { type: "string" },
  },
});
const positive = (name: string, value: number) => {
  if (!(Number.isSafeInteger(value) && value > 0)) throw new RangeError(`--${name}: ${value} is not a positive integer`);
  return value;
};
const list = (name: string, text: string) => text.split(",").map((v) => (name === "start-s" && v.trim() === "0" ? 0 : positive(name, Number(v))));
const hostCount = positive("hosts", Number(values.hosts));
const failedCount = positive("failed", Number(values.failed));
const vmCount = positive("vms", Number(values.vms));
const haCount = positive("ha-vms", Number(values["ha-vms"]));
const limits = list("limits", values.limits);
const startTimesS = list("start-s", values["start-s"]);
const ioTimeoutS = positive("io-timeout-s", Number(values["io-timeout-s"]));
const killBudgetS = positive("kill-budget-s", Number(values["kill-budget-s"]));
const clientsPerPlane = positive("clients", Number(values.clients));
const logLevel = values["log-level"];
if (!(logLevels as readonly string[]).includes(logLevel)) throw new RangeError(`--log-level: ${logLevel} is none of ${logLevels.join(", ")}`);
const maxRunMs = positive("max-run-s", Number(values["max-run-s"])) * 1000;
if (failedCount >= hostCount) throw new RangeError("--failed must leave surviving hosts");
if (haCount > vmCount || haCount % failedCount !== 0) throw new RangeError("--ha-vms: at most --vms, and a multiple of --failed (each failed host runs as many)");
if (hostCount > 64) throw new RangeError("at most 64 hosts (the bench's lease file)");

/** The fast heartbeat profile of the control-plane bench; the lease timing from the options. */
const heartbeatIntervalMs = 2_000;
const heartbeatTtlMs = 6_000;
const graceMs = 10_000;
const hostDeadMs = (8 * ioTimeoutS + killBudgetS) * 1000;
/** Every VM: 1 vCPU, 1 GiB (the seed does not say; 1,741 of them fit the 18 survivors' memory). */
const vmMemoryGiB = 1;
/** The seed's machines: 26 × 48 CPUs / 128 GiB, 12 × 24 CPUs / 64 GiB (every third host, up to 12, is a small one). */
const bigNode: NodeInfo = { cpus: 48, memoryKiB: 128 * 1024 * 1024 };
const smallNode: NodeInfo = { cpus: 24, memoryKiB: 64 * 1024 * 1024 };
const leaseSlots = 1024;
const prefix = "/fitha";
const keys = keysFor(prefix);

/** A hypervisor that notes when each start completed (performance.now()), and how many starts each VM had. */
class TimedHypervisor extends MemoryHypervisor {
  readonly startedAtMs = new Map<string, number>();
  readonly starts = new Map<string, number>();

  override async start(nameOrUuid: string): Promise<void> {
    await super.start(nameOrUuid);
    const uuid = (await this.lookup(nameOrUuid))!.uuid;
    this.startedAtMs.set(uuid, performance.now());
    this.starts.set(uuid, (this.starts.get(uuid) ?? 0) + 1);
  }
}

interface BenchHost {
  readonly name: string;
  readonly node: NodeInfo;
  readonly failing: boolean;
  readonly links: Record<Plane, LinkKv>;
  readonly hypervisor: TimedHypervisor;
  readonly socket: string;
  agent?: Agent;
  lockd?: Bun.Subprocess;
}

interface ScenarioResult {
  readonly limit: number;
  readonly perHostLimit: number;
  readonly startS: number;
  readonly haVms: number;
  /** T0 → the last HA VM running on a surviving host. */
  readonly totalS: number;
  /** T0 → the latest failed host's heartbeats expired + grace (detection may decide). */
  readonly detectionFloorS: number;
  /** T0 → the latest failed host's lease renewal + 8T + K (its leases are free). */
  readonly leaseExpiryS: number;
  readonly floorS: number;
  /** floor + start time × VMs ÷ limit. */
  readonly idealS: number;
  readonly overheadS: number;
  /** T0 → the first recovery task (the controller's decision, by its records). */
  readonly firstTaskS: number;
  readonly firstRunningS: number;
  /** The last HA VM running, after the leases expired. */
  readonly lastAfterLeaseExpiryS: number;
  readonly leaseHeldWaits: number;
  readonly failedAttempts: number;
  readonly maxStartsOfOneVm: number;
  readonly processes: Record<string, ProcStats>;
}

let current: { dir: TempDir; etcd: LocalEtcd; controller?: Bun.Subprocess; admin: EtcdKv; clients: EtcdKv[]; hosts: BenchHost[] } | undefined;
let cleaning: Promise<void> | undefined;

async function cleanupScenario(): Promise<void> {
  const scenario = current;
  current = undefined;
  if (scenario === undefined) return;
  await bounded("stopping the agents", Promise.all(scenario.hosts.map((h) => h.agent?.stop())), 30_000);
  await killStartedLockds();
  for (const client of scenario.clients) client.close();
  scenario.admin.close();
  if (scenario.controller !== undefined) await terminate(scenario.controller, 5_000);
  await scenario.etcd.stop();
  if (values["keep-dir"] !== undefined) {
    const kept = join(values["keep-dir"], `failover-${Date.now()}`);
    await Bun.$`cp -r ${scenario.dir.path} ${kept}`.quiet();
    log(`logs kept in ${kept}`);
  }
  await scenario.dir.remove();
}

for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.on(signal, () => {
    log(`${signal}: cleaning up`);
    void (cleaning ??= cleanupScenario()).finally(() => process.exit(130));
  });
}
const runTimer = setTimeout(() => {
  log(`the whole run exceeded ${maxRunMs / 1000} s (--max-run-s): cleaning up`);
  void (cleaning ??= cleanupScenario()).finally(() => process.exit(1));
}, maxRunMs);

function uuidOf(n: number): string {
  return `b0000000-0000-4000-8000-${String(n).padStart(12, "0")}`;
}

function xmlOf(n: number): string {
  return `<domain type='test'><name>vm-${String(n).padStart(4, "0")}</name><uuid>${uuidOf(n)}</uuid><memory unit='GiB'>${vmMemoryGiB}</memory><vcpu>1</vcpu></domain>`;
}

async function runScenario(limit: number, startS: number): Promise<ScenarioResult> {
  const survivors = hostCount - failedCount;
  // Enough per-host room that the global limit is what binds (placement spreads by free memory).
  const perHostLimit = Math.min(limit, Math.max(2, Math.ceil((1.5 * limit) / survivors)));
  log(`scenario: limit ${limit} (per host ${perHostLimit}), start ${startS} s — ${hostCount} hosts, ${failedCount} fail, ${vmCount} VMs, ${haCount} HA`);
  const dir = await tempDir("bench-failover");
  const etcd = await startEtcd({ name: "bench-failover" });
  const settings = etcdSettings({ endpoint: etcd.endpoint, prefix, requestTimeoutMs: 5_000, dialTimeoutMs: 3_000 });
  const admin = EtcdKv.connect(settings, "management");
  const pool = Object.fromEntries(planes.map((plane) => [plane, Array.from({ length: clientsPerPlane }, () => EtcdKv.connect(settings, plane))])) as Record<Plane, EtcdKv[]>;
  const hosts: BenchHost[] = [];
  current = { dir, etcd, admin, clients: planes.flatMap((p) => pool[p]), hosts };
  const linkStats = newLinkStats();
  configureLogging({ level: logLevel as LogLevel, format: "json", stream: createWriteStream(join(dir.path, "agents.log")) });

  // Runtime settings first: the agents and the controller start with them. 20 of 38 hosts is
  // 52.6 % down, past the default self-defense threshold (50 %): the seed's scenario recovers them.
  await admin.put(
    keys.settings,
    JSON.stringify({
      ...settingsToJson(defaultSettings),
      heartbeat_interval_ms: heartbeatIntervalMs,
      heartbeat_ttl_ms: heartbeatTtlMs,
      recovery_concurrency: limit,
      recovery_concurrency_per_host: perHostLimit,
      self_defense_down_percent: 90,
      self_recovery_healthy_percent: 95,
    }),
  );
  await admin.put(keys.strategy, JSON.stringify({ ...strategyToJson(defaultStrategy), grace_ms: graceMs }));
  const leaseFile = join(dir.path, "leases");
  const format = await runFitha(["lease", "format", "--path", leaseFile, "--hosts", "64", "--slots", String(leaseSlots), "--max-io-timeout-ms", String(ioTimeoutS * 1000), "--kill-budget-ms", String(killBudgetS * 1000)]);
  if (format.exitCode !== 0) throw new Error(`lease format: ${format.stderr}`);

  const controllerLog = join(dir.path, "controller.log");
  const config = await writeConfig(dir.path, { management: etcd.endpoint, prefix, extra: `[controller]\nname = "bench"\n` });
  const controllerArgs = ["controller", "--config", config, "--log-format", "json"];
  const profileDir = values["profile-controller"];
  const command =
    profileDir === undefined
      ? daemonCommand(controllerArgs)
      : ["setpriv", "--pdeathsig", "KILL", "--", process.execPath, "--cpu-prof-md", `--cpu-prof-dir=${profileDir}`, join(import.meta.dir, "../../src/cli/main.ts"), ...controllerArgs];
  const controller = Bun.spawn(command, { stdin: "ignore", stdout: Bun.file(controllerLog), stderr: Bun.file(controllerLog), env: { PATH: "/usr/bin:/bin" } });
  current.controller = controller;

  let small = 0;
  for (let i = 0; i < hostCount; i++) {
    const node = i % 3 === 2 && small < 12 ? (small++, smallNode) : bigNode;
    const name = `cn-${String(i + 1).padStart(2, "0")}`;
    hosts.push({
      name,
      node,
      failing: i < failedCount,
      links: Object.fromEntries(planes.map((plane) => [plane, new LinkKv(pool[plane][i % clientsPerPlane]!, linkStats)])) as Record<Plane, LinkKv>,
      hypervisor: new TimedHypervisor({ uri: `memory:///${name}`, node }),
      socket: join(dir.path, name, "lockd.sock"),
    });
  }
  await forEachConcurrently(hosts.entries(), 4, async ([i, host]) => {
    const agent = await Agent.start(
      { host: host.name, addresses: { management: `10.1.0.${i + 1}`, storage: `10.2.0.${i + 1}`, service: `10.3.0.${i + 1}` }, agentVersion: "bench", maxHostId: 64 },
      { clock: monotonicClock, now: () => new Date(), kv: host.links, keys, hypervisor: host.hypervisor, leases: LockdVmLeases.overSocket(host.socket, lockdRequestTimeoutMs), questions: LockdQuestionsClient.overSocket(host.socket, monotonicClock) },
    );
    host.agent = agent;
    const args = ["lockd", "--lease-file", leaseFile, "--host-id", String(agent.hostId), "--host", host.name, "--socket", host.socket, "--state-dir", join(dir.path, host.name, "state"), "--hypervisor", "test:///default", "--io-timeout", String(ioTimeoutS), "--id-allocation", "unique", "--metrics-address", "", "--log-format", "json"];
    host.lockd = await startLockd({ socket: host.socket, stateDir: join(dir.path, host.name, "state"), args }, { logFile: join(dir.path, `${host.name}.lockd.log`) });
  });
  log(`${hostCount} agents and lockds up`);

  // The VMs: 50 HA VMs on each failing host, the plain ones spread over the survivors; each
  // registered, its lease taken by its host's lockd, defined and started there (no boot wait yet).
  const failing = hosts.filter((h) => h.failing);
  const surviving = hosts.filter((h) => !h.failing);
  const vms = Array.from({ length: vmCount }, (_, i) => {
    const ha = i < haCount;
    return { n: i + 1, ha, host: ha ? failing[i % failedCount]! : surviving[(i - haCount) % survivors]!, priority: (i * 7) % 10 };
  });
  await forEachConcurrently(vms, 8, async (vm) => {
    const record: VmRecord = await addVm(admin, keys, { definition: readDomainDefinition(xmlOf(vm.n)), ha: vm.ha, priority: vm.priority, group: "", host: vm.host.name }, { maxSlots: leaseSlots });
    if (record.slot !== null) {
      const got = await LockdVmLeases.overSocket(vm.host.socket, lockdRequestTimeoutMs).acquire(record.uuid, record.slot);
      if (got.kind !== "acquired") throw new Error(`${record.name}: lease held by ${got.holder}`);
    }
    await vm.host.hypervisor.define(record.xml);
    await vm.host.hypervisor.start(record.uuid);
  });
  const haUuids = vms.filter((v) => v.ha).map((v) => uuidOf(v.n));
  log(`${vmCount} VMs registered and running (${haCount} HA with their leases)`);
  await until("the controller leads and sees every host healthy", 120_000, 1_000, async () => {
    if (controller.exitCode !== null) throw new Error(`the controller exited (${controller.exitCode}): see ${controllerLog}`);
    const states = await admin.getPrefix(keys.hostStatesPrefix);
    return states.entries.filter((e) => (JSON.parse(e.value) as { decision: string }).decision === "healthy").length === hostCount;
  });
  await until("every VM's state reported", 120_000, 1_000, async () => (await admin.getPrefix(`${prefix}/vm-states/`)).entries.length >= vmCount);
  for (const host of hosts) host.hypervisor.startMs = startS * 1000;

  // T0: the failing hosts die at once.
  const procs = sampler({ controller: controller.pid, etcd: etcd.pid, bench: "self" });
  const t0Ms = performance.now();
  const t0WallMs = Date.now();
  for (const host of failing) host.lockd!.kill("SIGKILL");
  for (const host of failing) for (const plane of planes) host.links[plane].cut = true;
  const boottimeOffsetMs = clockBoottimeMs() - performance.now();
  void Promise.all(failing.map((h) => h.agent!.stop())).catch((error: unknown) => log(`stopping the failed agents: ${String(error)}`));
  log(`T0: ${failedCount} hosts failed (lockd killed, every plane cut)`);

  const runningAt = () => {
    const at = new Map<string, number>();
    for (const host of surviving) for (const [uuid, ms] of host.hypervisor.startedAtMs) if (haUuids.includes(uuid)) at.set(uuid, ms);
    return at;
  };
  const budgetMs = heartbeatTtlMs + graceMs + hostDeadMs + (startS * 1000 * haCount) / limit + 600_000;
  let reported = 0;
  await until(`all ${haCount} HA VMs running elsewhere`, budgetMs, 250, () => {
    const count = runningAt().size;
    if (count >= reported + 100 || (count === haCount && reported < haCount)) {
      reported = count;
      log(`  ${count} HA VMs running elsewhere, ${round((performance.now() - t0Ms) / 1000)} s after T0`);
    }
    return count === haCount;
  });
  const processes = await procs.stop();
  // The floor, from what the failed hosts last did (see the top of the file).
  let leasesFreeMs = -Infinity;
  for (const host of failing) {
    const state = (await Bun.file(join(dir.path, host.name, "state", "state.json")).json()) as { incarnation: { lastRenewalStartMs: number } };
    leasesFreeMs = Math.max(leasesFreeMs, state.incarnation.lastRenewalStartMs - boottimeOffsetMs + hostDeadMs);
  }
  const decidableMs = Math.max(...failing.flatMap((h) => planes.map((p) => h.links[p].lastRenewalSentMs))) + heartbeatTtlMs + graceMs;
  const floorMs = Math.max(decidableMs, leasesFreeMs) - t0Ms;
  const times = [...runningAt().values()].map((ms) => ms - t0Ms).sort((a, b) => a - b);
  const tasks = (await admin.getPrefix(keys.tasksPrefix)).entries.map((e) => taskRecord(JSON.parse(e.value), e.key));
  const events = (await listEvents(admin, keys, { limit: 100_000 })).events;
  const perVm = new Map<string, number>();
  for (const host of surviving) for (const [uuid, count] of host.hypervisor.starts) if (haUuids.includes(uuid)) perVm.set(uuid, (perVm.get(uuid) ?? 0) + count);
  if (Math.max(...perVm.values()) !== 1) log(`WARNING: a VM was started more than once: ${JSON.stringify([...perVm].filter(([, c]) => c > 1))}`);
  const notDone = tasks.filter((t) => t.state !== "done");
  if (notDone.length > 0) log(`WARNING: ${notDone.length} tasks not done: ${notDone.slice(0, 3).map((t) => `${t.vm} ${t.state} ${t.reason}`).join("; ")}`);

  const totalMs = times.at(-1)!;
  const idealMs = floorMs + (startS * 1000 * haCount) / limit;
  const result: ScenarioResult = {
    limit,
    perHostLimit,
    startS,
    haVms: haCount,
    totalS: round(totalMs / 1000, 2),
    detectionFloorS: round((decidableMs - t0Ms) / 1000, 2),
    leaseExpiryS: round((leasesFreeMs - t0Ms) / 1000, 2),
    floorS: round(floorMs / 1000, 2),
    idealS: round(idealMs / 1000, 2),
    overheadS: round((totalMs - idealMs) / 1000, 2),
    firstTaskS: round((Math.min(...tasks.map((t) => t.createdMs)) - t0WallMs) / 1000, 2),
    firstRunningS: round(times[0]! / 1000, 2),
    lastAfterLeaseExpiryS: round((totalMs - (leasesFreeMs - t0Ms)) / 1000, 2),
    leaseHeldWaits: events.filter((e) => e.record.kind === "recovery-waiting").length,
    failedAttempts: tasks.reduce((sum, t) => sum + t.attempts, 0),
    maxStartsOfOneVm: Math.max(...perVm.values()),
    processes,
  };
  log(`done: total ${result.totalS} s, ideal ${result.idealS} s, overhead ${result.overheadS} s`);
  await cleanupScenario();
  return result;
}

async function main(): Promise<void> {
  const results: ScenarioResult[] = [];
  for (const startS of startTimesS) for (const limit of limits) results.push(await runScenario(limit, startS));
  clearTimeout(runTimer);
  console.log(`\n${hostCount} hosts, ${failedCount} fail, ${vmCount} VMs (${haCount} HA); heartbeat TTL ${heartbeatTtlMs / 1000} s, grace ${graceMs / 1000} s; lease T ${ioTimeoutS} s, K ${killBudgetS} s (host dead 8T + K = ${hostDeadMs / 1000} s)\n`);
  console.log("| limit (per host) | start | total | floor: decidable / leases free | floor + start × VMs ÷ limit | overhead | first task | first running | last running after leases free | lease-held waits | failed attempts | starts per VM | controller CPU avg / max | etcd CPU avg | bench (agents) CPU avg / max |");
  console.log("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
  for (const r of results) {
    const cpu = (p: ProcStats | undefined) => (p === undefined ? "—" : `${p.cpuAvgPercent} % / ${p.cpuMaxPercent} %`);
    console.log(
      `| ${r.limit} (${r.perHostLimit}) | ${r.startS} s | ${r.totalS} s | ${r.detectionFloorS} / ${r.leaseExpiryS} s | ${r.idealS} s | **${r.overheadS} s** | ${r.firstTaskS} s | ${r.firstRunningS} s | ${r.lastAfterLeaseExpiryS} s | ${r.leaseHeldWaits} | ${r.failedAttempts} | ${r.maxStartsOfOneVm} | ${cpu(r.processes["controller"])} | ${r.processes["etcd"]?.cpuAvgPercent ?? "—"} % | ${cpu(r.processes["bench"])} |`,
    );
  }
  if (values.json !== undefined) await Bun.write(values.json, JSON.stringify(results, null, 2));
}

main().then(
  () => process.exit(0),
  async (error: unknown) => {
    log(`failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`);
    await (cleaning ??= cleanupScenario());
    process.exit(1);
  },
);
