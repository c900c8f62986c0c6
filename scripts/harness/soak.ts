/**
 * scripts/harness/soak: random faults on a harness cluster of real processes, for minutes, with
 * the safety invariant checked all along (the history of every VM on every hypervisor, every
 * second) and liveness at the end (every HA VM runs on exactly one host once everything healed).
 *
 *   scripts/harness/soak --minutes 30 --seed 7 [--hosts 6] [--json]
 *
 * One fault at a time, drawn from the seed: a host's planes cut (some or all), a plane down for
 * everyone, storage hung for one host or for all, lockd/agent/leader SIGKILLed or SIGSTOPped, a
 * power cycle, a management etcd member killed. Each lasts 3–25 s and is healed before the next,
 * with a pause between them. Real time and real processes: the same seed draws the same faults,
 * not the same interleavings. Exit status 0: no overlap and every HA VM runs; 1: otherwise.
 */
import { defineCommand, runMain } from "citty";
import { planes, type Plane } from "../../src/config/fitha-config.ts";
import { Random } from "../../src/sim/random.ts";
import { HarnessCluster, maxHosts } from "./cluster.ts";
import type { Overlap } from "./history.ts";

export const faultKinds = ["cut-planes", "isolate", "plane-down", "storage-host", "storage-all", "kill-lockd", "kill-agent", "kill-leader", "pause-lockd", "pause-agent", "power-cycle", "kill-etcd-member"] as const;
type FaultKind = (typeof faultKinds)[number];

const haVmsPerHost = 2;
/** After everything healed, how long every HA VM has to run again before liveness is judged. */
const finalSettleMs = 90_000;
const maxMinutes = 24 * 60;

interface Fault {
  readonly kind: FaultKind;
  readonly what: string;
  heal(): Promise<void>;
}

async function inject(cluster: HarnessCluster, random: Random, kind: FaultKind): Promise<Fault> {
  const host = random.pick(cluster.hosts);
  switch (kind) {
    case "cut-planes": {
      const cut = planes.filter(() => random.int(0, 1) === 1);
      const chosen: Plane[] = cut.length === 0 ? [random.pick(planes)] : cut;
      await cluster.cut(host, chosen);
      return { kind, what: `${host.name}: ${chosen.join(" + ")} cut`, heal: () => cluster.heal(host, chosen) };
    }
    case "isolate":
      await cluster.cut(host);
      return { kind, what: `${host.name} isolated`, heal: () => cluster.heal(host) };
    case "plane-down": {
      const plane = random.pick(planes);
      await cluster.cutPlane(plane);
      return { kind, what: `the ${plane} plane down for everyone`, heal: () => cluster.healPlane(plane) };
    }
    case "storage-host":
      await cluster.storageHang([host]);
      return { kind, what: `${host.name}: storage hung`, heal: () => cluster.storageHealthy([host]) };
    case "storage-all":
      await cluster.storageHang(cluster.hosts);
      return { kind, what: "storage hung for every host", heal: () => cluster.storageHealthy(cluster.hosts) };
    case "kill-lockd":
    case "kill-agent": {
      const daemon = kind === "kill-lockd" ? host.lockd : host.agent;
      await daemon.kill();
      return { kind, what: `${daemon.name} killed`, heal: async () => daemon.start() };
    }
    case "pause-lockd":
    case "pause-agent": {
      const daemon = kind === "pause-lockd" ? host.lockd : host.agent;
      daemon.pause();
      return { kind, what: `${daemon.name} stopped (SIGSTOP)`, heal: async () => daemon.resume() };
    }
    case "kill-leader": {
      const name = await cluster.leader().catch(() => undefined);
      const leader = cluster.controllers.find((c) => c.name === name) ?? random.pick(cluster.controllers);
      await leader.kill();
      return { kind, what: `controller ${leader.name} killed`, heal: async () => leader.start() };
    }
    case "power-cycle":
      await cluster.powerOff(host);
      return { kind, what: `${host.name} powered off`, heal: () => cluster.powerOn(host) };
    case "kill-etcd-member": {
      const index = random.int(0, cluster.etcd.management!.members.length - 1);
      await cluster.etcd.management!.killMember(index);
      return { kind, what: `management etcd member ${index + 1} killed`, heal: () => cluster.etcd.management!.restartMember(index) };
    }
  }
}

interface SoakReport {
  seed: number;
  minutes: number;
  hosts: number;
  faults: number;
  faults_by_kind: Record<string, number>;
  overlaps: Overlap[];
  not_running: string[];
  running_twice: string[];
  history_rounds: number;
  vm_starts_seen: number;
  log_dir: string | null;
}

const main = defineCommand({
  meta: { name: "soak", description: "Random faults on a harness cluster of real processes, the safety invariant checked all along" },
  args: {
    minutes: { type: "string", required: true, description: "How long to inject faults (then a final settle of 90 s)" },
    seed: { type: "string", default: "1", description: "Draws the faults, their hosts and durations" },
    hosts: { type: "string", default: "6", description: `Compute hosts (1–${maxHosts})` },
    json: { type: "boolean", description: "A report document on stdout" },
  },
  async run({ args }) {
    const minutes = Number(args.minutes);
    const seed = Number(args.seed);
    const hosts = Number(args.hosts);
    if (!(minutes > 0 && minutes <= maxMinutes)) usage(`--minutes: a number from 0 to ${maxMinutes}, not ${args.minutes}`);
    if (!Number.isSafeInteger(seed)) usage(`--seed: a whole number, not ${args.seed}`);
    if (!(Number.isInteger(hosts) && hosts >= 2 && hosts <= maxHosts)) usage(`--hosts: 2–${maxHosts}, not ${args.hosts}`);
    const random = new Random(seed);
    const say = (line: string) => console.error(`[${new Date().toISOString()}] ${line}`);
    say(`bringing up ${hosts} hosts`);
    const cluster = await HarnessCluster.start({ label: "soak", hosts });
    const stopping = () => void cluster.stop().then(() => process.exit(130));
    process.once("SIGINT", stopping);
    process.once("SIGTERM", stopping);
    const byKind: Record<string, number> = {};
    let faults = 0;
    let failed = false;
    try {
      const ha: string[] = [];
      for (const host of cluster.hosts) {
        for (let i = 1; i <= haVmsPerHost; i++) ha.push(await cluster.runVm(host, `${host.name}-ha-${i}`, { ha: true, priority: i }));
        await cluster.runVm(host, `${host.name}-plain`, { ha: false });
      }
      const deadline = performance.now() + minutes * 60_000;
      while (performance.now() < deadline && !failed) {
        const kind = random.pick(faultKinds);
        const fault = await inject(cluster, random, kind);
        faults++;
        byKind[kind] = (byKind[kind] ?? 0) + 1;
        const holdMs = random.int(3_000, 25_000);
        say(`fault ${faults}: ${fault.what} for ${(holdMs / 1000).toFixed(1)} s`);
        failed = await watch(cluster, holdMs, say);
        await fault.heal();
        failed ||= await watch(cluster, random.int(5_000, 30_000), say);
      }
      say(`faults over; ${finalSettleMs / 1000} s for every HA VM to run again`);
      if (!failed) await watch(cluster, finalSettleMs, say);
      const where = ha.map((vm) => ({ vm, hosts: cluster.history.runningOn(vm) }));
      const report: SoakReport = {
        seed,
        minutes,
        hosts,
        faults,
        faults_by_kind: byKind,
        overlaps: cluster.history.overlaps(),
        not_running: where.filter((w) => w.hosts.length === 0).map((w) => w.vm),
        running_twice: where.filter((w) => w.hosts.length > 1).map((w) => w.vm),
        history_rounds: cluster.history.rounds,
        vm_starts_seen: cluster.history.intervals().length,
        log_dir: null,
      };
      const ok = report.overlaps.length === 0 && report.not_running.length === 0 && report.running_twice.length === 0;
      if (!ok) process.env["FITHA_HARNESS_KEEP"] = "1";
      report.log_dir = ok ? null : cluster.dir.path;
      if (args.json) console.log(JSON.stringify(report, null, 2));
      else console.log(`soak seed ${seed}: ${minutes} min, ${faults} faults (${Object.entries(byKind).map(([k, n]) => `${k} ${n}`).join(", ")}); overlaps ${report.overlaps.length}, HA VMs not running ${report.not_running.length}, running twice ${report.running_twice.length}${ok ? "" : `; logs kept in ${cluster.dir.path}`}`);
      process.exitCode = ok ? 0 : 1;
    } finally {
      await cluster.stop();
    }
  },
});

/** Watches the history for `ms`; true (and says so) at the first overlap. */
async function watch(cluster: HarnessCluster, ms: number, say: (line: string) => void): Promise<boolean> {
  const until = performance.now() + ms;
  while (performance.now() < until) {
    const overlaps = cluster.history.overlaps();
    if (overlaps.length > 0) {
      say(`OVERLAP: ${JSON.stringify(overlaps)}`);
      return true;
    }
    await Bun.sleep(Math.min(1_000, Math.max(0, until - performance.now())));
  }
  return false;
}

function usage(message: string): never {
  console.error(`scripts/harness/soak: ${message}`);
  process.exit(2);
}

await runMain(main);
