/**
 * Recovery end to end with the real daemons: one etcd (all three planes), a controller, and three
 * compute hosts, each with its own libvirtd (the test driver: its VMs are that host's), its own
 * lockd on one shared lease file, and its agent. host-1 runs three HA VMs and one plain VM; then
 * host-1 dies (agent, lockd and libvirtd killed). Its HA VMs must run again on the other hosts —
 * none before host-1's leases could expire — and the plain VM must not move.
 *
 * Timing: lockd T = 0.5 s and K = 2 s (host-dead 6 s after the last renewal), heartbeats every
 * 500 ms living 2 s, grace 2 s.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { defaultSettings, settingsToJson } from "../../src/core/settings.ts";
import { defaultStrategy, strategyToJson } from "../../src/core/strategy.ts";
import { EtcdKv } from "../../src/store/etcd-kv.ts";
import { keys as keysFor } from "../../src/store/keys.ts";
import type { Kv } from "../../src/store/kv.ts";
import { hostRecord, taskRecord, vmRecord } from "../../src/store/records.ts";
import { readRecord } from "../../src/store/typed.ts";
import { LibvirtHypervisor } from "../../src/virt/libvirt-hypervisor.ts";
import { writeConfig } from "../helpers/config.ts";
import { startEtcd, type LocalEtcd } from "../helpers/etcd.ts";
import { etcdSettings } from "../helpers/etcd-settings.ts";
import { eventually } from "../helpers/eventually.ts";
import { daemonCommand, runFitha } from "../helpers/fitha.ts";
import { domainXml, startLibvirtd, type LocalLibvirtd } from "../helpers/libvirtd.ts";
import { startLinkProxy, type LinkProxy } from "../helpers/link-proxy.ts";
import { terminate } from "../helpers/terminate.ts";
import { tempDir, type TempDir } from "../helpers/tmp.ts";

const prefix = "/fitha-rec";
const keys = keysFor(prefix);
const children = new Set<Bun.Subprocess>();
let dir: TempDir;
let etcd: LocalEtcd;
let admin: Kv;

interface Host {
  name: string;
  /** The agent's only way to etcd (all planes share the one etcd here): cut it to partition the host. */
  link: LinkProxy;
  libvirtd: LocalLibvirtd;
  hypervisor: LibvirtHypervisor;
  config: string;
  socket: string;
  agent: Bun.Subprocess;
  lockd: Bun.Subprocess;
}
const hosts: Host[] = [];

function spawn(args: string[]): Bun.Subprocess<"ignore", "ignore", "pipe"> {
  const child = Bun.spawn(daemonCommand([...args, "--log-format", "json"]), { stdin: "ignore", stdout: "ignore", stderr: "pipe", env: { PATH: "/usr/sbin:/usr/bin:/sbin:/bin" } });
  children.add(child);
  return child;
}

beforeAll(async () => {
  dir = await tempDir("recovery");
  etcd = await startEtcd();
  admin = EtcdKv.connect(etcdSettings({ endpoint: etcd.endpoint }), "management");
  const format = await runFitha(["lease", "format", "--path", join(dir.path, "leases"), "--hosts", "8", "--slots", "16", "--max-io-timeout-ms", "1000", "--kill-budget-ms", "2000"]);
  expect(format.exitCode).toBe(0);
  // Three hosts, two of them failing in turn: self-defense (50 % down) would suspend HA; these tests are about recovery.
  await admin.put(keys.settings, JSON.stringify({ ...settingsToJson(defaultSettings), heartbeat_interval_ms: 500, heartbeat_ttl_ms: 2_000, self_defense_down_percent: 90, self_recovery_healthy_percent: 95 }));
  await admin.put(keys.strategy, JSON.stringify({ ...strategyToJson(defaultStrategy), grace_ms: 2_000 }));
  const controllerDir = join(dir.path, "controller");
  await Bun.$`mkdir -p ${controllerDir}`.quiet();
  spawn(["controller", "--config", await writeConfig(controllerDir, { prefix, management: etcd.endpoint, extra: `[controller]\nname = "ctl"\nelection_ttl_ms = 2000\nprobe_interval_ms = 300\n` })]);
  // One host after the other: each agent's lockspace host id (1, 2, 3) is known before its lockd starts.
  for (const name of ["host-1", "host-2", "host-3"]) {
    const hostDir = join(dir.path, name);
    await Bun.$`mkdir -p ${hostDir}`.quiet();
    const libvirtd = await startLibvirtd();
    const socket = join(hostDir, "run", "lockd.sock");
    const link = await startLinkProxy(etcd.endpoint);
    const config = await writeConfig(hostDir, { prefix, management: link.endpoint, dialTimeoutMs: 500, requestTimeoutMs: 1_000, extra: `[host]\nname = "${name}"\nhypervisor = "${libvirtd.uri}"\nlockd_socket = "${socket}"\n` });
    const agent = spawn(["agent", "--config", config]);
    await eventually(`${name} registered`, async () => (await admin.get(keys.host(name))) !== undefined, 20_000, 100);
    const record = await readRecord(admin, keys.host(name), hostRecord);
    const hostId = record !== undefined && "record" in record ? record.record.hostId : 0;
    const lockd = spawn(["lockd", "--lease-file", join(dir.path, "leases"), "--host-id", String(hostId), "--host", name, "--socket", socket, "--state-dir", join(hostDir, "lockd"), "--hypervisor", libvirtd.uri, "--io-timeout", "0.5", "--id-allocation", "unique"]);
    await eventually(`${name}'s lockd answers`, async () => (await runFitha(["lease", "status", "--socket", socket])).exitCode === 0, 20_000, 100);
    hosts.push({ name, link, libvirtd, hypervisor: await LibvirtHypervisor.open(libvirtd.uri), config, socket, agent, lockd });
  }
}, 120_000);

afterAll(async () => {
  for (const child of children) await terminate(child, 2_000);
  for (const host of hosts) {
    await host.hypervisor.close().catch(() => undefined);
    await host.libvirtd.stop();
    await host.link.close();
  }
  admin?.close();
  await etcd?.stop();
  await dir?.remove();
}, 60_000);

/** Registers a VM as running on `host` and, if HA, starts it there under its lease — as an operator would. */
async function runVm(host: Host, name: string, ha: boolean, priority: number): Promise<string> {
  const file = join(dir.path, `${name}.xml`);
  await Bun.write(file, domainXml(name));
  const added = await runFitha(["vm", "add", "--xml", file, ...(ha ? ["--ha"] : []), "--priority", String(priority), "--host", host.name, "--json", "--config", hosts[0]!.config]);
  expect(added.stderr).toBe("");
  const vm = JSON.parse(added.stdout) as { uuid: string; slot: number | null; xml: string };
  if (vm.slot !== null) expect((await runFitha(["lease", "acquire", vm.uuid, "--slot", String(vm.slot), "--socket", host.socket])).exitCode).toBe(0);
  await host.hypervisor.define(vm.xml);
  await host.hypervisor.start(vm.uuid);
  return vm.uuid;
}

async function runningOn(host: Host, uuids: readonly string[]): Promise<string[]> {
  const domains = await host.hypervisor.listDomains().catch(() => []);
  return domains.filter((d) => d.state === "running" && uuids.includes(d.uuid)).map((d) => d.uuid);
}

describe("recovery end to end", () => {
  test("host-1 dies: its HA VMs run on the other hosts, not before its leases expired; its plain VM stays", async () => {
    const [host1, host2, host3] = hosts as [Host, Host, Host];
    const ha = [await runVm(host1, "web-1", true, 5), await runVm(host1, "web-2", true, 9), await runVm(host1, "db-1", true, 1)];
    const plain = await runVm(host1, "batch-1", false, 0);
    expect((await runningOn(host1, [...ha, plain])).sort()).toEqual([...ha, plain].sort());

    // host-1 dies: everything on it at once.
    host1.agent.kill("SIGKILL");
    host1.lockd.kill("SIGKILL");
    const diedAtMs = Date.now();
    await host1.hypervisor.close();
    await host1.libvirtd.stop();

    await eventually("every HA VM running on host-2 or host-3", async () => [...(await runningOn(host2, ha)), ...(await runningOn(host3, ha))].length === ha.length, 60_000, 250);
    const healedAfterMs = Date.now() - diedAtMs;
    // host-dead is 8T + K = 6 s after host-1's last renewal; no VM may run elsewhere before.
    expect(healedAfterMs).toBeGreaterThanOrEqual(6_000 - 1_000);
    const elsewhere = [...(await runningOn(host2, ha)), ...(await runningOn(host3, ha))];
    expect(elsewhere.sort()).toEqual([...ha].sort());
    // Each exactly once: no VM on both.
    expect(new Set(elsewhere).size).toBe(ha.length);
    for (const uuid of ha) {
      const task = await readRecord(admin, keys.task(uuid), taskRecord);
      expect(task !== undefined && "record" in task ? task.record.state : undefined).toBe("done");
      const vm = await readRecord(admin, keys.vm(uuid), vmRecord);
      expect(vm !== undefined && "record" in vm ? vm.record.host : undefined).not.toBe("host-1");
    }
    // The plain VM has no task and stays registered on host-1.
    expect(await admin.get(keys.task(plain))).toBeUndefined();
    const tasks = await runFitha(["tasks", "--json", "--config", host2.config]);
    expect((JSON.parse(tasks.stdout) as { tasks: unknown[] }).tasks).toHaveLength(3);
  }, 120_000);

  test("host-2 cut from every plane while its lockd still renews (seed cases 3, 4): it fences itself, its HA VMs move to host-3, never running on both", async () => {
    const [, host2, host3] = hosts as [Host, Host, Host];
    const vms = (await runFitha(["vm", "list", "--json", "--config", host3.config])).stdout;
    const ha = (JSON.parse(vms) as { vms: Array<{ uuid: string; ha: boolean; host: string }> }).vms.filter((v) => v.ha && v.host === "host-2").map((v) => v.uuid);
    expect(ha.length).toBeGreaterThan(0);
    expect((await runningOn(host2, ha)).sort()).toEqual([...ha].sort());
    host2.link.cut("reset");
    let overlap = false;
    await eventually(
      "host-2's HA VMs running on host-3",
      async () => {
        const [on2, on3] = [await runningOn(host2, ha), await runningOn(host3, ha)];
        if (on2.some((vm) => on3.includes(vm))) overlap = true;
        return on3.length === ha.length;
      },
      60_000,
      100,
    );
    expect(overlap).toBe(false);
    expect(await runningOn(host2, ha)).toEqual([]);
    host2.link.restore();
  }, 120_000);
});
