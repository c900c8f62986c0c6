/**
 * Agents and controllers together on in-memory etcd clusters (one per plane) and virtual time:
 * the real daemon code, with each agent's link to each plane's cluster cut on demand. Heartbeats
 * every 1 s living 3 s, a 5 s grace period, controller leases of 3 s.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Writable } from "node:stream";
import { Agent } from "../../src/agent/agent.ts";
import { AgentMetrics } from "../../src/agent/agent-metrics.ts";
import type { LockdNotice, LockdQuestion, LockdQuestions } from "../../src/agent/fencing-bridge.ts";
import { clockCheckIntervalMs, clockJumpThresholdMs } from "../../src/agent/clock-watch.ts";
import { MemoryVmLeases } from "../../src/agent/vm-leases.ts";
import { planes, type Plane } from "../../src/config/fitha-config.ts";
import { VirtualClock } from "../../src/core/clock.ts";
import { settingsToJson, defaultSettings } from "../../src/core/settings.ts";
import { defaultStrategy, haWanted, strategyToJson, type PlaneStates } from "../../src/core/strategy.ts";
import { Controller } from "../../src/controller/controller.ts";
import { ControllerMetrics } from "../../src/controller/controller-metrics.ts";
import { MetricsRegistry } from "../../src/metrics/registry.ts";
import { configureLogging } from "../../src/log.ts";
import { keys as keysFor } from "../../src/store/keys.ts";
import { MemoryCluster, type MemoryKv } from "../../src/store/memory-kv.ts";
import { listEvents } from "../../src/store/events.ts";
import { MemoryHypervisor } from "../../src/virt/memory-hypervisor.ts";
import { readDomainDefinition } from "../../src/virt/domain-definition.ts";
import { addVm } from "../../src/store/vm-registry.ts";
import { startTimeoutMs } from "../../src/controller/recovery.ts";
import { newTask, type RecoveryTask } from "../../src/core/recovery-tasks.ts";
import { orderResult as orderResultCodec, taskRecord, type OrderResult } from "../../src/store/records.ts";
import { parsePrometheusText, sampleOf } from "../helpers/prometheus-text.ts";

beforeAll(() => configureLogging({ level: "error", format: "json", stream: new Writable({ write: (_chunk, _encoding, done) => done() }) }));
afterAll(() => configureLogging({ level: "info", format: "human" }));

const keys = keysFor("/fitha");
const graceMs = 5_000;
const ttlMs = 3_000;

/** lockd's question channel, played by the test: ask(), then see what answer came back. */
class FakeLockdQuestions implements LockdQuestions {
  #listener: ((question: LockdQuestion) => void) | undefined;
  #noticeListener: ((notice: LockdNotice) => void) | undefined;
  open: number | null = null;
  readonly answers: Array<{ question: number; answer: string }> = [];

  subscribe(onQuestion: (question: LockdQuestion) => void, onNotice: (notice: LockdNotice) => void) {
    this.#listener = onQuestion;
    this.#noticeListener = onNotice;
    return {
      close: () => {
        this.#listener = undefined;
        this.#noticeListener = undefined;
      },
    };
  }
  notify(notice: LockdNotice): void {
    this.#noticeListener?.(notice);
  }
  async openQuestion() {
    return this.open;
  }
  async answer(question: number, answer: "fence" | "no-fence") {
    this.answers.push({ question, answer });
  }
  /** The leases lockd holds (what self-fencing stops). */
  held: Array<{ vm: string; slot: number }> = [];
  async heldLeases() {
    return this.held;
  }
  ask(question: number): void {
    this.open = question;
    this.#listener?.({ question, vms: ["vm-a"], reason: "no successful renewal for 4000 ms", answerWithinMs: 6_000 });
  }
}

class Lab {
  readonly clock = new VirtualClock();
  readonly clusters = Object.fromEntries(planes.map((plane) => [plane, new MemoryCluster(this.clock)])) as Record<Plane, MemoryCluster>;
  readonly admin = this.connect("admin");
  readonly agents = new Map<string, { agent: Agent; links: Record<Plane, MemoryKv> }>();
  readonly controllers: Array<{ controller: Controller; links: Record<Plane, MemoryKv> }> = [];
  #wallMs = Date.parse("2026-11-23T12:00:00.000Z");

  now = () => new Date(this.#wallMs + this.clock.nowMs());

  /** Steps every host's wall clock (as NTP or `date -s` would); the monotonic clock goes on. */
  stepWallClock(ms: number): void {
    this.#wallMs += ms;
  }

  connect(who: string): Record<Plane, MemoryKv> {
    return Object.fromEntries(planes.map((plane) => [plane, this.clusters[plane].connect({ name: `etcd of the ${plane} plane (${who})`, requestTimeoutMs: 1_000 })])) as Record<Plane, MemoryKv>;
  }

  /** Per host, a stand-in for its lockd's question channel (only when setup was asked for them). */
  readonly questions = new Map<string, FakeLockdQuestions>();

  /** Per host, its hypervisor and VM leases (only when setup was asked to manage VMs). */
  readonly vmHosts = new Map<string, { hypervisor: MemoryHypervisor; leases: MemoryVmLeases }>();

  /** Per daemon ("host-1", "controller-1"), its metrics (only when setup was asked for them). */
  readonly registries = new Map<string, MetricsRegistry>();

  /** The value of one sample of `daemon`'s metrics, as a scrape would show it. */
  metric(daemon: string, name: string, labels: Record<string, string> = {}): number {
    return sampleOf(parsePrometheusText(this.registries.get(daemon)!.render()), name, labels).value;
  }

  #registry(daemon: string, wanted: boolean): MetricsRegistry | undefined {
    if (!wanted) return undefined;
    const registry = new MetricsRegistry();
    this.registries.set(daemon, registry);
    return registry;
  }

  async setup(hosts: number, controllers = 1, options: { questions?: boolean; vms?: boolean; metrics?: boolean } = {}): Promise<void> {
    await this.admin.management.put(keys.settings, JSON.stringify({ ...settingsToJson(defaultSettings), heartbeat_interval_ms: 1_000, heartbeat_ttl_ms: ttlMs }));
    await this.admin.management.put(keys.strategy, JSON.stringify({ ...strategyToJson(defaultStrategy), grace_ms: graceMs }));
    for (let i = 1; i <= hosts; i++) {
      const host = `host-${i}`;
      const links = this.connect(host);
      const questions = options.questions === true ? new FakeLockdQuestions() : undefined;
      if (questions !== undefined) this.questions.set(host, questions);
      const registry = this.#registry(host, options.metrics === true);
      const agent = await this.clock.run(
        Agent.start(
          { host, addresses: { management: `10.0.0.${i}`, storage: `10.1.0.${i}`, service: `10.2.0.${i}` }, agentVersion: "test" },
          { clock: this.clock, now: this.now, kv: links, keys, ...this.#vmEnvironment(host, options.vms === true), ...(questions === undefined ? {} : { questions }), ...(registry === undefined ? {} : { metrics: new AgentMetrics(registry) }) },
        ),
      );
      this.agents.set(host, { agent, links });
    }
    for (let i = 1; i <= controllers; i++) {
      const links = this.connect(`controller-${i}`);
      const registry = this.#registry(`controller-${i}`, options.metrics === true);
      const controller = new Controller(
        { name: `controller-${i}`, electionTtlMs: 3_000, probeIntervalMs: 500 },
        { clock: this.clock, now: this.now, kv: links, keys, ...(registry === undefined ? {} : { metrics: new ControllerMetrics(registry) }) },
      );
      controller.start();
      this.controllers.push({ controller, links });
    }
    await this.clock.advance(5_000);
  }

  #vmEnvironment(host: string, manageVms: boolean): { hypervisor: MemoryHypervisor; leases?: MemoryVmLeases } {
    const hypervisor = new MemoryHypervisor();
    if (!manageVms) return { hypervisor };
    const leases = new MemoryVmLeases(host);
    this.vmHosts.set(host, { hypervisor, leases });
    return { hypervisor, leases };
  }

  /** Cuts (or heals) one host's links to the planes that are "down" in `states`. */
  setLinks(host: string, states: PlaneStates): void {
    const { links } = this.agents.get(host)!;
    for (const plane of planes) {
      if (states[plane] === "down") links[plane].cut("refuse");
      else links[plane].heal();
    }
  }

  async requests(): Promise<string[]> {
    const range = await this.admin.management.getPrefix(keys.recoveryRequestsPrefix);
    return range.entries.map((e) => e.key.slice(keys.recoveryRequestsPrefix.length));
  }

  async mode(): Promise<string | undefined> {
    const entry = await this.admin.management.get(keys.mode);
    return entry === undefined ? undefined : (JSON.parse(entry.value) as { mode: string }).mode;
  }

  async stop(): Promise<void> {
    await this.clock.run(Promise.all([...[...this.agents.values()].map((a) => a.agent.stop()), ...this.controllers.map((c) => c.controller.stop())]));
  }
}

describe("control plane on in-memory etcd and virtual time", () => {
  for (let row = 0; row < 7; row++) {
    const states: PlaneStates = { management: row & 4 ? "up" : "down", service: row & 2 ? "up" : "down", storage: row & 1 ? "up" : "down" };
    const wanted = haWanted(defaultStrategy, states);
    test(`row ${row}: host-2's links cut to the down planes → ${wanted ? "recovery requested after TTL + grace, not before" : "never a recovery request"}`, async () => {
      const lab = new Lab();
      await lab.setup(4);
      expect(await lab.mode()).toBe("normal");
      lab.setLinks("host-2", states);
      // The heartbeat keys vanish at most TTL after the last renewal; then the grace period runs.
      await lab.clock.advance(graceMs);
      expect(await lab.requests()).toEqual([]);
      await lab.clock.advance(ttlMs + 1_000);
      expect(await lab.requests()).toEqual(wanted ? ["host-2"] : []);
      await lab.clock.advance(20_000);
      expect(await lab.requests()).toEqual(wanted ? ["host-2"] : []);
      expect(lab.agents.get("host-2")!.agent.reachability()).toEqual({ management: states.management === "up", storage: states.storage === "up", service: states.service === "up" });
      const events = (await listEvents(lab.admin.management, keys, { limit: 1000 })).events.map((e) => e.record);
      if (wanted) expect(events.filter((e) => e.kind === "ha-needed").map((e) => e.host)).toEqual(["host-2"]);
      expect(events.filter((e) => e.kind === "plane-down" && e.host === "host-2")).toHaveLength(planes.filter((p) => states[p] === "down").length);
      await lab.stop();
    });
  }

  test("a standby takes over when the leader is cut off; the old leader stops deciding before that", async () => {
    const lab = new Lab();
    await lab.setup(3, 2, { metrics: true });
    const leaderIndex = lab.controllers.findIndex((c) => c.controller.leading);
    expect(leaderIndex).toBeGreaterThanOrEqual(0);
    const [leader, standby] = [lab.controllers[leaderIndex]!, lab.controllers[1 - leaderIndex]!];
    const [leaderName, standbyName] = [leader.controller.options.name, standby.controller.options.name];
    expect([lab.metric(leaderName, "fitha_controller_is_leader"), lab.metric(standbyName, "fitha_controller_is_leader")]).toEqual([1, 0]);
    expect(lab.metric(leaderName, "fitha_controller_host_plane_up", { host: "host-2", plane: "storage" })).toBe(1);
    expect(parsePrometheusText(lab.registries.get(standbyName)!.render()).get("fitha_controller_host_plane_up")!.samples).toEqual([]);
    for (const plane of planes) leader.links[plane].cut("hang");
    let overlap = false;
    for (let t = 0; t < 12_000; t += 100) {
      await lab.clock.advance(100);
      if (leader.controller.leading && standby.controller.leading) overlap = true;
    }
    expect(overlap).toBe(false);
    expect(leader.controller.leading).toBe(false);
    expect(standby.controller.leading).toBe(true);
    expect([lab.metric(leaderName, "fitha_controller_leader_changes_total", { change: "elected" }), lab.metric(leaderName, "fitha_controller_leader_changes_total", { change: "lost" })]).toEqual([1, 1]);
    expect([lab.metric(standbyName, "fitha_controller_leader_changes_total", { change: "elected" }), lab.metric(standbyName, "fitha_controller_leader_changes_total", { change: "lost" })]).toEqual([1, 0]);
    expect([lab.metric(leaderName, "fitha_controller_is_leader"), lab.metric(standbyName, "fitha_controller_is_leader")]).toEqual([0, 1]);
    // The new leader decides: a host failing now is recovered.
    lab.setLinks("host-1", { management: "down", service: "down", storage: "down" });
    await lab.clock.advance(ttlMs + graceMs + 2_000);
    expect(await lab.requests()).toEqual(["host-1"]);
    expect(lab.metric(standbyName, "fitha_controller_host_decision", { host: "host-1", decision: "ha-needed" })).toBe(1);
    for (const plane of planes) expect(lab.metric(standbyName, "fitha_controller_host_plane_up", { host: "host-1", plane })).toBe(0);
    await lab.stop();
  });

  test("self-defense when half the hosts go down at once; HA resumes at 70 % healthy", async () => {
    const lab = new Lab();
    await lab.setup(4);
    for (const host of ["host-1", "host-2"]) lab.setLinks(host, { management: "down", service: "down", storage: "down" });
    await lab.clock.advance(ttlMs + graceMs + 2_000);
    expect(await lab.mode()).toBe("self-defense");
    expect(await lab.requests()).toEqual([]);
    lab.setLinks("host-2", { management: "up", service: "up", storage: "up" });
    await lab.clock.advance(3_000);
    expect(await lab.mode()).toBe("normal"); // 3 of 4 healthy: 75 %
    await lab.clock.advance(graceMs);
    expect(await lab.requests()).toEqual(["host-1"]);
    await lab.stop();
  });

  test("maintenance (global, then per host) holds recovery back; runtime settings apply without restart", async () => {
    const lab = new Lab();
    await lab.setup(4);
    const record = (on: boolean) => JSON.stringify({ on, reason: "test", by: "cli@test", at: lab.now().toISOString() });
    await lab.admin.management.put(keys.maintenanceGlobal, record(true));
    lab.setLinks("host-3", { management: "down", service: "down", storage: "down" });
    await lab.clock.advance(ttlMs + graceMs + 2_000);
    expect(await lab.mode()).toBe("maintenance");
    expect(await lab.requests()).toEqual([]);
    await lab.admin.management.put(keys.maintenanceHost("host-3"), record(true));
    await lab.admin.management.put(keys.maintenanceGlobal, record(false));
    await lab.clock.advance(2_000);
    expect(await lab.mode()).toBe("normal");
    expect(await lab.requests()).toEqual([]);
    await lab.admin.management.put(keys.maintenanceHost("host-3"), record(false));
    await lab.clock.advance(1_000);
    expect(await lab.requests()).toEqual(["host-3"]);
    // A longer heartbeat TTL reaches the agents at once: host-4's planes then outlive a 4 s cut.
    await lab.admin.management.put(keys.settings, JSON.stringify({ ...settingsToJson(defaultSettings), heartbeat_interval_ms: 1_000, heartbeat_ttl_ms: 20_000 }));
    await lab.clock.advance(2_000);
    expect(lab.agents.get("host-4")!.agent.settings.heartbeatTtlMs).toBe(20_000);
    lab.setLinks("host-4", { management: "down", service: "down", storage: "down" });
    await lab.clock.advance(6_000);
    lab.setLinks("host-4", { management: "up", service: "up", storage: "up" });
    await lab.clock.advance(graceMs + 2_000);
    expect(await lab.requests()).toEqual(["host-3"]);
    await lab.stop();
  });

  test("a plane's cluster unreachable from the controller: platform fault, no HA from that plane", async () => {
    const lab = new Lab();
    await lab.setup(4);
    lab.controllers[0]!.links.storage.cut("refuse");
    lab.setLinks("host-1", { management: "up", service: "up", storage: "down" }); // row 6: HA if it were seen
    await lab.clock.advance(ttlMs + graceMs + 2_000);
    expect(await lab.requests()).toEqual([]);
    const events = (await listEvents(lab.admin.management, keys, { limit: 1000 })).events.map((e) => e.record.kind);
    expect(events).toContain("platform-fault");
    lab.controllers[0]!.links.storage.heal();
    await lab.clock.advance(2_000);
    expect(await lab.requests()).toEqual([]); // the grace period restarts from the fresh read
    // The watch's retries back off (up to 10 s) while the link is cut: the fresh read may come that late.
    await lab.clock.advance(graceMs + 10_000);
    expect(await lab.requests()).toEqual(["host-1"]);
    await lab.stop();
  });

});

/** The registry's HA VMs on `host`: vm-1..vm-N, priorities as given, 1 GiB and 1 vCPU each. */
async function registerVms(lab: Lab, host: string, priorities: number[], options: { ha?: boolean; prefix?: string; firstNumber?: number } = {}): Promise<string[]> {
  const uuids: string[] = [];
  for (const [i, priority] of priorities.entries()) {
    const uuid = `6c1a2b3c-0000-4000-8000-${String(uuids.length + (options.firstNumber ?? (options.prefix === undefined ? 1 : 101))).padStart(12, "0")}`;
    const xml = `<domain type='test'><name>${options.prefix ?? "vm"}-${i + 1}</name><uuid>${uuid}</uuid><memory unit='GiB'>1</memory><vcpu>1</vcpu></domain>`;
    await addVm(lab.admin.management, keys, { definition: readDomainDefinition(xml), ha: options.ha ?? true, priority, group: "", host }, { now: lab.now });
    uuids.push(uuid);
  }
  return uuids;
}

/** Plays the agents: answers every start order with `answer(host, vm)`; returns the orders seen, in order. */
async function answerOrders(lab: Lab, answer: (host: string, vm: string) => Pick<OrderResult, "outcome" | "reason" | "holder" | "freeInMs">, seen: string[]): Promise<void> {
  const orders = await lab.admin.management.getPrefix(`${keys.prefix}/orders/`);
  for (const entry of orders.entries) {
    const [host, vm] = entry.key.slice(`${keys.prefix}/orders/`.length).split("/") as [string, string];
    if (seen.includes(`${host}/${vm}@${entry.modRevision}`)) continue;
    seen.push(`${host}/${vm}@${entry.modRevision}`);
    const result: OrderResult = { vm, host, action: "start", at: lab.now().toISOString(), ...answer(host, vm) };
    orderResultCodec(result, "check");
    await lab.admin.management.put(keys.orderResult(host, vm), JSON.stringify(result));
  }
}

async function tasks(lab: Lab) {
  const range = await lab.admin.management.getPrefix(keys.tasksPrefix);
  return new Map(range.entries.map((e) => [e.key.slice(keys.tasksPrefix.length), taskRecord(JSON.parse(e.value), e.key)]));
}

describe("recovery on in-memory etcd and virtual time", () => {
  const done = { outcome: "done" as const, reason: "started", holder: null, freeInMs: null };

  test("a failed host's HA VMs get one task each, started elsewhere by priority within the limit; non-HA VMs stay", async () => {
    const lab = new Lab();
    await lab.setup(4);
    await lab.admin.management.put(keys.settings, JSON.stringify({ ...settingsToJson(defaultSettings), heartbeat_interval_ms: 1_000, heartbeat_ttl_ms: ttlMs, recovery_concurrency: 2, recovery_concurrency_per_host: 2 }));
    const ha = await registerVms(lab, "host-2", [1, 9, 5]);
    await registerVms(lab, "host-2", [0], { ha: false, prefix: "plain" });
    lab.setLinks("host-2", { management: "down", service: "down", storage: "down" });
    await lab.clock.advance(ttlMs + graceMs + 2_000);
    const first = await tasks(lab);
    expect([...first.keys()].sort()).toEqual([...ha].sort());
    // Limit 2: the two highest priorities are starting, the third waits.
    const startingNow = [...first.values()].filter((t) => t.state === "starting").map((t) => t.vm);
    expect(startingNow.sort()).toEqual([ha[1]!, ha[2]!].sort());
    expect([...first.values()].every((t) => t.target !== "host-2" && (t.state !== "starting" || t.target !== null))).toBe(true);
    const seen: string[] = [];
    for (let round = 0; round < 5; round++) {
      await answerOrders(lab, () => done, seen);
      await lab.clock.advance(1_000);
    }
    const finished = await tasks(lab);
    expect([...finished.values()].map((t) => t.state)).toEqual(["done", "done", "done"]);
    expect(seen).toHaveLength(3);
    const events = (await listEvents(lab.admin.management, keys, { limit: 1000 })).events.map((e) => e.record);
    expect(events.filter((e) => e.kind === "vm-recovered")).toHaveLength(3);
    // The registry knows where they run now.
    for (const uuid of ha) {
      const vm = JSON.parse((await lab.admin.management.get(keys.vm(uuid)))!.value) as { host: string };
      expect(vm.host).not.toBe("host-2");
    }
    await lab.stop();
  });

  test("a host put in maintenance while its VMs are being recovered: what is starting finishes, the rest waits until maintenance ends (found by the simulator)", async () => {
    const lab = new Lab();
    await lab.setup(4);
    await lab.admin.management.put(keys.settings, JSON.stringify({ ...settingsToJson(defaultSettings), heartbeat_interval_ms: 1_000, heartbeat_ttl_ms: ttlMs, recovery_concurrency: 1, recovery_concurrency_per_host: 1 }));
    const ha = await registerVms(lab, "host-2", [3, 2, 1]);
    lab.setLinks("host-2", { management: "down", service: "down", storage: "down" });
    await lab.clock.advance(ttlMs + graceMs + 2_000);
    const starting = () => [...tasksNow.values()].filter((t) => t.state === "starting").map((t) => t.vm);
    let tasksNow = await tasks(lab);
    expect(starting()).toEqual([ha[0]!]);
    const record = (on: boolean) => JSON.stringify({ on, reason: "test", by: "cli@test", at: lab.now().toISOString() });
    await lab.admin.management.put(keys.maintenanceHost("host-2"), record(true));
    await lab.clock.advance(1_000);
    const seen: string[] = [];
    for (let round = 0; round < 5; round++) {
      await answerOrders(lab, () => done, seen);
      await lab.clock.advance(1_000);
    }
    tasksNow = await tasks(lab);
    expect(seen).toHaveLength(1);
    expect([...tasksNow.values()].map((t) => t.state).sort()).toEqual(["done", "queued", "queued"]);
    await lab.admin.management.put(keys.maintenanceHost("host-2"), record(false));
    for (let round = 0; round < 6; round++) {
      await lab.clock.advance(1_000);
      await answerOrders(lab, () => done, seen);
    }
    await lab.clock.advance(1_000);
    expect([...(await tasks(lab)).values()].map((t) => t.state)).toEqual(["done", "done", "done"]);
    await lab.stop();
  });

  test("VMs with nowhere to go wait, unplanned while nothing changes, and start once a host can take them", async () => {
    const lab = new Lab();
    await lab.setup(4);
    await lab.admin.management.put(keys.settings, JSON.stringify({ ...settingsToJson(defaultSettings), heartbeat_interval_ms: 1_000, heartbeat_ttl_ms: ttlMs }));
    // host-1 and host-4 are full (16 GiB each, 16 VMs of 1 GiB running); host-3 lost its service
    // plane (row 5: no HA, and not healthy enough to take VMs).
    for (const [host, firstNumber] of [["host-1", 101], ["host-4", 201]] as const) {
      for (const vm of await registerVms(lab, host, Array.from({ length: 16 }, () => 0), { ha: false, prefix: `filler-${host}`, firstNumber })) {
        await lab.admin.management.put(keys.vmState(host, vm), JSON.stringify({ vm, host, name: vm, state: "running", at: lab.now().toISOString() }));
      }
    }
    lab.setLinks("host-3", { management: "up", service: "down", storage: "up" });
    const ha = await registerVms(lab, "host-2", [1, 2]);
    lab.setLinks("host-2", { management: "down", service: "down", storage: "down" });
    await lab.clock.advance(ttlMs + graceMs + 2_000);
    expect([...(await tasks(lab)).values()].map((t) => t.state)).toEqual(["queued", "queued"]);
    await lab.clock.advance(10_000);
    expect([...(await tasks(lab)).values()].map((t) => t.state)).toEqual(["queued", "queued"]);
    // Only the set of hosts VMs may go to changes: nothing the recovery follows itself.
    lab.setLinks("host-3", { management: "up", service: "up", storage: "up" });
    await lab.clock.advance(3_000);
    const after = await tasks(lab);
    expect(ha.map((vm) => [after.get(vm)?.state, after.get(vm)?.target])).toEqual([
      ["starting", "host-3"],
      ["starting", "host-3"],
    ]);
    await lab.stop();
  });

  test("a lease still held is a wait, not an attempt; five failed starts give up with an event", async () => {
    const lab = new Lab();
    await lab.setup(4);
    const [held, doomed] = await registerVms(lab, "host-3", [5, 1]);
    lab.setLinks("host-3", { management: "down", service: "down", storage: "down" });
    await lab.clock.advance(ttlMs + graceMs + 2_000);
    const seen: string[] = [];
    let heldAnswers = 0;
    const heldOrderedAtMs: number[] = [];
    for (let round = 0; round < 200; round++) {
      await answerOrders(
        lab,
        (_host, vm) => {
          if (vm === held) heldOrderedAtMs.push(lab.clock.nowMs());
          if (vm === held && heldAnswers++ < 2) return { outcome: "lease-held", reason: "held", holder: "host-3 (host id 3)", freeInMs: 20_000 };
          if (vm === held) return done;
          return { outcome: "failed", reason: "libvirt refused the XML", holder: null, freeInMs: null };
        },
        seen,
      );
      await lab.clock.advance(1_000);
    }
    const final = await tasks(lab);
    expect(final.get(held!)).toMatchObject({ state: "done", attempts: 0 });
    expect(final.get(doomed!)).toMatchObject({ state: "failed", attempts: 5 });
    const events = (await listEvents(lab.admin.management, keys, { limit: 1000 })).events.map((e) => e.record.kind);
    // host-3's request is open: the held lease is looked at again every 2 s (host-3 may let it
    // go at any time), not only when it could be taken (20 s); one event says it waits.
    expect(heldOrderedAtMs).toHaveLength(3);
    expect(heldOrderedAtMs[2]! - heldOrderedAtMs[0]!).toBeLessThanOrEqual(6_000);
    expect(events.filter((kind) => kind === "recovery-waiting")).toHaveLength(1);
    expect(events).toContain("recovery-failed");
    await lab.stop();
  });

  test("the recovery limit changed from 2 to 50 during a recovery: concurrency follows at once", async () => {
    const lab = new Lab();
    await lab.setup(4);
    const limits = (global: number, perHost: number) => JSON.stringify({ ...settingsToJson(defaultSettings), heartbeat_interval_ms: 1_000, heartbeat_ttl_ms: ttlMs, recovery_concurrency: global, recovery_concurrency_per_host: perHost });
    await lab.admin.management.put(keys.settings, limits(2, 2));
    await registerVms(lab, "host-4", Array.from({ length: 60 }, () => 0));
    lab.setLinks("host-4", { management: "down", service: "down", storage: "down" });
    await lab.clock.advance(ttlMs + graceMs + 2_000);
    const startingCount = async () => [...(await tasks(lab)).values()].filter((t) => t.state === "starting").length;
    expect((await tasks(lab)).size).toBe(60);
    expect(await startingCount()).toBe(2);
    const stepsBefore = lab.controllers[0]!.controller.stepsTaken;
    await lab.clock.advance(5_000);
    expect(await startingCount()).toBe(2); // nobody answered: the limit holds
    // ...and the leader looks again every 100 ms at most, not without pause, at the 58 tasks due (~240 steps before).
    expect(lab.controllers[0]!.controller.stepsTaken - stepsBefore).toBeLessThanOrEqual(60);
    await lab.admin.management.put(keys.settings, limits(50, 50));
    await lab.clock.advance(100);
    // 16 GiB per host, 1 GiB per VM: 3 hosts take 16 each.
    expect(await startingCount()).toBe(48);
    await lab.stop();
  });

  test("a new leader in the middle of a recovery resumes it: every VM started exactly once", async () => {
    const lab = new Lab();
    await lab.setup(5, 2);
    const vms = await registerVms(lab, "host-1", Array.from({ length: 20 }, (_, i) => i % 3));
    lab.setLinks("host-1", { management: "down", service: "down", storage: "down" });
    await lab.clock.advance(ttlMs + graceMs + 2_000);
    const seen: string[] = [];
    await answerOrders(lab, () => done, seen);
    await lab.clock.advance(1_000);
    const leader = lab.controllers.find((c) => c.controller.leading)!;
    for (const plane of planes) leader.links[plane].cut("hang");
    for (let round = 0; round < 40; round++) {
      await answerOrders(lab, () => done, seen);
      await lab.clock.advance(1_000);
    }
    const final = await tasks(lab);
    expect([...final.values()].filter((t) => t.state === "done")).toHaveLength(20);
    // One start order per VM, never two.
    const perVm = new Map<string, number>();
    for (const order of seen) {
      const vm = order.split("/")[1]!.split("@")[0]!;
      perVm.set(vm, (perVm.get(vm) ?? 0) + 1);
    }
    expect([...perVm.values()].every((count) => count === 1)).toBe(true);
    expect(perVm.size).toBe(vms.length);
    await lab.stop();
  });
  test("a task's move to \"starting\" and its order are one write (no leader can stop in between); its result is removed with the task's next move", async () => {
    const lab = new Lab();
    await lab.setup(3);
    const [vm] = await registerVms(lab, "host-1", [0]);
    lab.setLinks("host-1", { management: "down", service: "down", storage: "down" });
    await lab.clock.advance(ttlMs + graceMs + 2_000);
    const task = (await lab.admin.management.get(keys.task(vm!)))!;
    const orders = (await lab.admin.management.getPrefix(`${keys.prefix}/orders/`)).entries;
    expect(orders).toHaveLength(1);
    expect(orders[0]!.modRevision).toBe(task.modRevision);
    await answerOrders(lab, () => done, []);
    await lab.clock.advance(1_000);
    const moved = (await lab.admin.management.get(keys.task(vm!)))!;
    expect(JSON.parse(moved.value)).toMatchObject({ state: "done" });
    expect((await lab.admin.management.getPrefix(`${keys.prefix}/order-results/`)).entries).toEqual([]);
    expect((await lab.admin.management.getPrefix(`${keys.prefix}/orders/`)).entries).toEqual([]);
    await lab.stop();
  });
  test("an order no agent answers within the start timeout is a failed attempt; the order goes with the task's move", async () => {
    const lab = new Lab();
    await lab.setup(3);
    const [vm] = await registerVms(lab, "host-1", [0]);
    lab.setLinks("host-1", { management: "down", service: "down", storage: "down" });
    await lab.clock.advance(ttlMs + graceMs + 2_000);
    const target = ((await tasks(lab)).get(vm!)!).target!;
    expect(await lab.admin.management.get(keys.order(target, vm!))).toBeDefined();
    await lab.clock.advance(startTimeoutMs - 5_000);
    expect((await tasks(lab)).get(vm!)).toMatchObject({ state: "starting", attempts: 0 });
    await lab.clock.advance(6_000);
    const moved = (await lab.admin.management.get(keys.task(vm!)))!;
    expect(JSON.parse(moved.value)).toMatchObject({ attempts: 1, tried: [target] });
    // Gone in the same revision as the move (the retry, 2 s later, may order it again elsewhere).
    const history = (await lab.admin.management.getPrefix(`${keys.prefix}/orders/`)).entries;
    expect(history.every((e) => e.key !== keys.order(target, vm!) || e.modRevision > moved.modRevision)).toBe(true);
    await lab.stop();
  });
  test("a leader that stopped right after a task's move to done left the registry behind: the next one brings it up to date", async () => {
    const lab = new Lab();
    await lab.setup(3);
    const [vm] = await registerVms(lab, "host-1", [0]);
    const task: RecoveryTask = { ...newTask(vm!, "host-1", lab.now().getTime() + 1, "host host-1 failed"), state: "done", target: "host-3" };
    await lab.admin.management.put(keys.task(vm!), JSON.stringify(task));
    await lab.clock.advance(1_000);
    expect(JSON.parse((await lab.admin.management.get(keys.vm(vm!)))!.value)).toMatchObject({ host: "host-3" });
    await lab.stop();
  });
});

describe("fencing events on in-memory etcd and virtual time", () => {
  test("one host's storage trouble: its question is answered fence (after waiting for others up to half the window); the event is removed once over", async () => {
    const lab = new Lab();
    await lab.setup(3, 1, { questions: true });
    const asking = lab.questions.get("host-1")!;
    asking.ask(7);
    await lab.clock.advance(2_000);
    expect(asking.answers).toEqual([]); // still waiting for other hosts to report (3 s = half of 6 s)
    expect((await lab.admin.storage.getPrefix(keys.fencingPrefix)).entries.map((e) => e.key)).toEqual([keys.fencing("host-1", 7)]);
    await lab.clock.advance(2_000);
    expect(asking.answers).toEqual([{ question: 7, answer: "fence" }]);
    asking.open = null; // lockd fenced: its question is over
    await lab.clock.advance(1_000);
    for (const plane of planes) expect((await lab.admin[plane].getPrefix(keys.fencingPrefix)).entries).toEqual([]);
    const events = (await listEvents(lab.admin.management, keys, { limit: 100 })).events.map((e) => e.record);
    expect(events.find((e) => e.kind === "fencing-answered")?.reason).toContain("question 7: fence: 2 other host(s) may still read the shared storage");
    await lab.stop();
  });

  test("a host fenced for lost storage (its planes still up) has its HA VMs recovered elsewhere; the request closes when they run", async () => {
    const lab = new Lab();
    await lab.setup(3, 1, { questions: true, metrics: true });
    const [uuid] = await registerVms(lab, "host-1", [0]);
    lab.questions.get("host-1")!.ask(3);
    await lab.clock.advance(4_000);
    expect(lab.questions.get("host-1")!.answers).toEqual([{ question: 3, answer: "fence" }]);
    const request = JSON.parse((await lab.admin.management.get(keys.recoveryRequest("host-1")))!.value) as { cause: string };
    expect(request.cause).toBe("storage");
    await lab.clock.advance(1_000);
    const task = (await tasks(lab)).get(uuid!)!;
    expect(task).toMatchObject({ state: "starting", source: "host-1" });
    expect(task.target).not.toBe("host-1");
    await answerOrders(lab, () => ({ outcome: "done", reason: "started", holder: null, freeInMs: null }), []);
    await lab.clock.advance(1_000);
    const done = (await tasks(lab)).get(uuid!)!;
    expect(done).toMatchObject({ state: "done" });
    expect(await lab.admin.management.get(keys.recoveryRequest("host-1"))).toBeUndefined();
    expect(lab.metric("controller-1", "fitha_controller_fencing_answers_total", { answer: "fence" })).toBe(1);
    expect([lab.metric("controller-1", "fitha_controller_recovery_tasks", { state: "done" }), lab.metric("controller-1", "fitha_controller_recovery_tasks", { state: "starting" })]).toEqual([1, 0]);
    expect(lab.metric("controller-1", "fitha_controller_recovery_duration_seconds_count", { result: "done" })).toBe(1);
    expect(lab.metric("controller-1", "fitha_controller_recovery_duration_seconds_sum", { result: "done" })).toBe((done.updatedMs - done.createdMs) / 1000);
    await lab.stop();
  });

  test("every host loses the storage: no-fence for all, at once; the same question on three planes is answered once", async () => {
    const lab = new Lab();
    await lab.setup(3, 1, { questions: true, metrics: true });
    for (const [i, host] of ["host-1", "host-2", "host-3"].entries()) lab.questions.get(host)!.ask(i + 1);
    await lab.clock.advance(1_000);
    for (const [i, host] of ["host-1", "host-2", "host-3"].entries()) expect(lab.questions.get(host)!.answers).toEqual([{ question: i + 1, answer: "no-fence" }]);
    const kinds = () => listEvents(lab.admin.management, keys, { limit: 100 }).then((list) => list.events.map((e) => e.record.kind));
    expect((await kinds()).filter((kind) => kind === "fencing-answered")).toHaveLength(3);
    // One episode, one storage-global-fault event (the alarm), not one per question.
    expect((await kinds()).filter((kind) => kind === "storage-global-fault")).toHaveLength(1);
    expect([lab.metric("controller-1", "fitha_controller_fencing_answers_total", { answer: "no-fence" }), lab.metric("controller-1", "fitha_controller_fencing_answers_total", { answer: "fence" })]).toEqual([3, 0]);
    // The VMs stay where they are: nothing to recover.
    expect(await lab.requests()).toEqual([]);
    // The episode ends when every question is over; the next one is a new episode.
    for (const host of ["host-1", "host-2", "host-3"]) lab.questions.get(host)!.open = null;
    await lab.clock.advance(2_000);
    for (const [i, host] of ["host-1", "host-2", "host-3"].entries()) lab.questions.get(host)!.ask(i + 10);
    await lab.clock.advance(1_000);
    expect((await kinds()).filter((kind) => kind === "storage-global-fault")).toHaveLength(2);
    await lab.stop();
  });

  test("lockd's notices (it fenced, leases taken, a corrupt record) become events of the host", async () => {
    const lab = new Lab();
    await lab.setup(2, 1, { questions: true });
    const lockd = lab.questions.get("host-2")!;
    lockd.notify({ event: "fenced", reason: "renewal failed", vms: ["vm-a"], failed: [] });
    lockd.notify({ event: "leases-taken", vms: ["vm-b"], stopped: ["vm-b"], failed: [] });
    lockd.notify({ event: "corrupt", op: "acquire", message: "slot 4 leader: bad checksum" });
    await lab.clock.advance(100);
    const events = (await listEvents(lab.admin.management, keys, { limit: 100 })).events.map((e) => e.record).filter((e) => e.by === "agent@host-2" && e.kind !== "host-registered");
    // Events of one millisecond are in no particular order.
    const byKind = new Map(events.map((e) => [e.kind, e]));
    expect([...byKind.keys()].sort()).toEqual(["lease-corrupt", "leases-taken", "lockd-fenced"]);
    for (const event of events) expect(event.host).toBe("host-2");
    expect(byKind.get("lockd-fenced")!.reason).toContain("stopped: vm-a");
    expect(byKind.get("lease-corrupt")!.reason).toContain("bad checksum");
    await lab.stop();
  });
});

describe("clock jumps on in-memory etcd and virtual time", () => {
  test("a wall clock stepped by more than the threshold is a clock-jump event of each host; drift below it is not", async () => {
    const lab = new Lab();
    await lab.setup(2);
    const jumps = async () => (await listEvents(lab.admin.management, keys, { limit: 1000 })).events.map((e) => e.record).filter((e) => e.kind === "clock-jump");
    lab.stepWallClock(clockJumpThresholdMs - 500);
    await lab.clock.advance(2 * clockCheckIntervalMs);
    expect(await jumps()).toEqual([]);
    lab.stepWallClock(-45_000);
    await lab.clock.advance(clockCheckIntervalMs);
    const reported = await jumps();
    expect(reported.map((e) => e.host).sort()).toEqual(["host-1", "host-2"]);
    expect(reported[0]!.reason).toStartWith("the wall clock jumped back 45.0 s");
    // Reported once: the next intervals are steady again.
    await lab.clock.advance(3 * clockCheckIntervalMs);
    expect(await jumps()).toHaveLength(2);
    await lab.stop();
  });
});

describe("self-fencing on in-memory etcd and virtual time", () => {
  test("row 4 (management still reachable): the agent fences on the controller's recovery request, and the VM watch does not restart the VM in place", async () => {
    const lab = new Lab();
    await lab.setup(3, 1, { questions: true, vms: true, metrics: true });
    const { hypervisor, leases } = lab.vmHosts.get("host-1")!;
    const [uuid] = await registerVms(lab, "host-1", [0]);
    const record = JSON.parse((await lab.admin.management.get(keys.vm(uuid!)))!.value) as { xml: string };
    await hypervisor.define(record.xml);
    await hypervisor.start(uuid!);
    await leases.acquire(uuid!, 0);
    lab.questions.get("host-1")!.held = [{ vm: uuid!, slot: 0 }];
    await lab.clock.advance(3_000);
    lab.setLinks("host-1", { management: "up", service: "down", storage: "down" });
    // Its own view is an HA row from the start, but with management reachable it waits for the
    // controller, which decides after the heartbeats' TTL and the grace period.
    await lab.clock.advance(graceMs + 1_000);
    expect((await hypervisor.lookup(uuid!))?.state).toBe("running");
    expect(await lab.requests()).toEqual([]);
    await lab.clock.advance(ttlMs + 2_000);
    expect(await lab.requests()).toEqual(["host-1"]);
    expect((await hypervisor.lookup(uuid!))?.state).toBe("shutoff");
    await lab.clock.advance(10_000);
    expect((await hypervisor.lookup(uuid!))?.state).toBe("shutoff");
    expect(leases.calls.filter((c) => c.startsWith("acquire"))).toHaveLength(1);
    expect(lab.metric("host-1", "fitha_agent_self_fencings_total")).toBe(1);
    expect(lab.metric("host-1", "fitha_agent_vm_restarts_total", { result: "started" })).toBe(0);
    // Its own view of the planes: storage and service unreachable for the last 13 s, management renewed within its 1 s interval.
    expect([lab.metric("host-1", "fitha_agent_plane_reachable", { plane: "management" }), lab.metric("host-1", "fitha_agent_plane_reachable", { plane: "storage" })]).toEqual([1, 0]);
    expect(lab.metric("host-1", "fitha_agent_heartbeat_age_seconds", { plane: "management" })).toBeLessThanOrEqual(1);
    expect(lab.metric("host-1", "fitha_agent_heartbeat_age_seconds", { plane: "storage" })).toBeGreaterThanOrEqual(ttlMs / 1000 + 10);
    expect(lab.metric("host-1", "fitha_agent_heartbeat_renewals_total", { plane: "storage", result: "failed" })).toBeGreaterThan(0);
    await lab.stop();
  });

  test("a host cut from every plane (still holding its leases) stops its HA VMs and releases their leases after the grace period; in maintenance it does not", async () => {
    for (const maintenance of [false, true]) {
      const lab = new Lab();
      await lab.setup(3, 1, { questions: true, vms: true });
      if (maintenance) await lab.admin.management.put(keys.maintenanceHost("host-1"), JSON.stringify({ on: true, reason: "test", by: "cli@test", at: lab.now().toISOString() }));
      const { hypervisor, leases } = lab.vmHosts.get("host-1")!;
      const vm = await hypervisor.define("<domain type='test'><name>web-1</name><uuid>6c1a2b3c-0000-4000-8000-00000000a001</uuid></domain>");
      await hypervisor.start(vm.uuid);
      await leases.acquire(vm.uuid, 0);
      lab.questions.get("host-1")!.held = [{ vm: vm.uuid, slot: 0 }];
      await lab.clock.advance(1_000);
      lab.setLinks("host-1", { management: "down", service: "down", storage: "down" });
      await lab.clock.advance(graceMs - 500);
      expect((await hypervisor.lookup(vm.uuid))?.state).toBe("running");
      await lab.clock.advance(3_000);
      expect((await hypervisor.lookup(vm.uuid))?.state).toBe(maintenance ? "running" : "shutoff");
      expect(leases.calls.includes(`release ${vm.uuid} 0`)).toBe(!maintenance);
      await lab.stop();
    }
  });
});
