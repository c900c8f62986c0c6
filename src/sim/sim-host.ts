/**
 * One simulated compute host: its hypervisor (the physical truth of which VMs run), its path to
 * the shared lease storage, its network links to the three planes' clusters, and its three
 * processes — lockd, the watchdog and the agent — each the real daemon code behind a
 * ProcessGate, so that it can be killed, paused and restarted like a process.
 */
import { Agent } from "../agent/agent.ts";
import { LockdQuestionsClient, type LockdConnection, type LockdSubscribe } from "../agent/lockd-questions.ts";
import { LockdVmLeases, type LeaseAcquisition } from "../agent/vm-leases.ts";
import { planes, type Plane } from "../config/fitha-config.ts";
import type { VirtualClock } from "../core/clock.ts";
import type { Fault, MemoryDevice, MemoryStorage } from "../lease/memory-device.ts";
import { MemoryDevice as Device } from "../lease/memory-device.ts";
import { LockdUnavailableError, type LockdRequest, type LockdTransport } from "../lockd/client.ts";
import { LockDaemon } from "../lockd/lock-daemon.ts";
import type { Reply } from "../lockd/protocol.ts";
import type { LockdState, StateStore } from "../lockd/state-file.ts";
import { Watchdog } from "../lockd/watchdog.ts";
import type { Keys } from "../store/keys.ts";
import type { LinkFault, MemoryCluster, MemoryKv } from "../store/memory-kv.ts";
import type { Hypervisor } from "../virt/hypervisor.ts";
import { MemoryHypervisor } from "../virt/memory-hypervisor.ts";
import { ProcessGate } from "./process-gate.ts";

/** The agent's deadline for one lockd request when lockd does not answer (a paused lockd). */
const lockdRequestTimeoutMs = 60_000;
/** How often the watchdog looks at lockd's state at most (the CLI's default). */
const watchdogMaxPollMs = 1_000;
/** systemd's RestartSec for a daemon that failed to start, and how often it tries before giving up. */
const restartDelayMs = 5_000;
const maxStartAttempts = 100;

export interface SimHostEnvironment {
  readonly clock: VirtualClock;
  readonly now: () => Date;
  readonly keys: Keys;
  readonly clusters: Readonly<Record<Plane, MemoryCluster>>;
  readonly storage: MemoryStorage;
  readonly ioTimeoutMs: number;
  readonly newUuid: () => string;
  /** Every VM start and stop on this host, as it happens. */
  readonly onRunning: (host: string, domain: { readonly name: string; readonly uuid: string }, running: boolean) => void;
  /** A line for the trace. */
  readonly trace: (what: string) => void;
  /** Broken variants, for proving that the simulator finds what it is for (never in production). */
  readonly broken: ReadonlySet<BrokenVariant>;
}

/**
 * Deliberately broken hosts, each removing one piece of the safety argument:
 * - "fencing-has-no-effect": lockd's and the watchdog's destroy of a VM reports success but the
 *   VM runs on (fencing at renewal-fail skipped);
 * - "leases-ignored": the agent is told every lease is acquired at once (a takeover without
 *   waiting for host-dead).
 */
export type BrokenVariant = "fencing-has-no-effect" | "leases-ignored";
export const brokenVariants: readonly BrokenVariant[] = ["fencing-has-no-effect", "leases-ignored"];

export type ProcessName = "lockd" | "agent" | "watchdog";

interface Running<T> {
  readonly gate: ProcessGate;
  instance: T | undefined;
}

export class SimHost {
  readonly hypervisor: MemoryHypervisor;
  readonly planeFaults = new Map<Plane, LinkFault>();
  #storageFault: Fault | undefined;
  /** The lease storage as each lockd incarnation opened it (its gate: the process that did). */
  #devices: Array<{ readonly gate: ProcessGate; readonly device: MemoryDevice }> = [];
  #boot = 1;
  #pid = 100;
  readonly #lockdPids = new Map<number, ProcessGate>();
  /** lockd's state file, as written (a string: each read gets its own copy, like a file). */
  #lockdState: string | undefined;

  #readLockdState(): LockdState | undefined {
    return this.#lockdState === undefined ? undefined : (JSON.parse(this.#lockdState) as LockdState);
  }
  lockd: Running<LockDaemon> = { gate: dead("lockd"), instance: undefined };
  agent: Running<Agent> & { links: MemoryKv[]; connections: Set<LockdConnection & { close(): void }> } = { gate: dead("agent"), instance: undefined, links: [], connections: new Set() };
  watchdog: Running<Watchdog> = { gate: dead("watchdog"), instance: undefined };
  /** False while powered off. */
  powered = true;

  constructor(
    readonly name: string,
    readonly hostId: number,
    readonly env: SimHostEnvironment,
  ) {
    this.hypervisor = new MemoryHypervisor({ uri: `memory://${name}/`, clock: env.clock, newUuid: env.newUuid, onRunning: (domain, running) => env.onRunning(name, domain, running) });
    this.hypervisor.startMs = 2_000;
  }

  get bootId(): string {
    return `${this.name}-boot-${this.#boot}`;
  }

  // ---- processes ----

  readonly #wanted = new Set<ProcessName>();

  /** Starts lockd and waits until it has joined the lockspace. */
  async startLockd(): Promise<void> {
    this.#wanted.add("lockd");
    await this.#startLockd();
  }

  /** Starts the watchdog and the agent; waits until the agent has registered. */
  async startAgentAndWatchdog(): Promise<void> {
    this.#wanted.add("watchdog").add("agent");
    this.#startWatchdog();
    await this.#startAgent();
  }

  /**
   * Starts `process` as systemd would: in the background, again after a failed start (every
   * restartDelayMs, at most maxStartAttempts times), until it runs or is not wanted any more.
   */
  start(process: ProcessName): void {
    this.#wanted.add(process);
    void this.#keepStarting(process);
  }

  async #keepStarting(process: ProcessName): Promise<void> {
    const starters = { lockd: () => this.#startLockd(), watchdog: async () => this.#startWatchdog(), agent: () => this.#startAgent() };
    for (let attempt = 1; attempt <= maxStartAttempts; attempt++) {
      if (!this.powered || !this.#wanted.has(process) || this[process].gate.state !== "dead") return;
      try {
        await starters[process]();
        return;
      } catch (error) {
        this[process].gate.kill();
        this.env.trace(`${this.name} ${process} failed to start (${error instanceof Error ? error.message : String(error)}); again in ${restartDelayMs} ms`);
        await this.env.clock.sleep(restartDelayMs);
      }
    }
  }

  async #startLockd(): Promise<void> {
    if (this.lockd.gate.state !== "dead") return;
    const gate = new ProcessGate(`${this.name} lockd`);
    const pid = ++this.#pid;
    this.#lockdPids.set(pid, gate);
    this.lockd = { gate, instance: undefined };
    const store: StateStore = { name: "memory", read: async () => this.#readLockdState(), write: async (state) => void (this.#lockdState = JSON.stringify(state)) };
    const daemon = await gate.run(() =>
      LockDaemon.start(
      { leaseFile: "lease", hostId: this.hostId, hostName: this.name, ioTimeoutMs: this.env.ioTimeoutMs, idAllocation: "configured" },
      {
        clock: gate.clock(this.env.clock),
        openDevice: async () => gate.wrap(this.#openDevice(gate)),
        bootId: this.bootId,
        pid,
        lockdAlive: async (previous) => this.#lockdPids.get(previous)?.state !== undefined && this.#lockdPids.get(previous)?.state !== "dead",
        installId: this.hostId.toString(16).padStart(32, "0"),
        store: gate.wrap(store),
        hypervisor: gate.wrap(this.#fencingHypervisor()),
      },
      ),
    );
    // Killed while starting: the instance is as dead as its gate.
    if (gate.state !== "dead") this.lockd.instance = daemon;
    this.env.trace(`${this.name} lockd started (${daemon.startedBy})`);
    // As `fitha lockd` does: a lost host lease ends the process, and systemd starts it again.
    void daemon.lost.then(async (reason) => {
      if (this.lockd.gate !== gate || gate.state === "dead") return;
      this.env.trace(`${this.name} lockd exited (${reason}); systemd restarts it in ${restartDelayMs} ms`);
      this.#exited("lockd");
      await this.env.clock.sleep(restartDelayMs);
      void this.#keepStarting("lockd");
    });
  }

  #startWatchdog(): void {
    if (this.watchdog.gate.state !== "dead") return;
    const gate = new ProcessGate(`${this.name} watchdog`);
    // The watchdog only reads lockd's state file.
    const store: StateStore = { name: "memory", read: async () => this.#readLockdState(), write: async () => {} };
    const clock = gate.clock(this.env.clock);
    const watchdog = new Watchdog({ clock, store: gate.wrap(store), hypervisor: gate.wrap(this.#fencingHypervisor()), bootId: this.bootId });
    this.watchdog = { gate, instance: watchdog };
    void gate.run(async () => {
      // Bounded by the process: it loops until killed (a dead gate never wakes it again).
      for (;;) {
        const check = await watchdog.check();
        if (check.state === "fired" && check.stopped.length > 0) this.env.trace(`${this.name} watchdog fired: stopped ${check.stopped.length} VM(s)`);
        await clock.sleep(watchdog.pollIntervalMs(watchdogMaxPollMs));
      }
    });
  }

  async #startAgent(): Promise<void> {
    if (this.agent.gate.state !== "dead") return;
    const gate = new ProcessGate(`${this.name} agent`);
    const links = planes.map((plane) => this.#link(plane, `${this.name} agent`));
    this.agent = { gate, instance: undefined, links, connections: new Set() };
    const clock = gate.clock(this.env.clock);
    const transport: LockdTransport = (body) => gate.call(() => this.#toLockd(body));
    const leases = new (this.env.broken.has("leases-ignored") ? IgnoredLeases : LockdVmLeases)(`${this.name} lockd`, transport);
    const agent = await gate.run(() =>
      Agent.start(
      { host: this.name, addresses: { management: `10.0.0.${this.hostId}`, storage: `10.1.0.${this.hostId}`, service: `10.2.0.${this.hostId}` }, agentVersion: "sim" },
      {
        clock,
        now: this.env.now,
        kv: Object.fromEntries(planes.map((plane, i) => [plane, gate.wrap(links[i]!)])) as Record<Plane, MemoryKv>,
        keys: this.env.keys,
        hypervisor: gate.wrap(this.hypervisor as Hypervisor),
        leases,
        questions: new LockdQuestionsClient(`${this.name} lockd`, transport, this.#subscribe(gate), clock),
      },
      ),
    );
    if (agent.hostId !== this.hostId) throw new Error(`${this.name}: the agent got host id ${agent.hostId}, lockd has ${this.hostId}`);
    if (gate.state !== "dead") this.agent.instance = agent;
    this.env.trace(`${this.name} agent started`);
  }

  /** SIGKILL: the process is gone until start(). */
  kill(process: ProcessName): void {
    this.#wanted.delete(process);
    if (this[process].gate.state === "dead") return;
    this.#exited(process);
    this.env.trace(`${this.name} ${process} killed`);
  }

  /** The process is gone (killed, or it exited): the kernel closes its connections. */
  #exited(process: ProcessName): void {
    const running = this[process];
    running.gate.kill();
    running.instance = undefined;
    // Its queued I/O dies with it; the batch under way stays in the list, to complete (or hang)
    // as the storage's faults say — a syscall in the kernel outlives the process.
    if (process === "lockd") for (const { device } of this.#devices.filter((d) => d.gate === running.gate)) device.processDied();
    if (process === "agent") for (const link of this.agent.links) link.close();
    // Either end of the agent's subscriptions to lockd going closes them.
    if (process !== "watchdog") for (const connection of this.agent.connections) connection.close();
  }

  pause(process: ProcessName): void {
    this[process].gate.pause();
    this.env.trace(`${this.name} ${process} paused`);
  }

  resume(process: ProcessName): void {
    this[process].gate.resume();
    this.env.trace(`${this.name} ${process} resumed`);
  }

  /** Power off: every process dies with every VM. */
  powerOff(): void {
    for (const process of ["agent", "watchdog", "lockd"] as const) this.kill(process);
    this.powered = false;
    for (const uuid of this.hypervisor.activeUuids()) this.hypervisor.crash(uuid);
    this.env.trace(`${this.name} powered off`);
  }

  /** Power on: a new boot (lockd cannot resume across it), the daemons start again. */
  powerOn(): void {
    if (this.powered) return;
    this.#boot++;
    this.powered = true;
    this.env.trace(`${this.name} powered on (boot ${this.#boot})`);
    for (const process of ["lockd", "watchdog", "agent"] as const) this.start(process);
  }

  // ---- faults ----

  /** Cuts this host's link to `plane` (undefined heals it). */
  setPlaneFault(plane: Plane, fault: LinkFault | undefined): void {
    if (fault === undefined) this.planeFaults.delete(plane);
    else this.planeFaults.set(plane, fault);
    const link = this.agent.links[planes.indexOf(plane)];
    if (link !== undefined) applyLinkFault(link, fault);
  }

  /** This host's path to the lease storage: slow, hung, failing, or (undefined) healthy. */
  setStorageFault(fault: Fault | undefined): void {
    this.#storageFault = fault;
    for (const { device } of this.#devices) device.setFault(fault);
  }

  get storageFault(): Fault | undefined {
    return this.#storageFault;
  }

  #openDevice(gate: ProcessGate): MemoryDevice {
    const device = new Device(this.env.storage, this.env.clock, `${this.name}:lease`);
    device.setFault(this.#storageFault);
    this.#devices.push({ gate, device });
    return device;
  }

  #link(plane: Plane, who: string): MemoryKv {
    const link = this.env.clusters[plane].connect({ name: `etcd of the ${plane} plane (${who})`, requestTimeoutMs: 5_000 });
    applyLinkFault(link, this.planeFaults.get(plane));
    return link;
  }

  // ---- lockd as the agent reaches it ----

  /** One request to the lockd process: refused at once when none runs, unanswered while it is paused. */
  async #toLockd(body: LockdRequest): Promise<Reply> {
    const { gate, instance } = this.lockd;
    if (instance === undefined || gate.state === "dead") throw new LockdUnavailableError(`${this.name} lockd: connection refused (not running)`);
    const timeout = this.env.clock.sleep(lockdRequestTimeoutMs).then(() => {
      throw new LockdUnavailableError(`${this.name} lockd did not answer within ${lockdRequestTimeoutMs} ms`);
    });
    timeout.catch(() => {});
    return await Promise.race([gate.call(() => gate.run(() => instance.handle({ id: 0, ...body } as Parameters<LockDaemon["handle"]>[0]))), timeout]);
  }

  #subscribe(agentGate: ProcessGate): LockdSubscribe {
    return async (onEvent) => {
      const { instance: daemon, gate } = this.lockd;
      if (daemon === undefined || gate.state === "dead" || agentGate.state === "dead") throw new LockdUnavailableError(`${this.name} lockd: connection refused (not running)`);
      const ended = Promise.withResolvers<void>();
      const subscriber = agentGate.deliver(onEvent);
      const connection = {
        ended: ended.promise,
        end: () => connection.close(),
        close: () => {
          daemon.unsubscribe(subscriber);
          this.agent.connections.delete(connection);
          ended.resolve();
        },
      };
      this.agent.connections.add(connection);
      const reply = await gate.call(() => gate.run(() => daemon.handle({ id: 0, op: "subscribe" }, subscriber)));
      if (!reply.ok) {
        connection.close();
        throw new LockdUnavailableError(`${this.name} lockd refused the subscription: ${reply.message}`);
      }
      return connection;
    };
  }

  /** The hypervisor as lockd and the watchdog fence through it (a broken variant makes fencing a no-op). */
  #fencingHypervisor(): Hypervisor {
    if (!this.env.broken.has("fencing-has-no-effect")) return this.hypervisor;
    const hypervisor = this.hypervisor;
    return new Proxy(hypervisor, {
      get: (object, property) => {
        if (property === "destroy") return async () => {};
        const value: unknown = Reflect.get(object, property, object);
        return typeof value === "function" ? (value as (...args: unknown[]) => unknown).bind(object) : value;
      },
    });
  }
}

function applyLinkFault(link: MemoryKv, fault: LinkFault | undefined): void {
  if (fault === undefined) link.heal();
  else link.cut(fault);
}

function dead(name: string): ProcessGate {
  const gate = new ProcessGate(name);
  gate.kill();
  return gate;
}

/** The "leases-ignored" variant: every acquire succeeds at once, whoever holds the lease. */
class IgnoredLeases extends LockdVmLeases {
  override async acquire(): Promise<LeaseAcquisition> {
    return { kind: "acquired" };
  }
}
