/**
 * A fitha cluster of real daemons for end-to-end tests: one etcd (all three planes), controllers,
 * and compute hosts, each with its own libvirtd (the test driver: its VMs are that host's), its
 * own lockd on one shared lease file (or device), and its agent, all from the built binary.
 *
 * Each agent reaches etcd through a link proxy of its own (cut it to partition the host); lockd
 * takes the host id its agent allocated in etcd, so hosts start one after the other.
 */
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import { LockdVmLeases, lockdRequestTimeoutMs } from "../../src/agent/vm-leases.ts";
import { defaultSettings, settingsToJson } from "../../src/core/settings.ts";
import { defaultStrategy, strategyToJson } from "../../src/core/strategy.ts";
import { EtcdKv } from "../../src/store/etcd-kv.ts";
import { keys as keysFor, type Keys } from "../../src/store/keys.ts";
import type { Kv } from "../../src/store/kv.ts";
import { hostRecord } from "../../src/store/records.ts";
import { readRecord } from "../../src/store/typed.ts";
import { addVm } from "../../src/store/vm-registry.ts";
import { readDomainDefinition } from "../../src/virt/domain-definition.ts";
import { LibvirtHypervisor } from "../../src/virt/libvirt-hypervisor.ts";
import { writeConfig } from "./config.ts";
import { startEtcd, type LocalEtcd } from "./etcd.ts";
import { etcdSettings } from "./etcd-settings.ts";
import { eventually } from "./eventually.ts";
import { daemonCommand, runFitha } from "./fitha.ts";
import { domainXml, startLibvirtd, type LocalLibvirtd } from "./libvirtd.ts";
import { startLinkProxy, type LinkProxy } from "./link-proxy.ts";
import { terminate } from "./terminate.ts";
import { tempDir, type TempDir } from "./tmp.ts";

export interface ClusterHost {
  readonly name: string;
  /** The agent's only way to etcd: cut it to partition the host. */
  readonly link: LinkProxy;
  readonly libvirtd: LocalLibvirtd;
  /** The test's own connection to the host's libvirtd. */
  readonly hypervisor: LibvirtHypervisor;
  /** The host's fitha.toml (also good for operator commands). */
  readonly config: string;
  readonly socket: string;
  readonly agent: Bun.Subprocess;
  readonly lockd: Bun.Subprocess;
}

export interface ClusterOptions {
  /** Temp dir and key prefix label: [a-z0-9-]. */
  readonly label: string;
  readonly hosts: number;
  readonly controllers?: number;
  /** The lockspace: a file in the cluster's dir by default, or this path (a block device). */
  readonly leasePath?: string;
  readonly slots?: number;
  /** lockd's I/O timeout T (default 0.5 s; the lockspace allows up to 1 s, K = 2 s). */
  readonly ioTimeoutS?: number;
  /** Runtime settings over the test profile (snake_case, as stored). */
  readonly settings?: Readonly<Record<string, number | boolean>>;
  /** Every daemon serves metrics on a free loopback port (its log says which); off by default: daemons of one machine would all want the default ports. */
  readonly metrics?: boolean;
}

export interface Cluster {
  readonly dir: TempDir;
  readonly etcd: LocalEtcd;
  /** The test's own etcd client. */
  readonly admin: Kv;
  readonly keys: Keys;
  readonly hosts: readonly ClusterHost[];
  /** The controllers, "ctl-1", "ctl-2", … by index. */
  readonly controllers: Bun.Subprocess[];
  /** Registers a VM on `host` and, if HA, starts it there under its lease, as an operator would (`fitha vm add`, `fitha lease acquire`, `virsh start`). */
  runVm(host: ClusterHost, name: string, options: { ha: boolean; priority?: number; memoryKiB?: number }): Promise<string>;
  /** Which of `uuids` run on `host` (none if its libvirtd is gone). */
  runningOn(host: ClusterHost, uuids: readonly string[]): Promise<string[]>;
  /** The controller that leads now, by the election key. */
  leader(): Promise<string | undefined>;
  stop(): Promise<void>;
}

/**
 * The test profile: heartbeats every 500 ms living 2 s, grace 2 s; self-defense thresholds raised
 * (three hosts, failing in turn, would trip the 50 % default): these tests are about recovery.
 */
const testSettings = { heartbeat_interval_ms: 500, heartbeat_ttl_ms: 2_000, self_defense_down_percent: 90, self_recovery_healthy_percent: 95 };

export async function startCluster(options: ClusterOptions): Promise<Cluster> {
  const dir = await tempDir(options.label);
  const children = new Set<Bun.Subprocess>();
  const hosts: ClusterHost[] = [];
  const controllers: Bun.Subprocess[] = [];
  let etcd: LocalEtcd | undefined;
  let admin: Kv | undefined;
  const stop = async () => {
    for (const child of children) await terminate(child, 2_000);
    for (const host of hosts) {
      await host.hypervisor.close().catch(() => undefined);
      await host.libvirtd.stop();
      await host.link.close();
    }
    admin?.close();
    await etcd?.stop();
    await dir.remove();
  };
  try {
    const prefix = `/${options.label}`;
    const keys = keysFor(prefix);
    etcd = await startEtcd();
    const endpoint = etcd.endpoint;
    admin = EtcdKv.connect(etcdSettings({ endpoint }), "management");
    const spawn = (args: string[], log: string) => {
      const child = Bun.spawn(daemonCommand([...args, "--log-format", "json"]), { stdin: "ignore", stdout: "ignore", stderr: Bun.file(log), env: { PATH: "/usr/sbin:/usr/bin:/sbin:/bin" } });
      children.add(child);
      return child;
    };
    const metricsAddress = options.metrics === true ? "127.0.0.1:0" : "";
    const leasePath = options.leasePath ?? join(dir.path, "leases");
    const format = await runFitha(["lease", "format", "--path", leasePath, "--hosts", "8", "--slots", String(options.slots ?? 16), "--max-io-timeout-ms", "1000", "--kill-budget-ms", "2000", ...(options.leasePath === undefined ? [] : ["--force"])]);
    if (format.exitCode !== 0) throw new Error(`fitha lease format: ${format.stderr}`);
    await admin.put(keys.settings, JSON.stringify({ ...settingsToJson(defaultSettings), ...testSettings, ...options.settings }));
    await admin.put(keys.strategy, JSON.stringify({ ...strategyToJson(defaultStrategy), grace_ms: 2_000 }));
    for (let i = 1; i <= (options.controllers ?? 1); i++) {
      const controllerDir = join(dir.path, `ctl-${i}`);
      await mkdir(controllerDir);
      const config = await writeConfig(controllerDir, { prefix, management: endpoint, metricsAddress, extra: `[controller]\nname = "ctl-${i}"\nelection_ttl_ms = 2000\nprobe_interval_ms = 300\n` });
      controllers.push(spawn(["controller", "--config", config], join(controllerDir, "controller.log")));
    }
    for (let i = 1; i <= options.hosts; i++) {
      const name = `host-${i}`;
      const hostDir = join(dir.path, name);
      await mkdir(hostDir);
      const libvirtd = await startLibvirtd();
      const socket = join(hostDir, "run", "lockd.sock");
      const link = await startLinkProxy(endpoint);
      const config = await writeConfig(hostDir, { prefix, management: link.endpoint, dialTimeoutMs: 500, requestTimeoutMs: 1_000, metricsAddress, extra: `[host]\nname = "${name}"\nhypervisor = "${libvirtd.uri}"\nlockd_socket = "${socket}"\n` });
      const agent = spawn(["agent", "--config", config], join(hostDir, "agent.log"));
      await eventually(`${name} registered`, async () => (await admin!.get(keys.host(name))) !== undefined, 20_000, 100);
      const record = await readRecord(admin, keys.host(name), hostRecord);
      if (record === undefined || !("record" in record)) throw new Error(`${name}: no readable host record`);
      const lockd = spawn(
        ["lockd", "--lease-file", leasePath, "--host-id", String(record.record.hostId), "--host", name, "--socket", socket, "--state-dir", join(hostDir, "lockd"), "--hypervisor", libvirtd.uri, "--io-timeout", String(options.ioTimeoutS ?? 0.5), "--id-allocation", "unique", "--metrics-address", metricsAddress],
        join(hostDir, "lockd.log"),
      );
      await eventually(`${name}'s lockd answers`, async () => (await runFitha(["lease", "status", "--socket", socket])).exitCode === 0, 20_000, 100);
      hosts.push({ name, link, libvirtd, hypervisor: await LibvirtHypervisor.open(libvirtd.uri), config, socket, agent, lockd });
    }
    const cluster: Cluster = {
      dir,
      etcd,
      admin,
      keys,
      hosts,
      controllers,
      async runVm(host, name, vm) {
        const definition = readDomainDefinition(domainXml(name, undefined, vm.memoryKiB));
        const record = await addVm(admin!, keys, { definition, ha: vm.ha, priority: vm.priority ?? 0, group: "", host: host.name });
        if (record.slot !== null) {
          const acquired = await LockdVmLeases.overSocket(host.socket, lockdRequestTimeoutMs).acquire(record.uuid, record.slot);
          if (acquired.kind !== "acquired") throw new Error(`${name}: its lease is held by ${acquired.holder}`);
        }
        await host.hypervisor.define(record.xml);
        await host.hypervisor.start(record.uuid);
        return record.uuid;
      },
      async runningOn(host, uuids) {
        const domains = await host.hypervisor.listDomains().catch(() => []);
        return domains.filter((d) => d.state === "running" && uuids.includes(d.uuid)).map((d) => d.uuid);
      },
      async leader() {
        const entry = await admin!.get(keys.election);
        return entry === undefined ? undefined : (JSON.parse(entry.value) as { name?: string }).name;
      },
      stop,
    };
    return cluster;
  } catch (error) {
    await stop();
    throw error;
  }
}
