/**
 * The agent's VM half on in-memory etcd, virtual time, an in-memory hypervisor and in-memory VM
 * leases: state reports (vm-watch.ts), restart in place, and the controller's orders
 * (order-runner.ts), as the controller sees them through etcd.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Writable } from "node:stream";
import { Agent } from "../../src/agent/agent.ts";
import { AgentMetrics } from "../../src/agent/agent-metrics.ts";
import { minConcurrentOrders, OrderRunner } from "../../src/agent/order-runner.ts";
import { VmActions } from "../../src/agent/vm-actions.ts";
import { MemoryVmLeases } from "../../src/agent/vm-leases.ts";
import { restartBackoffMs, vmPollIntervalMs, VmWatch } from "../../src/agent/vm-watch.ts";
import { SelfFence } from "../../src/agent/self-fence.ts";
import { VirtualClock } from "../../src/core/clock.ts";
import { configureLogging } from "../../src/log.ts";
import { MetricsRegistry } from "../../src/metrics/registry.ts";
import { listEvents } from "../../src/store/events.ts";
import { keys as keysFor } from "../../src/store/keys.ts";
import type { KvChange } from "../../src/store/kv.ts";
import { MemoryCluster } from "../../src/store/memory-kv.ts";
import { orderResult, vmStateRecord, type OrderResult, type VmOrder, type VmRecord, type VmStateRecord } from "../../src/store/records.ts";
import { addVm } from "../../src/store/vm-registry.ts";
import { readDomainDefinition } from "../../src/virt/domain-definition.ts";
import { HypervisorError, type DomainInfo } from "../../src/virt/hypervisor.ts";
import { MemoryHypervisor } from "../../src/virt/memory-hypervisor.ts";
import { parsePrometheusText, sampleOf } from "../helpers/prometheus-text.ts";

beforeAll(() => configureLogging({ level: "error", format: "json", stream: new Writable({ write: (_chunk, _encoding, done) => done() }) }));
afterAll(() => configureLogging({ level: "info", format: "human" }));

const keys = keysFor("/fitha");
const host = "host-1";

function uuidOf(n: number): string {
  return `6c1a2b3c-0000-4000-8000-${String(n).padStart(12, "0")}`;
}

function xmlOf(name: string, uuid: string): string {
  return `<domain type='test'><name>${name}</name><uuid>${uuid}</uuid><memory unit='GiB'>1</memory><vcpu>1</vcpu></domain>`;
}

/** A hypervisor whose listing fails on demand and whose starts take virtual time (to see them overlap). */
class TestHypervisor extends MemoryHypervisor {
  failedLists = 0;
  startsInFlight = 0;
  maxStartsInFlight = 0;
  starts = 0;

  constructor(readonly clock: VirtualClock) {
    super({ uri: "memory:///host-1", clock });
  }

  override async listDomains(): Promise<DomainInfo[]> {
    if (this.failedLists > 0) {
      this.failedLists--;
      throw new HypervisorError(this.uri, "list", undefined, "unanswered", "injected: no answer");
    }
    return await super.listDomains();
  }

  override async start(nameOrUuid: string): Promise<void> {
    this.starts++;
    this.startsInFlight++;
    this.maxStartsInFlight = Math.max(this.maxStartsInFlight, this.startsInFlight);
    try {
      await super.start(nameOrUuid);
    } finally {
      this.startsInFlight--;
    }
  }
}

class Bench {
  readonly clock = new VirtualClock();
  readonly cluster = new MemoryCluster(this.clock);
  /** The agent's link to the management cluster. */
  readonly kv = this.cluster.connect({ name: "etcd of the management plane (agent)", requestTimeoutMs: 1_000 });
  /** The controller's and the operator's. */
  readonly admin = this.cluster.connect({ name: "etcd of the management plane (admin)", requestTimeoutMs: 1_000 });
  readonly hypervisor = new TestHypervisor(this.clock);
  readonly leases = new MemoryVmLeases(host);
  readonly actions = new VmActions(this.hypervisor, this.leases);
  readonly registry = new MetricsRegistry();
  readonly metrics = new AgentMetrics(this.registry);
  readonly statePuts: KvChange[] = [];
  readonly stateDeletes: KvChange[] = [];
  watch: VmWatch | undefined;
  orders: OrderRunner | undefined;
  /** The runtime setting recovery_concurrency_per_host, as the agent would follow it. */
  perHostLimit = 2;
  readonly #wallMs = Date.parse("2026-11-23T12:00:00.000Z");

  now = () => new Date(this.#wallMs + this.clock.nowMs());

  async start(parts: { watch?: boolean; orders?: boolean }): Promise<void> {
    await this.admin.watchPrefix(keys.vmStatesPrefix(host), 1n, {
      onChanges: (changes) => {
        for (const change of changes) (change.type === "put" ? this.statePuts : this.stateDeletes).push(change);
      },
      onClosed: () => undefined,
    });
    const options = { host, kv: this.kv, keys, clock: this.clock, now: this.now, actions: this.actions, metrics: this.metrics };
    if (parts.watch === true) this.watch = new VmWatch(options);
    if (parts.orders === true) this.orders = new OrderRunner({ ...options, perHostLimit: () => this.perHostLimit });
    await this.clock.advance(0);
  }

  /** The value of one sample of the agent's metrics, as a scrape would show it. */
  metric(name: string, labels: Record<string, string>): number {
    return sampleOf(parsePrometheusText(this.registry.render()), name, labels).value;
  }

  async register(n: number, options: { ha: boolean; host?: string | null }): Promise<VmRecord> {
    return await addVm(this.admin, keys, { definition: readDomainDefinition(xmlOf(`vm-${n}`, uuidOf(n))), ha: options.ha, priority: 0, group: "", host: options.host === undefined ? host : options.host }, { now: this.now });
  }

  /** The VM defined and running here, as after an earlier start (its lease taken if HA). */
  async running(record: VmRecord): Promise<void> {
    await this.hypervisor.define(record.xml);
    await this.hypervisor.start(record.uuid);
    if (record.slot !== null) await this.leases.acquire(record.uuid, record.slot);
  }

  async order(vm: string, action: VmOrder["action"]): Promise<void> {
    const order: VmOrder = { vm, action, issuedAt: this.now().toISOString(), by: "controller@test" };
    await this.admin.put(keys.order(host, vm), JSON.stringify(order));
  }

  async result(vm: string): Promise<OrderResult | undefined> {
    const entry = await this.admin.get(keys.orderResult(host, vm));
    return entry === undefined ? undefined : orderResult(JSON.parse(entry.value), entry.key);
  }

  async orderKeys(): Promise<string[]> {
    return (await this.admin.getPrefix(keys.ordersPrefix(host))).entries.map((e) => e.key);
  }

  async reported(vm: string): Promise<VmStateRecord | undefined> {
    const entry = await this.admin.get(keys.vmState(host, vm));
    return entry === undefined ? undefined : vmStateRecord(JSON.parse(entry.value), entry.key);
  }

  async state(vm: string): Promise<string | undefined> {
    return (await this.hypervisor.lookup(vm))?.state;
  }

  async events(kind: string): Promise<string[]> {
    return (await listEvents(this.admin, keys, { limit: 1000 })).events.filter((e) => e.record.kind === kind).map((e) => e.record.reason);
  }

  /** Lets `rounds` watch rounds pass. */
  async rounds(rounds: number): Promise<void> {
    await this.clock.advance(rounds * vmPollIntervalMs);
  }

  async stop(): Promise<void> {
    await this.clock.run(Promise.all([this.orders?.stop(), this.watch?.stop()]));
  }
}

describe("VM state reports", () => {
  test("written on change only; a vanished domain's key deleted; stale keys of an earlier run cleaned up", async () => {
    const bench = new Bench();
    const [a, b, stale] = [uuidOf(1), uuidOf(2), uuidOf(3)];
    await bench.hypervisor.define(xmlOf("a", a));
    await bench.hypervisor.start(a);
    await bench.hypervisor.define(xmlOf("b", b));
    // An earlier run of the agent reported `a` as it is, and a domain that is gone since.
    const earlier = (vm: string, name: string, state: VmStateRecord["state"]): string => JSON.stringify({ vm, host, name, state, at: bench.now().toISOString() } satisfies VmStateRecord);
    await bench.admin.put(keys.vmState(host, a), earlier(a, "a", "running"));
    await bench.admin.put(keys.vmState(host, stale), earlier(stale, "gone", "running"));
    await bench.start({ watch: true });
    const puts = () => bench.statePuts.filter((p) => p.modRevision > 3n).map((p) => p.key);
    expect(puts()).toEqual([keys.vmState(host, b)]);
    expect(await bench.reported(stale)).toBeUndefined();
    expect(await bench.reported(b)).toMatchObject({ vm: b, host, name: "b", state: "shutoff" });

    await bench.rounds(5);
    expect(puts()).toHaveLength(1);

    await bench.hypervisor.destroy(a);
    await bench.rounds(1);
    expect(puts()).toEqual([keys.vmState(host, b), keys.vmState(host, a)]);
    expect((await bench.reported(a))?.state).toBe("shutoff");

    await bench.hypervisor.undefine(b);
    await bench.rounds(3);
    expect(await bench.reported(b)).toBeUndefined();
    expect(bench.stateDeletes.map((d) => d.key)).toEqual([keys.vmState(host, stale), keys.vmState(host, b)]);
    expect(puts()).toHaveLength(2);
    await bench.stop();
  });

  test("a failing hypervisor or etcd is retried at the next rounds; nothing is lost", async () => {
    const bench = new Bench();
    const a = uuidOf(1);
    await bench.hypervisor.define(xmlOf("a", a));
    bench.hypervisor.failedLists = 2;
    await bench.start({ watch: true });
    await bench.rounds(1);
    expect(await bench.reported(a)).toBeUndefined();
    await bench.rounds(1);
    expect((await bench.reported(a))?.state).toBe("shutoff");

    bench.kv.cut("refuse");
    await bench.hypervisor.start(a);
    await bench.rounds(3);
    expect((await bench.reported(a))?.state).toBe("shutoff");
    bench.kv.heal();
    await bench.rounds(1);
    expect((await bench.reported(a))?.state).toBe("running");
    await bench.stop();
  });
});

describe("orders", () => {
  test("start of an HA VM: lease acquired, defined, started, result done, order deleted", async () => {
    const bench = new Bench();
    const vm = await bench.register(1, { ha: true, host: "host-9" });
    await bench.start({ orders: true });
    await bench.order(vm.uuid, "start");
    await bench.clock.advance(0);
    expect(await bench.result(vm.uuid)).toMatchObject({ vm: vm.uuid, host, action: "start", outcome: "done", holder: null, freeInMs: null });
    expect(await bench.orderKeys()).toEqual([]);
    expect(await bench.state(vm.uuid)).toBe("running");
    expect(bench.leases.calls).toEqual([`acquire ${vm.uuid} ${vm.slot}`]);
    expect(bench.leases.holderOf(vm.slot!)).toBe(host);
    await bench.stop();
  });

  test("start of a VM whose lease another live host holds: lease-held with holder and freeInMs; not defined, not started", async () => {
    const bench = new Bench();
    const vm = await bench.register(1, { ha: true });
    bench.leases.holdElsewhere(vm.uuid, vm.slot!, "host-2", 42_000);
    await bench.start({ orders: true });
    await bench.order(vm.uuid, "start");
    await bench.clock.advance(0);
    expect(await bench.result(vm.uuid)).toMatchObject({ outcome: "lease-held", holder: "host-2", freeInMs: 42_000 });
    expect([bench.metric("fitha_agent_orders_total", { action: "start", outcome: "lease-held" }), bench.metric("fitha_agent_orders_total", { action: "start", outcome: "done" })]).toEqual([1, 0]);
    expect(await bench.hypervisor.lookup(vm.uuid)).toBeUndefined();
    expect(bench.hypervisor.starts).toBe(0);
    expect(await bench.orderKeys()).toEqual([]);
    await bench.stop();
  });

  test("libvirt refusing the start: failed with libvirt's reason, and the lease acquired for it released", async () => {
    const bench = new Bench();
    const vm = await bench.register(1, { ha: true });
    bench.hypervisor.injectFailure("start", vm.uuid, { message: "unsupported configuration: no such emulator" });
    await bench.start({ orders: true });
    await bench.order(vm.uuid, "start");
    await bench.clock.advance(0);
    const result = await bench.result(vm.uuid);
    expect(result).toMatchObject({ outcome: "failed", holder: null, freeInMs: null });
    expect(result?.reason).toContain("no such emulator");
    expect(await bench.state(vm.uuid)).toBe("shutoff");
    expect(bench.leases.calls).toEqual([`acquire ${vm.uuid} ${vm.slot}`, `release ${vm.uuid} ${vm.slot}`]);
    expect(bench.leases.holderOf(vm.slot!)).toBeUndefined();
    await bench.stop();
  });

  test("lockd unreachable, VM not registered: failed with the reason, nothing started", async () => {
    const bench = new Bench();
    const vm = await bench.register(1, { ha: true });
    bench.leases.failNext();
    await bench.start({ orders: true });
    await bench.order(vm.uuid, "start");
    await bench.order(uuidOf(7), "start");
    await bench.clock.advance(0);
    expect((await bench.result(vm.uuid))?.reason).toContain("injected failure");
    expect((await bench.result(uuidOf(7)))?.reason).toContain("not registered");
    expect(bench.hypervisor.starts).toBe(0);
    await bench.stop();
  });

  test("stop: destroyed, lease released; the watch does not take fitha's stop for a crash", async () => {
    const bench = new Bench();
    const vm = await bench.register(1, { ha: true });
    await bench.running(vm);
    await bench.start({ orders: true, watch: true });
    await bench.order(vm.uuid, "stop");
    await bench.rounds(3);
    expect(await bench.result(vm.uuid)).toMatchObject({ action: "stop", outcome: "done" });
    expect(await bench.state(vm.uuid)).toBe("shutoff");
    expect(bench.leases.holderOf(vm.slot!)).toBeUndefined();
    expect((await bench.reported(vm.uuid))?.state).toBe("shutoff");
    expect(await bench.events("vm-restarted")).toEqual([]);
    await bench.stop();
  });

  test("a repeated order is harmless: started once, lease taken once, every result done", async () => {
    const bench = new Bench();
    const vm = await bench.register(1, { ha: true });
    await bench.start({ orders: true });
    for (let i = 0; i < 3; i++) {
      await bench.order(vm.uuid, "start");
      await bench.clock.advance(0);
      expect(await bench.result(vm.uuid)).toMatchObject({ outcome: "done" });
    }
    expect(bench.hypervisor.starts).toBe(1);
    expect(bench.leases.calls).toEqual([`acquire ${vm.uuid} ${vm.slot}`]);
    // An agent that died between the result and the delete runs the order again: the same.
    await bench.order(vm.uuid, "stop");
    await bench.clock.advance(0);
    await bench.order(vm.uuid, "stop");
    await bench.clock.advance(0);
    expect(await bench.result(vm.uuid)).toMatchObject({ action: "stop", outcome: "done" });
    expect(await bench.state(vm.uuid)).toBe("shutoff");
    expect(await bench.orderKeys()).toEqual([]);
    await bench.stop();
  });

  test(`at most max(${minConcurrentOrders}, the per-host recovery limit) orders at once, the limit read as it changes; all carried out`, async () => {
    const bench = new Bench();
    bench.hypervisor.startMs = 1_000;
    const vms: VmRecord[] = [];
    for (let n = 1; n <= 20; n++) vms.push(await bench.register(n, { ha: n % 2 === 0 }));
    await bench.start({ orders: true });
    for (const vm of vms.slice(0, 10)) await bench.order(vm.uuid, "start");
    await bench.clock.advance(10_000);
    // The per-host limit (2) is below the floor: the floor holds.
    expect(bench.hypervisor.maxStartsInFlight).toBe(minConcurrentOrders);
    bench.perHostLimit = 7;
    for (const vm of vms.slice(10)) await bench.order(vm.uuid, "start");
    await bench.clock.advance(10_000);
    expect(bench.hypervisor.maxStartsInFlight).toBe(7);
    for (const vm of vms) expect(await bench.result(vm.uuid)).toMatchObject({ outcome: "done" });
    expect(await bench.orderKeys()).toEqual([]);
    await bench.stop();
  });

  test("results wait out an etcd outage: written once it is back, then the order deleted", async () => {
    const bench = new Bench();
    const vm = await bench.register(1, { ha: false });
    bench.hypervisor.startMs = 500;
    await bench.start({ orders: true });
    await bench.order(vm.uuid, "start");
    await bench.clock.advance(0);
    bench.kv.cut("refuse");
    await bench.clock.advance(1_500);
    expect(await bench.result(vm.uuid)).toBeUndefined();
    bench.kv.heal();
    await bench.clock.advance(1_000);
    expect(await bench.result(vm.uuid)).toMatchObject({ outcome: "done" });
    expect(await bench.orderKeys()).toEqual([]);
    await bench.stop();
  });
});

describe("restart in place", () => {
  test("a crashed HA VM of this host is started again here, with an event", async () => {
    const bench = new Bench();
    const vm = await bench.register(1, { ha: true });
    await bench.running(vm);
    await bench.start({ watch: true });
    bench.hypervisor.crash(vm.uuid);
    await bench.rounds(2);
    expect(await bench.state(vm.uuid)).toBe("running");
    expect(bench.leases.holderOf(vm.slot!)).toBe(host);
    const events = await bench.events("vm-restarted");
    expect(events).toHaveLength(1);
    expect(events[0]).toContain("crashed");
    await bench.stop();
  });

  test("an HA VM shut off without a stop order from fitha is started again", async () => {
    const bench = new Bench();
    const vm = await bench.register(1, { ha: true });
    await bench.running(vm);
    await bench.start({ watch: true });
    await bench.hypervisor.destroy(vm.uuid);
    await bench.rounds(2);
    expect(await bench.state(vm.uuid)).toBe("running");
    expect(await bench.events("vm-restarted")).toHaveLength(1);
    await bench.stop();
  });

  test("an HA VM found down when the agent starts (it went down while no agent ran: watchdog, reboot) is started again", async () => {
    const bench = new Bench();
    const vm = await bench.register(1, { ha: true });
    await bench.running(vm);
    await bench.hypervisor.destroy(vm.uuid);
    await bench.leases.release(vm.uuid, vm.slot!);
    await bench.start({ watch: true });
    await bench.rounds(2);
    expect(await bench.state(vm.uuid)).toBe("running");
    expect(bench.leases.holderOf(vm.slot!)).toBe(host);
    await bench.stop();
  });

  test("a restart in place that fails is tried again after 10 s, then 20 s — not on every round", async () => {
    const bench = new Bench();
    const vm = await bench.register(1, { ha: true });
    await bench.running(vm);
    await bench.start({ watch: true });
    bench.leases.failNext(2);
    const acquires = () => bench.leases.calls.filter((c) => c.startsWith("acquire")).length;
    const before = acquires();
    bench.hypervisor.crash(vm.uuid);
    await bench.rounds(1);
    expect(acquires() - before).toBe(1);
    await bench.clock.advance(restartBackoffMs.first - vmPollIntervalMs);
    expect(acquires() - before).toBe(1);
    await bench.clock.advance(vmPollIntervalMs);
    expect(acquires() - before).toBe(2);
    expect(await bench.state(vm.uuid)).toBe("crashed");
    await bench.clock.advance(2 * restartBackoffMs.first - vmPollIntervalMs);
    expect(acquires() - before).toBe(2);
    await bench.clock.advance(vmPollIntervalMs);
    expect(acquires() - before).toBe(3);
    expect(await bench.state(vm.uuid)).toBe("running");
    expect([bench.metric("fitha_agent_vm_restarts_total", { result: "failed" }), bench.metric("fitha_agent_vm_restarts_total", { result: "started" })]).toEqual([2, 1]);
    await bench.stop();
  });

  test("left alone: a crashed non-HA VM, an HA VM placed on another host, an HA VM whose lease another host holds", async () => {
    const bench = new Bench();
    const plain = await bench.register(1, { ha: false });
    const elsewhere = await bench.register(2, { ha: true, host: "host-2" });
    const taken = await bench.register(3, { ha: true });
    for (const vm of [plain, elsewhere, taken]) await bench.running(vm);
    await bench.start({ watch: true });
    for (const vm of [plain, elsewhere, taken]) bench.hypervisor.crash(vm.uuid);
    // The lease lapsed with the crash and another host took it over: the VM runs there now.
    await bench.leases.release(taken.uuid, taken.slot!);
    bench.leases.holdElsewhere(taken.uuid, taken.slot!, "host-2", null);
    await bench.rounds(3);
    for (const vm of [plain, elsewhere, taken]) expect(await bench.state(vm.uuid)).toBe("crashed");
    expect(bench.hypervisor.starts).toBe(3);
    expect(await bench.events("vm-restarted")).toEqual([]);
    expect([bench.metric("fitha_agent_vm_restarts_total", { result: "lease-held" }), bench.metric("fitha_agent_vm_restarts_total", { result: "started" })]).toEqual([1, 0]);
    expect((await bench.reported(taken.uuid))?.state).toBe("crashed");
    await bench.stop();
  });
});

test("the Agent runs both with lease access: states reported, a start order carried out", async () => {
  const bench = new Bench();
  const vm = await bench.register(1, { ha: true });
  const kv = { management: bench.kv, storage: bench.kv, service: bench.kv };
  const agent = await bench.clock.run(Agent.start({ host, addresses: { management: "", storage: "", service: "" }, agentVersion: "test" }, { clock: bench.clock, now: bench.now, kv, keys, hypervisor: bench.hypervisor, leases: bench.leases }));
  await bench.order(vm.uuid, "start");
  await bench.clock.advance(vmPollIntervalMs);
  expect(await bench.result(vm.uuid)).toMatchObject({ outcome: "done" });
  expect((await bench.reported(vm.uuid))?.state).toBe("running");
  await bench.clock.run(agent.stop());
});

describe("self-fencing and the restart in place", () => {
  test("a self-fencing stop waits for a restart in place under way on the same VM: the VM never runs here without its lease", async () => {
    const bench = new Bench();
    const vm = await bench.register(1, { ha: true });
    await bench.running(vm);
    bench.hypervisor.crash(vm.uuid);
    bench.hypervisor.startMs = 2_000;
    // The restart in place is under way (its lease acquired, the guest booting) when the
    // controller's request for this host arrives and self-fencing stops and releases.
    const restart = bench.actions.exclusive(vm.uuid, () => bench.actions.start(vm, "in-place"));
    await bench.clock.advance(0);
    const request = { host, requestedAt: bench.now().toISOString(), reason: "test", planes: { management: "down", storage: "down", service: "down" }, cause: "planes" };
    await bench.admin.put(keys.recoveryRequest(host), JSON.stringify(request));
    const reachable = { reachable: true, sinceMs: 0 };
    const selfFence = new SelfFence({
      host,
      management: bench.kv,
      keys,
      clock: bench.clock,
      own: () => ({ management: reachable, storage: reachable, service: reachable }),
      lockd: { heldLeases: async () => (bench.leases.holderOf(vm.slot!) === host ? [{ vm: vm.uuid, slot: vm.slot! }] : []) },
      actions: bench.actions,
      onFenced: () => undefined,
    });
    for (let t = 0; t < 5_000; t += 100) {
      await bench.clock.advance(100);
      if ((await bench.state(vm.uuid)) === "running") expect(bench.leases.holderOf(vm.slot!)).toBe(host);
    }
    await bench.clock.run(restart);
    expect(await bench.state(vm.uuid)).toBe("shutoff");
    expect(bench.leases.holderOf(vm.slot!)).toBeUndefined();
    await bench.clock.run(selfFence.stop());
  });
});
