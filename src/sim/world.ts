/**
 * The simulated cluster: three etcd clusters (one per plane), one shared lease storage, compute
 * hosts (sim-host.ts) and controllers, all on one virtual clock, running the real daemon code.
 * The world applies faults, and it watches: every VM start and stop is checked against the
 * safety invariant at the instant it happens (DESIGN §3), and the recovery tasks against the
 * limits, as they change.
 */
import { planes, type Plane } from "../config/fitha-config.ts";
import type { VirtualClock } from "../core/clock.ts";
import { defaultSettings, settingsToJson, type RuntimeSettings } from "../core/settings.ts";
import { defaultStrategy, strategyToJson, type Strategy } from "../core/strategy.ts";
import { Controller } from "../controller/controller.ts";
import { formatLockspace } from "../lease/lease-file.ts";
import { layout } from "../lease/layout.ts";
import { MemoryDevice, MemoryStorage, type Fault } from "../lease/memory-device.ts";
import { keys as keysFor, type Keys } from "../store/keys.ts";
import type { KvChange } from "../store/kv.ts";
import { MemoryCluster, type LinkFault, type MemoryKv } from "../store/memory-kv.ts";
import { taskRecord } from "../store/records.ts";
import { addVm } from "../store/vm-registry.ts";
import { readDomainDefinition } from "../virt/domain-definition.ts";
import { ProcessGate } from "./process-gate.ts";
import type { Random } from "./random.ts";
import { SimHost, type BrokenVariant } from "./sim-host.ts";

export interface WorldOptions {
  readonly hosts: number;
  readonly controllers: number;
  /** HA VMs per host at the start (vm-<host>-<n>), and plain (non-HA) ones. */
  readonly haVmsPerHost: number;
  readonly plainVmsPerHost: number;
  /** lockd's I/O timeout T and the lockspace's kill budget K. */
  readonly ioTimeoutMs: number;
  readonly killBudgetMs: number;
  readonly settings: RuntimeSettings;
  readonly strategy: Strategy;
  readonly electionTtlMs: number;
  readonly probeIntervalMs: number;
  readonly broken: ReadonlySet<BrokenVariant>;
}

export const defaultWorldOptions: WorldOptions = {
  hosts: 4,
  controllers: 3,
  haVmsPerHost: 3,
  plainVmsPerHost: 1,
  ioTimeoutMs: 10_000,
  killBudgetMs: 60_000,
  settings: defaultSettings,
  strategy: defaultStrategy,
  electionTtlMs: 10_000,
  probeIntervalMs: 2_000,
  broken: new Set(),
};

export interface SimVm {
  readonly name: string;
  readonly uuid: string;
  readonly ha: boolean;
  /** Where it was placed at the start: a plain VM must never run anywhere else. */
  readonly origin: string;
  /** Its lease slot (HA VMs) and its domain XML as registered. */
  readonly slot: number | null;
  readonly xml: string;
}

export interface Violation {
  readonly atMs: number;
  readonly invariant: "safety" | "plain-vm-moved" | "limit" | "held" | "liveness" | "expectation";
  readonly message: string;
}

export interface SimController {
  readonly name: string;
  gate: ProcessGate;
  controller: Controller | undefined;
  links: MemoryKv[];
}

/** How long the leader may take to see maintenance switched on (its watch, one step). */
const maintenanceNoticeMs = 5_000;

/** The wall clock the records carry: a fixed date plus virtual time, so traces replay exactly. */
const epochMs = Date.parse("2026-01-01T00:00:00.000Z");

export class World {
  readonly keys: Keys = keysFor("/fitha");
  readonly clusters: Record<Plane, MemoryCluster>;
  readonly storage: MemoryStorage;
  readonly hosts: SimHost[] = [];
  readonly controllers: SimController[] = [];
  readonly vms: SimVm[] = [];
  readonly violations: Violation[] = [];
  /** Per VM UUID, the hosts it runs on now. */
  readonly #runningOn = new Map<string, Set<string>>();
  readonly #vmByUuid = new Map<string, SimVm>();
  /** The test's own links: never cut (the simulator's eyes, not a participant). */
  readonly #eyes: Record<Plane, MemoryKv>;
  /** When the plan's time 0 is: the end of set-up. */
  #startMs: number;
  /** Recovery tasks in "starting" state by VM → target host, for the limit checks. */
  readonly #starting = new Map<string, string>();
  /** Maintenance switched on by the plan (key → host, or undefined for the whole cluster), since when. */
  readonly #maintenance = new Map<string, { readonly host: string | undefined; readonly sinceMs: number }>();
  /** The cluster's mode as the leader last wrote it. */
  #mode = "normal";
  #settings: RuntimeSettings;
  /** How many VM starts there were (all hosts). */
  starts = 0;

  constructor(
    readonly clock: VirtualClock,
    readonly random: Random,
    readonly options: WorldOptions,
    readonly trace: (line: string) => void,
  ) {
    this.#startMs = clock.nowMs();
    this.#settings = options.settings;
    this.clusters = Object.fromEntries(planes.map((plane) => [plane, new MemoryCluster(clock)])) as Record<Plane, MemoryCluster>;
    this.#eyes = Object.fromEntries(planes.map((plane) => [plane, this.clusters[plane].connect({ name: `etcd of the ${plane} plane (simulator)` })])) as Record<Plane, MemoryKv>;
    const space = { sectorSize: 512 as const, hosts: Math.max(8, options.hosts), slots: Math.max(8, options.hosts * options.haVmsPerHost) };
    this.storage = new MemoryStorage(layout(space).totalBytes, space.sectorSize);
  }

  now = (): Date => new Date(epochMs + this.clock.nowMs() - this.#startMs);

  /** Milliseconds since the run began. */
  elapsedMs(): number {
    return this.clock.nowMs() - this.#startMs;
  }

  log(what: string): void {
    this.trace(`${formatElapsed(this.elapsedMs())} ${what}`);
  }

  // ---- set-up ----

  async setUp(): Promise<void> {
    const { options } = this;
    const formatDevice = new MemoryDevice(this.storage, this.clock, "format");
    await formatLockspace(formatDevice, {
      name: "sim",
      sectorSize: 512,
      hosts: Math.max(8, options.hosts),
      slots: Math.max(8, options.hosts * options.haVmsPerHost),
      ioTimeoutMs: options.ioTimeoutMs,
      maxIoTimeoutMs: options.ioTimeoutMs,
      killBudgetMs: options.killBudgetMs,
      force: false,
    });
    const management = this.#eyes.management;
    await management.put(this.keys.settings, JSON.stringify(settingsToJson(options.settings)));
    await management.put(this.keys.strategy, JSON.stringify(strategyToJson(options.strategy)));
    void this.#watchTasks();
    for (let i = 1; i <= options.hosts; i++) {
      this.hosts.push(
        new SimHost(`host-${i}`, i, {
          clock: this.clock,
          now: this.now,
          keys: this.keys,
          clusters: this.clusters,
          storage: this.storage,
          ioTimeoutMs: options.ioTimeoutMs,
          newUuid: () => this.random.uuid(),
          onRunning: (name, domain, running) => this.#onRunning(name, domain.uuid, running),
          trace: (what) => this.log(what),
          broken: options.broken,
        }),
      );
    }
    // lockds join at once (each waits out the join delay); agents register one after the other,
    // so that etcd hands out host ids in the lockspace's order.
    await Promise.all(this.hosts.map((host) => host.startLockd()));
    for (const host of this.hosts) await host.startAgentAndWatchdog();
    for (let i = 1; i <= options.controllers; i++) {
      const controller: SimController = { name: `controller-${i}`, gate: new ProcessGate(`controller-${i}`), controller: undefined, links: [] };
      controller.gate.kill();
      this.controllers.push(controller);
      this.startController(controller);
    }
    for (const host of this.hosts) {
      for (let n = 1; n <= options.haVmsPerHost + options.plainVmsPerHost; n++) await this.#placeVm(host, n, n <= options.haVmsPerHost);
    }
    this.#startMs = this.clock.nowMs();
    this.log("set up: every host and controller runs, every VM on its host");
  }

  /** Registers a VM on `host`, takes its lease there (HA), and starts it: what `fitha vm add` and a first start do. */
  async #placeVm(host: SimHost, n: number, ha: boolean): Promise<void> {
    const name = `vm-${host.hostId}-${n}`;
    const uuid = this.random.uuid();
    const xml = `<domain type='test'><name>${name}</name><uuid>${uuid}</uuid><memory unit='MiB'>512</memory><vcpu>1</vcpu></domain>`;
    const record = await addVm(this.#eyes.management, this.keys, { definition: readDomainDefinition(xml), ha, priority: n, group: "", host: host.name }, { now: this.now });
    const vm: SimVm = { name, uuid, ha, origin: host.name, slot: record.slot, xml: record.xml };
    this.vms.push(vm);
    this.#vmByUuid.set(uuid, vm);
    const lockd = host.lockd.instance;
    if (record.slot !== null) {
      if (lockd === undefined) throw new Error(`${host.name}: no lockd to take ${name}'s lease`);
      const reply = await lockd.handle({ id: 0, op: "acquire", vm: uuid, slot: record.slot });
      if (!reply.ok) throw new Error(`${host.name}: cannot take ${name}'s lease: ${reply.message}`);
    }
    await host.hypervisor.define(record.xml);
    await host.hypervisor.start(uuid);
  }

  // ---- processes ----

  startController(controller: SimController): void {
    if (controller.gate.state !== "dead") return;
    const gate = new ProcessGate(controller.name);
    const links = planes.map((plane) => this.clusters[plane].connect({ name: `etcd of the ${plane} plane (${controller.name})`, requestTimeoutMs: 5_000 }));
    const instance = new Controller(
      { name: controller.name, electionTtlMs: this.options.electionTtlMs, probeIntervalMs: this.options.probeIntervalMs },
      { clock: gate.clock(this.clock), now: this.now, kv: Object.fromEntries(planes.map((plane, i) => [plane, gate.wrap(links[i]!)])) as Record<Plane, MemoryKv>, keys: this.keys },
    );
    Object.assign(controller, { gate, controller: instance, links });
    gate.run(() => instance.start());
    this.log(`${controller.name} started`);
  }

  killController(controller: SimController): void {
    if (controller.gate.state === "dead") return;
    controller.gate.kill();
    controller.controller = undefined;
    for (const link of controller.links) link.close();
    this.log(`${controller.name} killed`);
  }

  /** The controller that leads now by its own account, if any. */
  leader(): SimController | undefined {
    return this.controllers.find((c) => c.gate.state === "running" && c.controller?.leading === true);
  }

  // ---- faults ----

  /** A plane's whole etcd cluster unreachable (for every host and controller), or (undefined) back. */
  setClusterFault(plane: Plane, fault: LinkFault | undefined): void {
    for (const host of this.hosts) host.setPlaneFault(plane, fault);
    for (const controller of this.controllers) {
      const link = controller.links[planes.indexOf(plane)];
      if (link !== undefined) {
        if (fault === undefined) link.heal();
        else link.cut(fault);
      }
    }
    this.log(fault === undefined ? `the ${plane} plane's etcd is reachable again` : `the ${plane} plane's etcd is unreachable (${fault})`);
  }

  setStorageFault(hosts: readonly SimHost[], fault: Fault | undefined): void {
    for (const host of hosts) host.setStorageFault(fault);
    const who = hosts.length === this.hosts.length ? "every host" : hosts.map((h) => h.name).join(", ");
    this.log(fault === undefined ? `storage healthy again for ${who}` : `storage ${describeFault(fault)} for ${who}`);
  }

  setPlaneFault(host: SimHost, plane: Plane, fault: LinkFault | undefined): void {
    host.setPlaneFault(plane, fault);
    this.log(fault === undefined ? `${host.name}: ${plane} plane healed` : `${host.name}: ${plane} plane cut (${fault})`);
  }

  crashVm(vm: SimVm): boolean {
    const where = [...(this.#runningOn.get(vm.uuid) ?? [])];
    const host = this.hosts.find((h) => h.name === where[0]);
    if (host === undefined) return false;
    this.log(`${vm.name} crashes on ${host.name}`);
    host.hypervisor.crash(vm.uuid);
    return true;
  }

  /** The next `times` starts of every VM on `host` fail (libvirt refusing them). */
  failStarts(host: SimHost, times: number): void {
    for (const vm of this.vms) host.hypervisor.injectFailure("start", vm.uuid, { times, message: "injected: qemu failed to start" });
    this.log(`${host.name}: the next ${times} start(s) of each VM fail`);
  }

  /**
   * Starts `vm` on `host` the way a guarded start outside fitha would (the libvirt hook): only
   * with its lease from that host's lockd. Whatever happens is traced; a start that should not
   * have happened shows up as a safety violation.
   */
  async startVmOn(vm: SimVm, host: SimHost): Promise<void> {
    const lockd = host.lockd.instance;
    if (vm.slot !== null) {
      if (lockd === undefined) return this.log(`start of ${vm.name} on ${host.name} refused: no lockd runs there`);
      const reply = await lockd.handle({ id: 0, op: "acquire", vm: vm.uuid, slot: vm.slot });
      if (!reply.ok) return this.log(`start of ${vm.name} on ${host.name} refused: ${reply.message}`);
    }
    await host.hypervisor.define(vm.xml);
    await host.hypervisor.start(vm.uuid).catch((error: unknown) => this.log(`start of ${vm.name} on ${host.name} failed: ${error instanceof Error ? error.message : String(error)}`));
  }

  async setRuntimeSettings(settings: RuntimeSettings): Promise<void> {
    this.#settings = settings;
    await this.#eyes.management.put(this.keys.settings, JSON.stringify(settingsToJson(settings)));
    this.log(`settings: ${JSON.stringify(settingsToJson(settings))}`);
  }

  async setMaintenance(host: SimHost | undefined, on: boolean): Promise<void> {
    const key = host === undefined ? this.keys.maintenanceGlobal : this.keys.maintenanceHost(host.name);
    await this.#eyes.management.put(key, JSON.stringify({ on, reason: "scenario", by: "simulator", at: this.now().toISOString() }));
    if (on) this.#maintenance.set(key, { host: host?.name, sinceMs: this.elapsedMs() });
    else this.#maintenance.delete(key);
    this.log(`maintenance ${on ? "on" : "off"} for ${host?.name ?? "the whole cluster"}`);
  }

  /** Heals every fault the world can heal, ends every maintenance and starts every process that is down. */
  async healAll(): Promise<void> {
    for (const key of this.#maintenance.keys()) await this.#eyes.management.put(key, JSON.stringify({ on: false, reason: "healed", by: "simulator", at: this.now().toISOString() }));
    this.#maintenance.clear();
    for (const host of this.hosts) {
      host.powerOn();
      host.hypervisor.clearFailures();
      for (const plane of planes) host.setPlaneFault(plane, undefined);
      host.setStorageFault(undefined);
      for (const process of ["lockd", "watchdog", "agent"] as const) {
        if (host[process].gate.state === "paused") host.resume(process);
        host.start(process);
      }
    }
    for (const controller of this.controllers) {
      for (const link of controller.links) link.heal();
      if (controller.gate.state === "paused") controller.gate.resume();
      this.startController(controller);
    }
    this.log("every fault healed, every process running");
  }

  // ---- invariants ----

  runningOn(vm: SimVm): string[] {
    return [...(this.#runningOn.get(vm.uuid) ?? [])];
  }

  #onRunning(host: string, uuid: string, running: boolean): void {
    const where = this.#runningOn.get(uuid) ?? new Set<string>();
    this.#runningOn.set(uuid, where);
    const vm = this.#vmByUuid.get(uuid);
    const name = vm?.name ?? uuid;
    if (!running) {
      where.delete(host);
      this.log(`${name} stopped on ${host}`);
      return;
    }
    this.starts++;
    where.add(host);
    this.log(`${name} running on ${host}`);
    if (where.size > 1) this.violate("safety", `${name} runs on ${[...where].sort().join(" and ")} at once`);
    if (vm !== undefined && !vm.ha && host !== vm.origin) this.violate("plain-vm-moved", `${name} is not HA but was started on ${host} (it belongs on ${vm.origin})`);
  }

  violate(invariant: Violation["invariant"], message: string): void {
    this.violations.push({ atMs: this.elapsedMs(), invariant, message });
    this.log(`VIOLATION (${invariant}): ${message}`);
  }

  /**
   * Follows the recovery tasks and the mode, in revision order (one watch): never more starting
   * at once than the limits allow, and none started in self-defense or maintenance.
   */
  async #watchTasks(): Promise<void> {
    await this.#eyes.management.watchPrefix(this.keys.prefix, 1n, {
      onChanges: (changes: readonly KvChange[]) => {
        for (const change of changes) {
          if (change.key === this.keys.mode && change.type === "put") this.#mode = (JSON.parse(change.value) as { mode: string }).mode;
          else if (change.key.startsWith(this.keys.tasksPrefix)) this.#taskChanged(change, this.keys.tasksPrefix);
        }
        this.#checkLimits();
      },
      onClosed: () => {},
    });
  }

  #taskChanged(change: KvChange, prefix: string): void {
    const vm = change.key.slice(prefix.length);
    if (change.type === "delete") return void this.#starting.delete(vm);
    const task = taskRecord(JSON.parse(change.value), change.key);
    if (task.state !== "starting" || task.target === null) return void this.#starting.delete(vm);
    if (!this.#starting.has(vm)) this.#checkHeld(task.vm, task.source);
    this.#starting.set(vm, task.target);
  }

  /**
   * A recovery start must not happen in self-defense (the leader's own mode, earlier in revision
   * order), nor in maintenance of the cluster or of the VM's host — after the leader has had a
   * moment (maintenanceNoticeMs) to see it switched on.
   */
  #checkHeld(vm: string, source: string): void {
    const name = this.#vmByUuid.get(vm)?.name ?? vm;
    if (this.#mode === "self-defense") this.violate("held", `${name}: a recovery start while the cluster is in self-defense`);
    for (const { host, sinceMs } of this.#maintenance.values()) {
      if ((host === undefined || host === source) && this.elapsedMs() - sinceMs > maintenanceNoticeMs) this.violate("held", `${name}: a recovery start from ${source} during maintenance of ${host ?? "the whole cluster"}`);
    }
  }

  #checkLimits(): void {
    const { recoveryConcurrency, recoveryConcurrencyPerHost } = this.#settings;
    if (this.#starting.size > recoveryConcurrency) this.violate("limit", `${this.#starting.size} recoveries starting at once, over the limit of ${recoveryConcurrency}`);
    const perHost = new Map<string, number>();
    for (const target of this.#starting.values()) perHost.set(target, (perHost.get(target) ?? 0) + 1);
    for (const [target, count] of perHost) {
      if (count > recoveryConcurrencyPerHost) this.violate("limit", `${count} recoveries starting onto ${target} at once, over the per-host limit of ${recoveryConcurrencyPerHost}`);
    }
  }

  /** Liveness, once every fault has been healed long enough: every HA VM runs on exactly one host. */
  checkEveryHaVmRuns(): void {
    const missing = this.vms.filter((vm) => vm.ha && this.runningOn(vm).length === 0);
    if (missing.length > 0) this.violate("liveness", `HA VMs not running after every fault healed: ${missing.map((vm) => vm.name).join(", ")}`);
  }
}

export function describeFault(fault: Fault): string {
  switch (fault.kind) {
    case "delay":
      return `slow (${fault.ms} ms per I/O)`;
    case "error":
      return `failing (${fault.code})`;
    case "hang":
      return "hung";
    case "tear":
      return "tearing writes";
  }
}

/** "+0123.456s": fixed width, so that traces line up and diff well. */
export function formatElapsed(ms: number): string {
  return `+${(ms / 1000).toFixed(3).padStart(9, "0")}s`;
}
