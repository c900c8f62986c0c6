/**
 * A local fitha cluster on one machine, shown step by step with the real binary: a real etcd
 * (the three network planes share it here), a controller, and three compute hosts — each with
 * its own libvirtd (libvirt's test driver stands in for QEMU: its VMs are that host's), its own
 * lockd on one shared lease file, and its agent. compute-2 runs three HA VMs and one that is not
 * HA; then compute-2 dies (all of it at once), and the demo shows its HA VMs starting on the other
 * hosts once its leases have expired, while the other VM is left alone.
 *
 * Fast settings for the demo, set the way an operator would (`fitha config set`, `fitha strategy
 * set`): heartbeats every 1 s living 3 s, grace 3 s; lockd's I/O timeout 0.5 s with a 2 s kill
 * budget (a host's VM leases can be taken 6 s after its last renewal).
 */
import { join } from "node:path";
import { startEtcd } from "../test/helpers/etcd.ts";
import { writeConfig } from "../test/helpers/config.ts";
import { daemonCommand } from "../test/helpers/fitha.ts";
import { domainXml, startLibvirtd, type LocalLibvirtd } from "../test/helpers/libvirtd.ts";
import { terminate } from "../test/helpers/terminate.ts";
import { tempDir } from "../test/helpers/tmp.ts";
import { LibvirtHypervisor } from "../src/virt/libvirt-hypervisor.ts";
import { EtcdKv } from "../src/store/etcd-kv.ts";
import { keys } from "../src/store/keys.ts";
import { hostRecord } from "../src/store/records.ts";
import { readRecord } from "../src/store/typed.ts";
import { etcdSettings } from "../test/helpers/etcd-settings.ts";

const binary = join(import.meta.dir, "../dist/fitha");
const env = { PATH: process.env["PATH"] ?? "/usr/sbin:/usr/bin:/sbin:/bin" };
const daemons = new Set<Bun.Subprocess>();

interface Host {
  readonly name: string;
  readonly libvirtd: LocalLibvirtd;
  readonly config: string;
  readonly socket: string;
  readonly agent: Bun.Subprocess;
  readonly lockd: Bun.Subprocess;
}

function step(text: string): void {
  process.stdout.write(`\n== ${text}\n`);
}

/** Runs dist/fitha with the output shown as the operator would see it; returns the exit code. */
async function fitha(...args: string[]): Promise<number> {
  process.stdout.write(`$ fitha ${args.join(" ")}\n`);
  const child = Bun.spawn([binary, ...args], { stdout: "inherit", stderr: "inherit", env });
  return await child.exited;
}

/** Runs dist/fitha quietly and returns its stdout (for the demo's own checks). */
async function quietly(...args: string[]): Promise<string> {
  const child = Bun.spawn([binary, ...args], { stdout: "pipe", stderr: "ignore", env });
  const [text] = await Promise.all([new Response(child.stdout).text(), child.exited]);
  return text;
}

/** A daemon in the background (it dies with the demo); its logs go to a file in the demo's dir. */
function daemon(name: string, args: string[], logDir: string): Bun.Subprocess {
  const log = Bun.file(join(logDir, `${name}.log`));
  const child = Bun.spawn(daemonCommand(args), { stdin: "ignore", stdout: log, stderr: log, env });
  daemons.add(child);
  return child;
}

async function until(what: string, condition: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await Bun.sleep(250);
  }
}

await using dir = await tempDir("demo");
const libvirtds: LocalLibvirtd[] = [];
try {
  step("Starting a local etcd server (on a free loopback port, data in a temp dir)");
  await using etcd = await startEtcd({ name: "demo" });
  process.stdout.write(`etcd is up at ${etcd.endpoint}\n`);

  step("A shared lease file: the lockspace every host's lockd uses (host leases and VM leases)");
  const leaseFile = join(dir.path, "leases");
  await fitha("lease", "format", "--path", leaseFile, "--hosts", "8", "--slots", "64", "--max-io-timeout-ms", "1000", "--kill-budget-ms", "2000");

  step("A controller, and fast timings for the demo (an operator's runtime settings)");
  const controllerDir = join(dir.path, "controller");
  await Bun.$`mkdir -p ${controllerDir}`.quiet();
  const config = await writeConfig(controllerDir, { management: etcd.endpoint, extra: `[controller]\nname = "controller-1"\nelection_ttl_ms = 3000\n` });
  await fitha("config", "set", "heartbeat_interval_ms", "1000", "--config", config);
  await fitha("config", "set", "heartbeat_ttl_ms", "3000", "--config", config);
  const strategyFile = join(dir.path, "strategy.json");
  const strategy = JSON.parse(await quietly("strategy", "default")) as { grace_ms: number };
  await Bun.write(strategyFile, JSON.stringify({ ...strategy, grace_ms: 3_000 }, null, 2));
  await fitha("strategy", "set", strategyFile, "--config", config);
  daemon("controller", ["controller", "--config", config], dir.path);

  step("Three compute hosts, each with its own libvirtd (test driver), its agent and its lockd");
  const management = EtcdKv.connect(etcdSettings({ endpoint: etcd.endpoint }), "management");
  const hosts: Host[] = [];
  for (const name of ["compute-1", "compute-2", "compute-3"]) {
    const hostDir = join(dir.path, name);
    await Bun.$`mkdir -p ${hostDir}`.quiet();
    const libvirtd = await startLibvirtd();
    libvirtds.push(libvirtd);
    const socket = join(hostDir, "run", "lockd.sock");
    const hostConfig = await writeConfig(hostDir, { management: etcd.endpoint, extra: `[host]\nname = "${name}"\nhypervisor = "${libvirtd.uri}"\nlockd_socket = "${socket}"\n` });
    const agent = daemon(`${name}-agent`, ["agent", "--config", hostConfig], dir.path);
    // The agent claims the host's lockspace id in etcd; its lockd then joins with that id.
    let hostId = 0;
    await until(`${name} registered`, async () => {
      const registered = await readRecord(management, keys("/fitha").host(name), hostRecord);
      hostId = registered !== undefined && "record" in registered ? registered.record.hostId : 0;
      return hostId > 0;
    }, 30_000);
    const lockd = daemon(`${name}-lockd`, ["lockd", "--lease-file", leaseFile, "--host-id", String(hostId), "--host", name, "--socket", socket, "--state-dir", join(hostDir, "lockd"), "--hypervisor", libvirtd.uri, "--io-timeout", "0.5", "--id-allocation", "unique", "--metrics-address", ""], dir.path);
    await until(`${name}'s lockd`, async () => (await quietly("lease", "status", "--socket", socket)) !== "", 30_000);
    hosts.push({ name, libvirtd, config: hostConfig, socket, agent, lockd });
    process.stdout.write(`${name}: agent, lockd (host id ${hostId}) and libvirtd up\n`);
  }
  const [, compute2] = hosts as [Host, Host, Host];

  step("VMs on compute-2: three HA VMs (their leases taken by compute-2's lockd) and one that is not HA");
  const hypervisor = await LibvirtHypervisor.open(compute2.libvirtd.uri);
  const ha: string[] = [];
  for (const [name, isHa, priority] of [["web-1", true, 5], ["web-2", true, 9], ["db-1", true, 1], ["batch-1", false, 0]] as const) {
    const file = join(dir.path, `${name}.xml`);
    await Bun.write(file, domainXml(name));
    const vm = JSON.parse(await quietly("vm", "add", "--xml", file, ...(isHa ? ["--ha"] : []), "--priority", String(priority), "--host", "compute-2", "--json", "--config", config)) as { uuid: string; slot: number | null; xml: string };
    if (vm.slot !== null) await quietly("lease", "acquire", vm.uuid, "--slot", String(vm.slot), "--socket", compute2.socket);
    await hypervisor.define(vm.xml);
    await hypervisor.start(vm.uuid);
    if (isHa) ha.push(vm.uuid);
  }
  await hypervisor.close();
  await until("every host healthy", async () => (await quietly("status", "--config", config)).split("\n").filter((line) => line.includes("healthy")).length === 3, 30_000);
  await fitha("vm", "list", "--config", config);
  await fitha("status", "--config", config);

  step("compute-2 dies: its agent, its lockd and its libvirtd (with the VMs) killed at once");
  compute2.agent.kill("SIGKILL");
  compute2.lockd.kill("SIGKILL");
  await compute2.libvirtd.stop();
  const diedAtMs = Date.now();
  process.stdout.write("waiting: heartbeats expire (3 s), grace (3 s), compute-2's leases can be taken 6 s after its last renewal...\n");
  const others = hosts.filter((h) => h !== compute2);
  /** Per other host, how many of compute-2's HA VMs run there. */
  const runningElsewhere = async () => {
    const where = new Map<string, number>();
    for (const host of others) {
      const listing = await LibvirtHypervisor.open(host.libvirtd.uri);
      const count = (await listing.listDomains()).filter((d) => d.state === "running" && ha.includes(d.uuid)).length;
      await listing.close();
      if (count > 0) where.set(host.name, count);
    }
    return where;
  };
  const total = (where: Map<string, number>) => [...where.values()].reduce((a, b) => a + b, 0);
  await until("compute-2's HA VMs running elsewhere", async () => total(await runningElsewhere()) === ha.length, 60_000);
  process.stdout.write(`compute-2's ${ha.length} HA VMs run again, ${((Date.now() - diedAtMs) / 1000).toFixed(1)} s after it died\n`);
  await fitha("tasks", "--config", config);
  await fitha("vm", "list", "--config", config);
  await fitha("status", "--config", config);

  const where = [...(await runningElsewhere())].map(([host, count]) => `${host} (${count})`).join(" and ");
  step(`Done: compute-2's HA VMs were healed onto ${where}; batch-1 (not HA) stayed with compute-2`);
  management.close();
} finally {
  for (const child of daemons) await terminate(child, 3_000);
  for (const libvirtd of libvirtds) await libvirtd.stop();
}
