/**
 * lockd's ask & wait and fencing on virtual time, in-memory storage and an in-memory hypervisor.
 * T = 1 s: question at 4 s after the last renewal start r, fencing at 7 s, renewal-fail at 8 s;
 * the lockspace's kill budget K = 6 s puts host-dead at 14 s. Every test checks what the
 * hypervisor shows running, not only what lockd says.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Writable } from "node:stream";
import { configureLogging } from "../../src/log.ts";
import { layout, slotOffset } from "../../src/lease/layout.ts";
import type { MemoryDevice } from "../../src/lease/memory-device.ts";
import { inquireLease } from "../../src/lease/paxos-lease.ts";
import { encodeRecord } from "../../src/lease/records.ts";
import { LockDaemon, type LockdEnvironment } from "../../src/lockd/lock-daemon.ts";
import { LockdMetrics } from "../../src/lockd/lockd-metrics.ts";
import { MetricsRegistry } from "../../src/metrics/registry.ts";
import type { LockdEvent } from "../../src/lockd/protocol.ts";
import type { LockdState } from "../../src/lockd/state-file.ts";
import { MemoryHypervisor } from "../../src/virt/memory-hypervisor.ts";
import type { KillOutcome, VmProcessKiller } from "../../src/virt/qemu-processes.ts";
import { MemoryLockspace } from "../helpers/memory-lockspace.ts";
import { parsePrometheusText, sampleOf } from "../helpers/prometheus-text.ts";

const T = 1_000;
const defaultVms = ["vm-a", "vm-b", "vm-c"];
const vms = defaultVms;

// lockd logs every failed renewal and the fencing; here that is expected, not news.
beforeAll(() => configureLogging({ level: "error", format: "json", stream: new Writable({ write: (_chunk, _encoding, done) => done() }) }));
afterAll(() => configureLogging({ level: "info", format: "human" }));

interface Host {
  space: MemoryLockspace;
  daemon: LockDaemon;
  devices: MemoryDevice[];
  hypervisor: MemoryHypervisor;
  events: LockdEvent[];
  persisted: LockdState[];
  running(): Promise<string[]>;
  hang(): void;
  heal(): void;
  advance(ms: number): Promise<void>;
}

/** A lockd as host 1 holding leases on `vms` (slots 0..), each VM running in the hypervisor, with a subscriber. */
async function host(options: { previous?: LockdState; space?: MemoryLockspace; hostId?: number; vms?: readonly string[]; killer?: VmProcessKiller; metrics?: LockdMetrics } = {}): Promise<Host> {
  const space = options.space ?? (await MemoryLockspace.create());
  const hostId = options.hostId ?? 1;
  const vms = options.vms ?? defaultVms;
  const devices: MemoryDevice[] = [];
  const hypervisor = new MemoryHypervisor();
  for (const vm of vms) {
    await hypervisor.define(`<domain type='test'><name>${vm}</name></domain>`);
    await hypervisor.start(vm);
  }
  const persisted: LockdState[] = [];
  const env: LockdEnvironment = {
    clock: space.clock,
    openDevice: async (path) => {
      const device = space.device(`${path}#${devices.length}`);
      devices.push(device);
      return device;
    },
    bootId: "boot-1",
    pid: 1234,
    lockdAlive: async () => false,
    installId: hostId.toString(16).padStart(32, "c"),
    store: { name: "memory", read: async () => options.previous, write: async (state) => void persisted.push(state) },
    hypervisor,
    ...(options.killer === undefined ? {} : { killer: options.killer }),
    ...(options.metrics === undefined ? {} : { metrics: options.metrics }),
  };
  const daemon = await space.clock.run(LockDaemon.start({ leaseFile: `leases-${hostId}`, hostId, hostName: `host-${hostId}`, ioTimeoutMs: T, idAllocation: "unique" }, env));
  for (const [slot, vm] of vms.entries()) {
    expect(await space.clock.run(daemon.handle({ id: slot, op: "acquire", vm, slot }))).toMatchObject({ ok: true });
  }
  const events: LockdEvent[] = [];
  expect(await daemon.handle({ id: 100, op: "subscribe" }, (event) => events.push(event))).toMatchObject({ ok: true });
  return {
    space,
    daemon,
    devices,
    hypervisor,
    events,
    persisted,
    running: async () => (await hypervisor.listDomains()).filter((d) => d.state === "running").map((d) => d.name),
    hang: () => devices.forEach((device) => device.setFault({ kind: "hang" })),
    heal: () => devices.forEach((device) => device.setFault(undefined)),
    advance: (ms) => space.clock.advance(ms),
  };
}

/** Storage hangs right after a renewal; returns its start r. */
async function hangAfterRenewal(h: Host): Promise<number> {
  await h.advance(3 * T);
  const r = h.daemon.lease.lastRenewalStartMs;
  await h.advance(r + 2 * T - h.space.clock.nowMs() - 1); // just before the next renewal is due
  h.hang();
  return r;
}

const questions = (h: Host) => h.events.filter((e): e is Extract<LockdEvent, { event: "question" }> => e.event === "question");
const sinceMs = (h: Host, r: number) => h.space.clock.nowMs() - r;

describe("lockd ask & wait", () => {
  test("no answer: asked at renewal-warn, VMs destroyed at renewal-fail minus T, leases dropped, then the lease is lost", async () => {
    const h = await host();
    const r = await hangAfterRenewal(h);
    await h.advance(r + 4 * T - h.space.clock.nowMs() - 1);
    expect(questions(h)).toEqual([]);
    await h.advance(1);
    expect(questions(h)).toEqual([expect.objectContaining({ question: 1, vms, answer_within_ms: 3 * T, grace_ms: 8 * T })]);
    expect(h.daemon.status()).toMatchObject({ phase: "warn", question: { id: 1, answer: null } });
    await h.advance(r + 7 * T - h.space.clock.nowMs() - 1);
    expect(await h.running()).toEqual(vms);
    await h.advance(1);
    expect(await h.running()).toEqual([]);
    expect(h.events.at(-1)).toMatchObject({ event: "fenced", vms, failed: [] });
    expect(h.daemon.status()).toMatchObject({ leases: [], fenced: { vms, failed: [] } });
    expect((h.daemon.status()["fenced"] as { reason: string }).reason).toContain("no answer to question 1");
    // What the watchdog reads: no leases left to kill for.
    expect(h.persisted.at(-1)!.leases).toEqual([]);
    await h.advance(2 * T);
    expect(h.daemon.status()).toMatchObject({ phase: "failed" });
    expect(await h.space.clock.run(h.daemon.handle({ id: 9, op: "acquire", vm: "vm-d", slot: 3 }))).toMatchObject({ ok: false, error: "not-owner" });
    h.heal();
    await h.space.clock.run(h.daemon.stop());
  });

  test("a lockd without VM leases asks too, and keeps asking on a no-fence grace: it tells the controller this host has storage trouble for as long as it lasts (found by the harness)", async () => {
    const h = await host({ vms: [] });
    const r = await hangAfterRenewal(h);
    await h.advance(r + 4 * T - h.space.clock.nowMs());
    expect(questions(h)).toEqual([expect.objectContaining({ question: 1, vms: [] })]);
    expect(await h.daemon.handle({ id: 1, op: "answer", question: 1, answer: "no-fence" })).toMatchObject({ ok: true });
    await h.advance(1);
    // Past renewal-fail (8 s): in its grace, asking again 4T after its question.
    await h.advance(r + 8 * T + 1 - h.space.clock.nowMs());
    expect(h.daemon.status()).toMatchObject({ phase: "grace" });
    expect(questions(h).map((q) => q.question)).toEqual([1, 2]);
    expect(await h.daemon.handle({ id: 2, op: "answer", question: 2, answer: "fence" })).toMatchObject({ ok: true });
    await h.advance(1);
    expect(h.events.filter((e) => e.event === "fenced")).toEqual([]);
    h.heal();
    await h.advance(2 * T);
    expect(h.daemon.status()).toMatchObject({ phase: "ok" });
    await h.space.clock.run(h.daemon.stop());
  });

  test("answer fence: the VMs are destroyed at once, long before renewal-fail", async () => {
    const h = await host();
    const r = await hangAfterRenewal(h);
    await h.advance(r + 4 * T - h.space.clock.nowMs());
    expect(await h.daemon.handle({ id: 1, op: "answer", question: 1, answer: "fence" })).toMatchObject({ ok: true, question: 1, answer: "fence" });
    await h.advance(1);
    expect(await h.running()).toEqual([]);
    expect(sinceMs(h, r)).toBeLessThan(5 * T);
    expect(h.daemon.status()).toMatchObject({ leases: [], fenced: { vms } });
    h.heal();
    await h.space.clock.run(h.daemon.stop());
  });

  test("metrics: renewals, the question, the answer and the fencing counted where they happen; phase, renewal age, validity and held leases read at each scrape", async () => {
    const registry = new MetricsRegistry();
    const h = await host({ metrics: new LockdMetrics(registry) });
    const value = (name: string, labels: Record<string, string> = {}) => sampleOf(parsePrometheusText(registry.render()), name, labels).value;
    expect([value("fitha_lockd_vm_leases_held"), value("fitha_lockd_subscribers"), value("fitha_lockd_host_lease_phase", { phase: "ok" })]).toEqual([3, 1, 1]);
    const r = await hangAfterRenewal(h);
    const renewed = value("fitha_lockd_renewals_total", { result: "ok" });
    expect(renewed).toBeGreaterThanOrEqual(1);
    expect(value("fitha_lockd_renewal_duration_seconds_count")).toBe(renewed);
    expect(value("fitha_lockd_fencing_questions_total")).toBe(0);
    await h.advance(r + 4 * T - h.space.clock.nowMs());
    expect(value("fitha_lockd_fencing_questions_total")).toBe(1);
    expect([value("fitha_lockd_host_lease_phase", { phase: "warn" }), value("fitha_lockd_host_lease_phase", { phase: "ok" })]).toEqual([1, 0]);
    expect(value("fitha_lockd_renewals_total", { result: "failed" })).toBeGreaterThanOrEqual(1);
    expect(value("fitha_lockd_renewals_total", { result: "ok" })).toBe(renewed);
    expect(value("fitha_lockd_last_renewal_age_seconds")).toBe(sinceMs(h, r) / 1000);
    expect(value("fitha_lockd_host_lease_valid_seconds")).toBe((r + 8 * T - h.space.clock.nowMs()) / 1000);
    expect(await h.daemon.handle({ id: 1, op: "answer", question: 1, answer: "fence" })).toMatchObject({ ok: true });
    // The same answer again (the agent retrying) is no second answer.
    expect(await h.daemon.handle({ id: 2, op: "answer", question: 1, answer: "fence" })).toMatchObject({ ok: true });
    await h.advance(1);
    expect(await h.running()).toEqual([]);
    expect([value("fitha_lockd_fencing_answers_total", { answer: "fence" }), value("fitha_lockd_fencing_answers_total", { answer: "no-fence" })]).toEqual([1, 0]);
    expect([value("fitha_lockd_fencings_total"), value("fitha_lockd_fencing_unstopped_vms_total"), value("fitha_lockd_vm_leases_held")]).toEqual([1, 0, 0]);
    h.heal();
    await h.space.clock.run(h.daemon.stop());
  });

  test("answer fence while storage hangs: the fenced leases are released only once storage is back and renewed, then taken anew (a release written during the outage could land late: found by the simulator)", async () => {
    const h = await host();
    const r = await hangAfterRenewal(h);
    await h.advance(r + 4 * T - h.space.clock.nowMs());
    expect(await h.daemon.handle({ id: 1, op: "answer", question: 1, answer: "fence" })).toMatchObject({ ok: true });
    await h.advance(1);
    expect(await h.running()).toEqual([]);
    // No release is written while the storage is in trouble: it could land late, over another
    // host's leader. The fenced leases stay ours on disk (they would free at host-dead)...
    const leaderOf = async (slot: number) => (await h.space.clock.run(inquireLease(h.daemon.lease, slot, { device: h.space.device("check") }))).leader;
    expect(await leaderOf(1)).toMatchObject({ state: "held", ownerHostId: 1, resource: "vm-b" });
    // ...until the storage is back and a renewal succeeds: then they are released (checked first).
    h.heal();
    await h.advance(3 * T);
    expect(await leaderOf(1)).toMatchObject({ state: "released", ownerHostId: 1, resource: "vm-b" });
    expect(await leaderOf(2)).toMatchObject({ state: "released", ownerHostId: 1, resource: "vm-c" });
    // The agent restarting vm-c in place takes its lease anew.
    expect(await h.space.clock.run(h.daemon.handle({ id: 2, op: "acquire", vm: "vm-c", slot: 2 }))).toMatchObject({ ok: true, already: false });
    expect(await leaderOf(2)).toMatchObject({ state: "held", ownerHostId: 1, resource: "vm-c" });
    await h.space.clock.run(h.daemon.stop());
  });

  test("an acquire whose last write times out but lands later is retracted: no lease stays ours on disk without a VM (found by the simulator)", async () => {
    const h = await host({ vms: ["vm-a"] });
    const slot = 3;
    const leaderOffset = slotOffset(layout({ sectorSize: 512, hosts: 8, slots: 4 }), slot);
    // The lease device (lockd's second): the write of the slot's leader record takes 1.5 T.
    h.devices[1]!.setFault({ kind: "delay", ms: 1.5 * T }, "write", leaderOffset);
    const reply = await h.space.clock.run(h.daemon.handle({ id: 7, op: "acquire", vm: "vm-d", slot }));
    expect(reply).toMatchObject({ ok: false });
    h.devices[1]!.setFault(undefined);
    await h.advance(3 * T);
    const leader = (await h.space.clock.run(inquireLease(h.daemon.lease, slot, { device: h.space.device("check") }))).leader;
    expect(leader).toMatchObject({ resource: "vm-d", ownerHostId: 1, state: "released" });
    expect(h.daemon.status()).toMatchObject({ leases: [{ slot: 0, vm: "vm-a" }] });
    await h.space.clock.run(h.daemon.stop());
  });

  test("answer no-fence: VMs kept past renewal-fail on a grace renewed by asking again; storage back → renewed, re-validated, all kept", async () => {
    const h = await host();
    const r = await hangAfterRenewal(h);
    await h.advance(r + 4 * T - h.space.clock.nowMs());
    const q1 = h.space.clock.nowMs();
    expect(await h.daemon.handle({ id: 1, op: "answer", question: 1, answer: "no-fence" })).toMatchObject({ ok: true });
    await h.advance(1);
    // The grace counts from the question: valid until q1 + 8T; the next question at q1 + 4T.
    expect(h.daemon.status()).toMatchObject({ valid_for_ms: q1 + 8 * T - h.space.clock.nowMs() });
    await h.advance(q1 + 4 * T - h.space.clock.nowMs());
    expect(questions(h).map((q) => q.question)).toEqual([1, 2]);
    await h.daemon.handle({ id: 2, op: "answer", question: 2, answer: "no-fence" });
    // Past the renewal-fail of the last renewal (r + 8T), and still running: grace.
    await h.advance(r + 10 * T - h.space.clock.nowMs());
    expect(h.daemon.status()).toMatchObject({ phase: "grace", leases: vms.map((vm) => ({ vm })) });
    expect(await h.running()).toEqual(vms);
    h.heal();
    await h.advance(3 * T);
    expect(h.daemon.status()).toMatchObject({ phase: "ok", fenced: null, question: null, grace_for_ms: null, leases: vms.map((vm) => ({ vm })) });
    expect(await h.running()).toEqual(vms);
    expect(h.events.filter((e) => e.event !== "question")).toEqual([]);
    await h.space.clock.run(h.daemon.stop());
  });

  test("a no-fence grace lapses without a fresh answer: fenced by the grace's end minus T, and the lease is lost after it", async () => {
    const h = await host();
    const r = await hangAfterRenewal(h);
    await h.advance(r + 4 * T - h.space.clock.nowMs());
    const q1 = h.space.clock.nowMs();
    await h.daemon.handle({ id: 1, op: "answer", question: 1, answer: "no-fence" });
    await h.advance(q1 + 7 * T - h.space.clock.nowMs() - 1);
    expect(await h.running()).toEqual(vms);
    await h.advance(1);
    expect(await h.running()).toEqual([]);
    expect(h.events.at(-1)).toMatchObject({ event: "fenced", vms });
    await h.advance(T);
    expect(h.daemon.status()).toMatchObject({ phase: "failed" });
    // Healing after the grace ended changes nothing: lost is lost.
    h.heal();
    await h.advance(4 * T);
    expect(h.daemon.status()).toMatchObject({ phase: "failed" });
    await h.space.clock.run(h.daemon.stop());
  });

  test("storage back after a no-fence: a lease another host took meanwhile has its VM destroyed at once, the others kept", async () => {
    const h = await host();
    const r = await hangAfterRenewal(h);
    await h.advance(r + 4 * T - h.space.clock.nowMs());
    await h.daemon.handle({ id: 1, op: "answer", question: 1, answer: "no-fence" });
    // Behind our back (through another path to the storage): host 2 now holds slot 1 (vm-b).
    const l = layout({ sectorSize: 512, hosts: 8, slots: 4 });
    const taker = h.space.device("host2");
    const leader = encodeRecord({ kind: "leader", slot: 1, lver: 7, ownerHostId: 2, ownerGeneration: 1, state: "held", resource: "vm-b" }, 512);
    await h.space.clock.run(taker.io([{ kind: "write", offset: slotOffset(l, 1), data: leader }], T));
    h.heal();
    await h.advance(3 * T);
    expect(await h.running()).toEqual(["vm-a", "vm-c"]);
    expect(h.daemon.status()).toMatchObject({ phase: "ok", leases: [{ vm: "vm-a" }, { vm: "vm-c" }] });
    expect(h.events.at(-1)).toEqual({ event: "leases-taken", vms: ["vm-b"], stopped: ["vm-b"], failed: [] });
    await h.space.clock.run(h.daemon.stop());
  });

  test("storage back before the fencing point without an answer: nothing stopped, the question is moot", async () => {
    const h = await host();
    const r = await hangAfterRenewal(h);
    await h.advance(r + 5 * T - h.space.clock.nowMs());
    expect(h.daemon.status()).toMatchObject({ phase: "warn", question: { id: 1 } });
    h.heal();
    await h.advance(3 * T);
    expect(h.daemon.status()).toMatchObject({ phase: "ok", question: null, fenced: null, leases: vms.map((vm) => ({ vm })) });
    expect(await h.running()).toEqual(vms);
    expect(await h.daemon.handle({ id: 1, op: "answer", question: 1, answer: "fence" })).toMatchObject({ ok: false, error: "bad-request", message: "question 1 is not open" });
    await h.space.clock.run(h.daemon.stop());
  });

  test("a VM that will not die stays leased and recorded for the watchdog (lockd keeps trying); the others are dropped", async () => {
    const h = await host();
    h.hypervisor.injectFailure("destroy", "vm-b", { times: 100, message: "qemu is stuck in D state" });
    const r = await hangAfterRenewal(h);
    await h.advance(r + 7 * T - h.space.clock.nowMs() + T);
    expect(await h.running()).toEqual(["vm-b"]);
    // The first fencing stopped vm-a and vm-c; the later ones (lockd keeps trying) only vm-b.
    expect(h.events.find((e) => e.event === "fenced")).toMatchObject({ vms, failed: ["vm-b"] });
    expect(h.daemon.status()).toMatchObject({ leases: [{ vm: "vm-b" }], fenced: { failed: ["vm-b"] } });
    expect(h.events.at(-1)).toMatchObject({ event: "fenced", failed: ["vm-b"] });
    expect(h.persisted.at(-1)!.leases.map((l) => l.resource)).toEqual(["vm-b"]);
    h.heal();
    await h.space.clock.run(h.daemon.stop());
  });

  test("a subscriber that connects while a question is open is told; a wrong or conflicting answer is refused", async () => {
    const h = await host();
    const r = await hangAfterRenewal(h);
    await h.advance(r + 4 * T - h.space.clock.nowMs() + 10);
    const late: LockdEvent[] = [];
    await h.daemon.handle({ id: 1, op: "subscribe" }, (event) => late.push(event));
    await h.advance(1);
    expect(late).toEqual([expect.objectContaining({ event: "question", question: 1, vms })]);
    expect(await h.daemon.handle({ id: 2, op: "answer", question: 5, answer: "fence" })).toMatchObject({ ok: false, error: "bad-request", message: "question 5 is not open (question 1 is)" });
    expect(await h.daemon.handle({ id: 3, op: "answer", question: 1, answer: "no-fence" })).toMatchObject({ ok: true });
    expect(await h.daemon.handle({ id: 4, op: "answer", question: 1, answer: "fence" })).toMatchObject({ ok: false, message: "question 1 was already answered no-fence" });
    expect(h.daemon.status()).toMatchObject({ subscribers: 2 });
    h.heal();
    await h.space.clock.run(h.daemon.stop());
  });

  test("invariant: after a no-fence that lapses, another host whose storage came back gets the lease only once the VM is dead", async () => {
    const space = await MemoryLockspace.create();
    const h1 = await host({ space });
    const h2 = await host({ space, hostId: 2, vms: [] });
    const r = await hangAfterRenewal(h1);
    h2.hang(); // a global storage fault
    await h1.advance(r + 4 * T - space.clock.nowMs());
    // Truthful: host 2 cannot read the lockspace now.
    await h1.daemon.handle({ id: 1, op: "answer", question: 1, answer: "no-fence" });
    await h1.advance(10);
    h2.heal(); // host 2's storage comes back first; host 1's never does
    let takenAtMs: number | undefined;
    for (let attempt = 0; attempt < 40 && takenAtMs === undefined; attempt++) {
      const reply = await space.clock.run(h2.daemon.handle({ id: 10 + attempt, op: "acquire", vm: "vm-a", slot: 0 }));
      if (reply.ok) {
        takenAtMs = space.clock.nowMs();
        expect(await h1.running()).not.toContain("vm-a");
      } else {
        // held by host 1, or host 2's own renewal still late from the outage
        expect(["held", "not-owner"]).toContain((reply as { error: string }).error);
        await h1.advance(T / 2);
      }
    }
    expect(takenAtMs).toBeDefined();
    // Not before host 1's grace end + K: its question's time + 8T + K (host 2 was blind until then).
    expect(takenAtMs! - (r + 4 * T)).toBeGreaterThanOrEqual(8 * T + 6_000);
    expect(h1.events.find((e) => e.event === "fenced")).toBeDefined();
    await space.clock.run(Promise.all([h1.daemon.stop(), h2.daemon.stop()]));
  });

  test("escalation: a VM the hypervisor cannot stop has its process killed; a hung hypervisor is not retried first", async () => {
    const kills: Array<{ vm: string; atMs: number }> = [];
    let h: Host | undefined;
    const killer: VmProcessKiller = {
      kill: async (vm): Promise<KillOutcome> => {
        kills.push({ vm, atMs: h!.space.clock.nowMs() });
        return { outcome: "killed", pid: 4242 };
      },
    };
    h = await host({ killer });
    h.hypervisor.injectFailure("destroy", "vm-a", { times: 3, message: "qemu ignores the monitor" });
    h.hypervisor.injectFailure("destroy", "vm-b", { times: 1, kind: "unanswered", message: "timed out after 1000 ms" });
    const r = await hangAfterRenewal(h);
    await h.advance(r + 7 * T - h.space.clock.nowMs());
    await h.advance(T / 2);
    // vm-a: three refused destroys T/4 apart, then the kill; vm-b: one unanswered destroy, then the kill.
    expect(kills.map((k) => k.vm)).toEqual(["vm-a", "vm-b"]);
    expect(kills[0]!.atMs).toBe(r + 7 * T + 2 * (T / 4));
    expect(kills[1]!.atMs).toBe(kills[0]!.atMs);
    expect(h.daemon.status()).toMatchObject({ leases: [], fenced: { vms, failed: [] } });
    h.heal();
    await h.space.clock.run(h.daemon.stop());
  });
});
