/**
 * A fitha cluster of real processes in network namespaces (issue 8): per plane one etcd cluster
 * (management: 3 members), 3 controllers, and N compute hosts, each with its own libvirtd (the
 * test driver: its VMs are that host's), its lockd and watchdog on one lease file in an ext4 file
 * system on a loop device, and its agent — all from the built binary, each host in its own
 * namespace with a link per plane. The operator's commands run in an admin namespace. Faults are
 * real: links set down in the fabric, processes killed or stopped, I/O to the lease storage hung
 * through a blkio throttle, etcd members killed.
 *
 * Needs root. Everything it creates — namespaces, processes, the loop device and its mount,
 * cgroups, the temp dir — is removed by stop(), also after a failed start; processes die with the
 * harness (pdeathsig) even if stop() never runs, and the next run removes namespaces left behind.
 */
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import { LockdVmLeases, lockdRequestTimeoutMs } from "../../src/agent/vm-leases.ts";
import { planes, type Plane } from "../../src/config/fitha-config.ts";
import { defaultStrategy, strategyToJson } from "../../src/core/strategy.ts";
import { LibvirtHypervisor } from "../../src/virt/libvirt-hypervisor.ts";
import { attachLoop, createBlkioCgroup, mountNewExt4, type BlkioCgroup, type LoopDevice, type Mount } from "../../test/helpers/block-device.ts";
import { writeConfig } from "../../test/helpers/config.ts";
import { fithaBinary } from "../../test/helpers/fitha.ts";
import { domainXml, startLibvirtd } from "../../test/helpers/libvirtd.ts";
import { tempDir, type TempDir } from "../../test/helpers/tmp.ts";
import { Daemon } from "./daemon.ts";
import { EtcdCluster } from "./etcd-cluster.ts";
import { Fabric, removeStaleFabrics } from "./fabric.ts";
import { History } from "./history.ts";
import { runInNamespace, type CommandResult } from "./namespace-command.ts";
import { buildGuestKernel, ensureMountPoints, ensureQemuUser, qemuDomainXml, removeMountPoints, startQemuLibvirtd } from "./qemu-host.ts";

export const maxHosts = 20;

/** What the harness reads of `fitha status --json` (src/cli/commands/status.ts has all of it). */
export interface StatusJson {
  readonly planes: ReadonlyArray<{ readonly plane: Plane; readonly reachable: boolean; readonly error: string | null }>;
  readonly state: {
    readonly leader: string | null;
    readonly mode: { readonly mode: string } | null;
    readonly hosts: ReadonlyArray<{ readonly name: string; readonly host_id: number | null; readonly view: { readonly decision: string } | null }>;
  } | null;
  readonly state_error: string | null;
}
const leaseImageBytes = 64 * 1024 * 1024;
const startTimeoutMs = 30_000;

export interface HarnessOptions {
  /** Temp dir label: [a-z0-9-]. */
  readonly label: string;
  readonly hosts: number;
  readonly controllers?: number;
  readonly managementMembers?: number;
  readonly slots?: number;
  /** lockd's I/O timeout T in seconds (default 1: leases can be taken 10 s after a host's last renewal). */
  readonly ioTimeoutS?: number;
  /** Runtime settings over the harness profile (snake_case, as stored). */
  readonly settings?: Readonly<Record<string, number | boolean>>;
  /** The strategy's grace period (default 2 s). */
  readonly graceMs?: number;
  /** How often the history polls every host's hypervisor (default 20 ms). */
  readonly historyPollMs?: number;
  /**
   * The first this many hosts run a real libvirtd with QEMU and fitha's qemu hook (qemu-host.ts)
   * instead of libvirt's test driver (default 0).
   */
  readonly qemuHosts?: number;
}

/**
 * The harness profile: heartbeats every 500 ms living 2 s; self-defense thresholds raised so that
 * scenarios on a handful of hosts are about what they test (a scenario that tests self-defense
 * sets them back).
 */
export const harnessSettings = { heartbeat_interval_ms: 500, heartbeat_ttl_ms: 2_000, self_defense_down_percent: 90, self_recovery_healthy_percent: 95 };

export interface HarnessHost {
  readonly name: string;
  readonly netns: string;
  readonly dir: string;
  readonly config: string;
  readonly socket: string;
  readonly hostId: number;
  readonly agent: Daemon;
  readonly lockd: Daemon;
  readonly watchdog: Daemon;
  /** "qemu": a real libvirtd with QEMU guests and the qemu hook; "test": libvirt's test driver. */
  readonly hypervisorKind: "test" | "qemu";
  /** Replaced at power on; undefined while powered off. */
  libvirtd: { readonly uri: string; readonly qemuRunDir?: string; stop(): Promise<void> } | undefined;
  hypervisor: LibvirtHypervisor | undefined;
  /** lockd's and the watchdog's I/O to the lease storage (for storage faults). */
  readonly storagePath: BlkioCgroup;
}

export class HarnessCluster {
  readonly hosts: HarnessHost[] = [];
  readonly controllers: Daemon[] = [];
  readonly etcd: Partial<Record<Plane, EtcdCluster>> = {};
  readonly history: History;
  adminConfig = "";
  leaseFile = "";
  #loop: LoopDevice | undefined;
  /** The guest kernel of QEMU hosts; mount points and the libvirt-qemu user the harness created. */
  #guestKernel = "";
  #createdMountPoints: string[] = [];
  #mount: Mount | undefined;
  #stopped: Promise<void> | undefined;

  private constructor(
    readonly options: HarnessOptions,
    readonly dir: TempDir,
    readonly fabric: Fabric,
  ) {
    this.history = new History(options.historyPollMs ?? 20);
  }

  static async start(options: HarnessOptions): Promise<HarnessCluster> {
    if (!(Number.isInteger(options.hosts) && options.hosts >= 1 && options.hosts <= maxHosts)) throw new RangeError(`hosts ${options.hosts} (1–${maxHosts})`);
    if (process.getuid?.() !== 0) throw new Error("the harness needs root (network namespaces, a loop device, cgroups)");
    await removeStaleFabrics();
    const dir = await tempDir(`harness-${options.label}`);
    let fabric: Fabric;
    try {
      fabric = await Fabric.create();
    } catch (error) {
      await dir.remove();
      throw error;
    }
    const cluster = new HarnessCluster(options, dir, fabric);
    try {
      await cluster.#bringUp();
    } catch (error) {
      await cluster.stop();
      throw error;
    }
    return cluster;
  }

  host(name: string): HarnessHost {
    const host = this.hosts.find((h) => h.name === name);
    if (host === undefined) throw new Error(`no host ${name}`);
    return host;
  }

  /** `fitha ARGS… --config <admin>` in the admin namespace, as an operator would run it. */
  async fitha(...args: string[]): Promise<CommandResult> {
    return await runInNamespace(this.fabric.node("admin").netns, [fithaBinary, ...args, "--config", this.adminConfig]);
  }

  /** `fitha ARGS… --json`, parsed; throws with its stderr if it fails. */
  async fithaJson<T>(...args: string[]): Promise<T> {
    const result = await this.fitha(...args, "--json");
    if (result.exitCode !== 0) throw new Error(`fitha ${args.join(" ")}: exit ${result.exitCode}: ${result.stderr.trim()}`);
    return JSON.parse(result.stdout) as T;
  }

  /** `fitha ARGS…` in `host`'s namespace, as root on that host would run it (lockd's socket is there). */
  async fithaOn(host: HarnessHost, ...args: string[]): Promise<CommandResult> {
    return await runInNamespace(host.netns, [fithaBinary, ...args]);
  }

  /** lockd's host lease phase on `host` ("ok", "warn", "grace", "failed"), undefined if lockd does not answer. */
  async lockdPhase(host: HarnessHost): Promise<string | undefined> {
    const result = await this.fithaOn(host, "lease", "status", "--socket", host.socket, "--json");
    return result.exitCode === 0 ? (JSON.parse(result.stdout) as { phase: string }).phase : undefined;
  }

  /**
   * `fitha status --json`. Its exit status is 1 when any plane's cluster did not answer the admin
   * node's probe (under load, a member can be slow): the state read from management counts anyway.
   */
  async status(): Promise<StatusJson> {
    const result = await this.fitha("status", "--json");
    if (result.stdout.trim() === "") throw new Error(`fitha status: exit ${result.exitCode}: ${result.stderr.trim()}`);
    const status = JSON.parse(result.stdout) as StatusJson;
    if (status.state === null) throw new Error(`fitha status: no state: ${status.state_error}`);
    return status;
  }

  /** The leading controller's name, as `fitha status` reports it. */
  async leader(): Promise<string | undefined> {
    return (await this.status()).state?.leader ?? undefined;
  }

  /** The leader's decision on `host` ("healthy", "grace", "ha-needed", …), if it has one. */
  async decision(host: HarnessHost): Promise<string | undefined> {
    return (await this.status()).state?.hosts.find((h) => h.name === host.name)?.view?.decision;
  }

  /** Registers a VM on `host` and, if HA, starts it there under its lease — `fitha vm add`, lease acquire, `virsh start`. */
  async runVm(host: HarnessHost, name: string, vm: { ha: boolean; priority?: number; memoryKiB?: number }): Promise<string> {
    const file = join(this.dir.path, `${name}.xml`);
    if (host.hypervisorKind === "qemu") {
      // Its disk on the shared storage, as a real VM's would be.
      const disk = join(this.#mount!.path, `${name}.img`);
      await Bun.$`truncate -s 1M ${disk}`.quiet();
      await Bun.write(file, qemuDomainXml(name, this.#guestKernel, disk));
    } else {
      await Bun.write(file, domainXml(name, undefined, vm.memoryKiB));
    }
    const record = await this.fithaJson<{ uuid: string; slot: number | null; xml: string }>("vm", "add", "--xml", file, ...(vm.ha ? ["--ha"] : []), "--priority", String(vm.priority ?? 0), "--host", host.name);
    if (record.slot !== null) {
      const acquired = await LockdVmLeases.overSocket(host.socket, lockdRequestTimeoutMs).acquire(record.uuid, record.slot);
      if (acquired.kind !== "acquired") throw new Error(`${name}: its lease is held by ${acquired.holder}`);
    }
    const hypervisor = this.#hypervisor(host);
    await hypervisor.define(record.xml);
    await hypervisor.start(record.uuid);
    return record.uuid;
  }

  // Faults. Each says what it does in the terms of the seed.

  /** Cuts `host`'s links to `planes` (all three: the host is isolated). */
  async cut(host: HarnessHost, on: readonly Plane[] = planes): Promise<void> {
    for (const plane of on) await this.fabric.setLink(this.#node(host), plane, false);
  }

  async heal(host: HarnessHost, on: readonly Plane[] = planes): Promise<void> {
    for (const plane of on) await this.fabric.setLink(this.#node(host), plane, true);
  }

  /** A plane down for everyone: its bridge, so its etcd cluster too. */
  async cutPlane(plane: Plane): Promise<void> {
    await this.fabric.setPlane(plane, false);
  }

  async healPlane(plane: Plane): Promise<void> {
    await this.fabric.setPlane(plane, true);
  }

  /** Every I/O of `hosts`' lockd and watchdog to the lease storage hangs (D state) until `storageHealthy`. */
  async storageHang(hosts: readonly HarnessHost[]): Promise<void> {
    for (const host of hosts) await host.storagePath.hang(this.#loop!.majorMinor);
  }

  async storageHealthy(hosts: readonly HarnessHost[]): Promise<void> {
    for (const host of hosts) await host.storagePath.release(this.#loop!.majorMinor);
  }

  /** Power loss: every fitha process of the host and its hypervisor (with the VMs) die at once. */
  async powerOff(host: HarnessHost): Promise<void> {
    await Promise.all([host.agent.kill(), host.lockd.kill(), host.watchdog.kill(), host.libvirtd?.stop()]);
    await host.hypervisor?.close().catch(() => undefined);
    host.libvirtd = undefined;
    host.hypervisor = undefined;
  }

  /** Boots again: a fresh, empty hypervisor, then lockd, watchdog and agent (its VMs are gone). */
  async powerOn(host: HarnessHost): Promise<void> {
    if (host.libvirtd !== undefined) throw new Error(`${host.name} is on`);
    await this.#startHypervisor(host);
    await this.#writeHostConfig(host, this.#endpoints());
    host.lockd.start();
    host.watchdog.start();
    host.agent.start();
  }

  /** Which of `uuids` run on `host` now (none while it is off). */
  async runningOn(host: HarnessHost, uuids: readonly string[]): Promise<string[]> {
    if (host.hypervisor === undefined) return [];
    const domains = await host.hypervisor.listDomains().catch(() => []);
    return domains.filter((d) => d.state === "running" && uuids.includes(d.uuid)).map((d) => d.uuid);
  }

  /** Stops and removes everything; idempotent, never throws. */
  stop(): Promise<void> {
    return (this.#stopped ??= (async () => {
      await this.history.stop();
      // A host whose bring-up failed half way lacks some of them.
      const daemons = [...this.controllers, ...this.hosts.flatMap((h) => [h.agent, h.watchdog, h.lockd])].filter((d): d is Daemon => d !== undefined);
      // Storage first: a process in D state cannot die until its I/O completes. The cgroups go
      // once their processes are gone (rmdir refuses a cgroup with processes in it).
      if (this.#loop !== undefined) for (const host of this.hosts) await host.storagePath.release(this.#loop.majorMinor).catch(() => undefined);
      await Promise.all(daemons.map((d) => d.stop().catch(() => undefined)));
      for (const host of this.hosts) await host.storagePath.remove().catch(() => undefined);
      for (const host of this.hosts) {
        await host.hypervisor?.close().catch(() => undefined);
        await host.libvirtd?.stop().catch(() => undefined);
      }
      for (const cluster of Object.values(this.etcd)) await cluster.stop();
      await this.fabric.remove();
      await removeMountPoints(this.#createdMountPoints);
      await this.#mount?.unmount().catch(() => undefined);
      await this.#loop?.detach().catch(() => undefined);
      // FITHA_HARNESS_KEEP=1 keeps the logs (every daemon's, etcd's) for a look after a failure.
      if (process.env["FITHA_HARNESS_KEEP"] === "1") console.error(`harness: kept ${this.dir.path}`);
      else await this.dir.remove().catch(() => undefined);
    })());
  }

  async #bringUp(): Promise<void> {
    const { options, fabric } = this;
    const controllers = options.controllers ?? 3;
    // Node numbers: hosts 1–20, controllers 31–, admin 50.
    await fabric.addNode("admin", 50, planes);
    for (const plane of planes) {
      const etcdDir = join(this.dir.path, "etcd");
      this.etcd[plane] = await EtcdCluster.start(fabric, plane, plane === "management" ? (options.managementMembers ?? 3) : 1, etcdDir);
    }
    const endpoints = this.#endpoints();
    const adminDir = join(this.dir.path, "admin");
    await mkdir(adminDir);
    this.adminConfig = await writeConfig(adminDir, { ...endpoints, dialTimeoutMs: 1_000, requestTimeoutMs: 3_000 });

    await this.#leaseStorage();
    if ((options.qemuHosts ?? 0) > 0) {
      await ensureQemuUser();
      this.#createdMountPoints = await ensureMountPoints();
      const guestDir = join(this.dir.path, "guest");
      await mkdir(guestDir);
      this.#guestKernel = await buildGuestKernel(guestDir);
    }
    for (const [name, value] of Object.entries({ ...harnessSettings, ...options.settings })) await this.#must(this.fitha("config", "set", name, String(value)));
    const strategyFile = join(adminDir, "strategy.json");
    await Bun.write(strategyFile, JSON.stringify({ ...strategyToJson(defaultStrategy), grace_ms: options.graceMs ?? 2_000 }));
    await this.#must(this.fitha("strategy", "set", strategyFile));

    for (let i = 1; i <= controllers; i++) {
      const name = `ctl${i}`;
      const node = await fabric.addNode(name, 30 + i, planes);
      const controllerDir = join(this.dir.path, name);
      await mkdir(controllerDir);
      const config = await writeConfig(controllerDir, { ...endpoints, dialTimeoutMs: 1_000, requestTimeoutMs: 2_000, extra: `[controller]\nname = "${name}"\nelection_ttl_ms = 2000\nprobe_interval_ms = 300\n` });
      const daemon = new Daemon(name, node.netns, () => [fithaBinary, "controller", "--config", config, "--log-format", "json"], join(controllerDir, "controller.log"));
      this.controllers.push(daemon);
      daemon.start();
    }
    for (let i = 1; i <= options.hosts; i++) await this.#addHost(i, endpoints);
    this.history.start();
  }

  /** An ext4 image on a loop device (a shared LUN), the lockspace a file on it. */
  async #leaseStorage(): Promise<void> {
    const image = join(this.dir.path, "lease-storage.img");
    await Bun.write(image, new Uint8Array(0));
    await Bun.$`truncate -s ${leaseImageBytes} ${image}`.quiet();
    this.#loop = await attachLoop(image);
    this.#mount = await mountNewExt4(this.#loop.path, join(this.dir.path, "lease-storage"));
    this.leaseFile = join(this.#mount.path, "leases");
    const slots = this.options.slots ?? 64;
    const format = await runInNamespace(this.fabric.node("admin").netns, [fithaBinary, "lease", "format", "--path", this.leaseFile, "--hosts", String(Math.max(8, this.options.hosts)), "--slots", String(slots), "--max-io-timeout-ms", String(Math.max(1_000, this.#ioTimeoutS() * 2_000)), "--kill-budget-ms", "2000"]);
    if (format.exitCode !== 0) throw new Error(`fitha lease format: ${format.stderr.trim()}`);
  }

  async #addHost(n: number, endpoints: Readonly<Record<Plane, readonly string[]>>): Promise<void> {
    const name = `host-${n}`;
    const node = await this.fabric.addNode(`h${n}`, n, planes);
    const hostDir = join(this.dir.path, name);
    await mkdir(hostDir);
    const socket = join(hostDir, "run", "lockd.sock");
    const stateDir = join(hostDir, "lockd");
    const host: HarnessHost = {
      name,
      netns: node.netns,
      dir: hostDir,
      config: "",
      socket,
      hostId: 0,
      agent: undefined as never,
      lockd: undefined as never,
      watchdog: undefined as never,
      hypervisorKind: n <= (this.options.qemuHosts ?? 0) ? "qemu" : "test",
      libvirtd: undefined,
      hypervisor: undefined,
      storagePath: await createBlkioCgroup(`harness-${name}`),
    };
    this.hosts.push(host);
    await this.#startHypervisor(host);
    const config = join(hostDir, "fitha.toml");
    const agent = new Daemon(`${name} agent`, node.netns, () => [fithaBinary, "agent", "--config", config, "--log-format", "json"], join(hostDir, "agent.log"));
    Object.assign(host, { config, agent });
    await this.#writeHostConfig(host, endpoints);
    agent.start();
    const hostId = await this.#until(`${name} registered`, async () => {
      const id = (await this.status()).state?.hosts.find((h) => h.name === name)?.host_id ?? undefined;
      if (id === undefined) throw new Error(`no ${name} in fitha status yet`);
      return id;
    });
    // Command lines are read at each start: after a power cycle the host's libvirtd is a new one.
    const hypervisorArgs = () => ["--hypervisor", this.#hypervisorUri(host), ...(host.libvirtd?.qemuRunDir === undefined ? [] : ["--qemu-run-dir", host.libvirtd.qemuRunDir])];
    const lockd = new Daemon(`${name} lockd`, node.netns, () => [fithaBinary, "lockd", "--lease-file", this.leaseFile, "--host-id", String(hostId), "--host", name, "--socket", socket, "--state-dir", stateDir, ...hypervisorArgs(), "--io-timeout", String(this.#ioTimeoutS()), "--id-allocation", "unique", "--log-format", "json"], join(hostDir, "lockd.log"));
    const watchdog = new Daemon(`${name} watchdog`, node.netns, () => [fithaBinary, "watchdog", "--state-dir", stateDir, ...hypervisorArgs(), "--log-format", "json"], join(hostDir, "watchdog.log"));
    for (const daemon of [lockd, watchdog]) daemon.onStart((pid) => void host.storagePath.addProcess(pid).catch(() => undefined));
    Object.assign(host, { hostId, lockd, watchdog });
    lockd.start();
    watchdog.start();
    await this.#until(`${name}'s lockd answers`, async () => ((await runInNamespace(node.netns, [fithaBinary, "lease", "status", "--socket", socket])).exitCode === 0 ? true : undefined));
  }

  async #writeHostConfig(host: HarnessHost, endpoints: Readonly<Record<Plane, readonly string[]>>): Promise<void> {
    await writeConfig(host.dir, { ...endpoints, dialTimeoutMs: 500, requestTimeoutMs: 1_000, extra: `[host]\nname = "${host.name}"\nhypervisor = "${this.#hypervisorUri(host)}"\nlockd_socket = "${host.socket}"\n` });
  }

  /**
   * lockd's T. 1 s by default: at 0.5 s a 2-core machine busy with a cluster's worth of daemons
   * (or two clusters) timed out lease I/O now and then, failing starts the scenario did not mean.
   */
  #ioTimeoutS(): number {
    return this.options.ioTimeoutS ?? 1;
  }

  #hypervisorUri(host: HarnessHost): string {
    if (host.libvirtd === undefined) throw new Error(`${host.name} is powered off`);
    return host.libvirtd.uri;
  }

  async #startHypervisor(host: HarnessHost): Promise<void> {
    host.libvirtd = host.hypervisorKind === "qemu" ? await startQemuLibvirtd(host.netns, host.dir, join(host.dir, "run"), fithaBinary, join(host.dir, "libvirtd.log")) : await startLibvirtd();
    host.hypervisor = await LibvirtHypervisor.open(host.libvirtd.uri);
    const hypervisor = host.hypervisor;
    if (host.hypervisorKind === "qemu") {
      // A fresh libvirtd probes QEMU's capabilities at its first domain (~4 s here); a real host
      // has them cached. Probed now, so that the first recovery onto it is not what pays.
      const warmup = qemuDomainXml(`warmup-${host.name}`, this.#guestKernel, join(this.#mount!.path, "warmup.img"));
      await hypervisor.define(warmup);
      await hypervisor.undefine(`warmup-${host.name}`);
    }
    // The test driver starts with a running domain "test", the same UUID on every host: a host
    // here runs only what fitha and the scenarios start.
    if (host.hypervisorKind === "test") for (const domain of await hypervisor.listDomains()) {
      if (domain.state === "running") await hypervisor.destroy(domain.uuid);
      await hypervisor.undefine(domain.uuid);
    }
    this.history.watch(host.name, { running: async () => (host.hypervisor === hypervisor ? (await hypervisor.listDomains()).filter((d) => d.state === "running").map((d) => d.uuid) : []) });
  }

  #endpoints(): Record<Plane, string[]> {
    return { management: this.etcd.management!.endpoints, storage: this.etcd.storage!.endpoints, service: this.etcd.service!.endpoints };
  }

  #hypervisor(host: HarnessHost): LibvirtHypervisor {
    if (host.hypervisor === undefined) throw new Error(`${host.name} is powered off`);
    return host.hypervisor;
  }

  #node(host: HarnessHost): string {
    return host.netns.slice(this.fabric.prefix.length + 1);
  }

  async #must(result: Promise<CommandResult>): Promise<void> {
    const done = await result;
    if (done.exitCode !== 0) throw new Error(done.stderr.trim());
  }

  /** Polls `probe` until it returns a value; its last error says why not, if it never does. */
  async #until<T>(what: string, probe: () => Promise<T | undefined>): Promise<T> {
    const deadline = Date.now() + startTimeoutMs;
    let why = "";
    for (;;) {
      const value = await probe().catch((error: unknown) => {
        why = error instanceof Error ? error.message : String(error);
        return undefined;
      });
      if (value !== undefined) return value;
      if (Date.now() > deadline) throw new Error(`${what}: not within ${startTimeoutMs} ms${why === "" ? "" : ` (last: ${why})`}; logs under ${this.dir.path}`);
      await Bun.sleep(100);
    }
  }
}
