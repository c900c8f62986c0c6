/**
 * Process, power and cluster failures on real processes in network namespaces (scripts/harness),
 * each checked against the history of where every VM ran: ask & wait without an answer, lockd
 * restarted while holding leases, maintenance during a power loss, self-defense when half the
 * hosts drop, the leading controller killed in the middle of a recovery, an etcd member killed.
 * Each scenario leaves the cluster whole for the next.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { HarnessCluster, type HarnessHost } from "../../scripts/harness/cluster.ts";
import { eventually } from "../helpers/eventually.ts";
import { failoverTimeoutMs, healthy, placement, recoveredElsewhere, reportTime, vmsOn } from "../helpers/harness.ts";

let cluster: HarnessCluster;
const scenarioTimeoutMs = 180_000;

beforeAll(async () => {
  cluster = await HarnessCluster.start({ label: "failures", hosts: 4 });
}, 180_000);

afterAll(async () => {
  await cluster?.stop();
}, 60_000);

async function mode(): Promise<string | undefined> {
  return (await cluster.status()).state?.mode?.mode;
}

async function settle(host: HarnessHost): Promise<void> {
  await eventually(`${host.name} healthy again`, () => healthy(cluster, host), 60_000, 200);
}

/** How many times the history saw `vm` start on a host other than `origin`. */
function startsElsewhere(vm: string, origin: string): number {
  return cluster.history.intervals().filter((i) => i.vm === vm && i.host !== origin).length;
}

describe("failures of processes, power and etcd, real processes", () => {
  test("ask & wait without an answer: the agent is dead when the storage hangs; lockd fences alone, and the VMs run elsewhere once", async () => {
    const host = cluster.host("host-2");
    const { ha, plain } = await vmsOn(cluster, host, "noanswer");
    await host.agent.kill();
    const hungAtMs = performance.now();
    await cluster.storageHang([host]);
    reportTime("no answer (agent dead, storage hung) → HA VMs run elsewhere after", await recoveredElsewhere(cluster, ha, host, hungAtMs));
    expect(placement(cluster, [plain])).toEqual([[host.name]]);
    await cluster.storageHealthy([host]);
    host.agent.start();
    await settle(host);
    expect(ha.map((vm) => startsElsewhere(vm, host.name))).toEqual([1, 1]);
    expect(cluster.history.overlaps()).toEqual([]);
  }, scenarioTimeoutMs);

  test("lockd killed (SIGKILL) and restarted while holding leases: it resumes them, every VM keeps running where it is", async () => {
    const host = cluster.host("host-3");
    const { ha, plain } = await vmsOn(cluster, host, "restart");
    await host.lockd.kill();
    await Bun.sleep(500);
    host.lockd.start();
    await eventually("lockd renewing again", async () => (await cluster.lockdPhase(host)) === "ok", 20_000, 200);
    // Past host-dead of the old incarnation (8T + K = 10 s): nobody took anything.
    await Bun.sleep(12_000);
    expect(placement(cluster, [...ha, plain])).toEqual([[host.name], [host.name], [host.name]]);
    const status = JSON.parse((await cluster.fithaOn(host, "lease", "status", "--socket", host.socket, "--json")).stdout) as { leases: Array<{ vm: string }> };
    expect(ha.filter((vm) => status.leases.some((l) => l.vm === vm))).toEqual(ha);
    expect(cluster.history.overlaps()).toEqual([]);
  }, scenarioTimeoutMs);

  test("maintenance on for the cluster when a host loses power: nothing is recovered while it is on; off → its HA VMs run elsewhere, once", async () => {
    const host = cluster.host("host-4");
    const { ha } = await vmsOn(cluster, host, "maint");
    expect((await cluster.fitha("maintenance", "on", "--reason", "harness")).exitCode).toBe(0);
    await cluster.powerOff(host);
    await Bun.sleep(12_000);
    expect(placement(cluster, ha)).toEqual([[], []]);
    const offAtMs = performance.now();
    expect((await cluster.fitha("maintenance", "off")).exitCode).toBe(0);
    reportTime("maintenance off → the powered-off host's HA VMs run elsewhere after", await recoveredElsewhere(cluster, ha, host, offAtMs));
    await cluster.powerOn(host);
    await settle(host);
    expect(ha.map((vm) => startsElsewhere(vm, host.name))).toEqual([1, 1]);
    expect(cluster.history.overlaps()).toEqual([]);
  }, scenarioTimeoutMs);

  test("self-defense: half the hosts drop at once, nothing is recovered; they come back, HA resumes and every HA VM runs once", async () => {
    expect((await cluster.fitha("config", "set", "self_defense_down_percent", "50")).exitCode).toBe(0);
    expect((await cluster.fitha("config", "set", "self_recovery_healthy_percent", "70")).exitCode).toBe(0);
    const dropped = [cluster.host("host-1"), cluster.host("host-2")];
    const vms = [...(await vmsOn(cluster, dropped[0]!, "defense-a")).ha, ...(await vmsOn(cluster, dropped[1]!, "defense-b")).ha];
    const before = cluster.history.intervals().length;
    await Promise.all(dropped.map((h) => cluster.cut(h)));
    await eventually("self-defense", async () => (await mode()) === "self-defense", 20_000, 200);
    await Bun.sleep(10_000);
    // Nothing started anywhere since the drop (the dropped hosts may stop theirs on their own view).
    expect(cluster.history.intervals().slice(before).filter((i) => vms.includes(i.vm) && !dropped.some((h) => h.name === i.host))).toEqual([]);
    await Promise.all(dropped.map((h) => cluster.heal(h)));
    await eventually("normal again", async () => (await mode()) === "normal", 60_000, 200);
    await eventually("every HA VM of the dropped hosts runs, once", async () => placement(cluster, vms).every((hosts) => hosts.length === 1), failoverTimeoutMs, 200);
    for (const h of dropped) await settle(h);
    expect(cluster.history.overlaps()).toEqual([]);
    expect((await cluster.fitha("config", "set", "self_defense_down_percent", "90")).exitCode).toBe(0);
    expect((await cluster.fitha("config", "set", "self_recovery_healthy_percent", "95")).exitCode).toBe(0);
  }, scenarioTimeoutMs);

  test("the leading controller is killed in the middle of a recovery: a standby finishes it, every VM started elsewhere exactly once", async () => {
    // One at a time (the per-host limit may not exceed the global one: it goes first).
    expect((await cluster.fitha("config", "set", "recovery_concurrency_per_host", "1")).exitCode).toBe(0);
    expect((await cluster.fitha("config", "set", "recovery_concurrency", "1")).exitCode).toBe(0);
    const host = cluster.host("host-3");
    await eventually(`${host.name} healthy`, () => healthy(cluster, host), 30_000, 200);
    const vms: string[] = [];
    for (let i = 1; i <= 6; i++) vms.push(await cluster.runVm(host, `failover-${i}`, { ha: true, priority: i }));
    const leaderName = await cluster.leader();
    const leader = cluster.controllers.find((c) => c.name === leaderName)!;
    expect(leader).toBeDefined();
    const offAtMs = performance.now();
    await cluster.powerOff(host);
    await eventually("the first VM recovered", async () => placement(cluster, vms).some((hosts) => hosts.length === 1), failoverTimeoutMs, 50);
    await leader.kill();
    reportTime("leader killed after the first of 6 VMs (limit 1) → all 6 run elsewhere after", await recoveredElsewhere(cluster, vms, host, offAtMs));
    expect(await cluster.leader()).not.toBe(leaderName);
    expect(vms.map((vm) => startsElsewhere(vm, host.name))).toEqual(vms.map(() => 1));
    leader.start();
    await cluster.powerOn(host);
    await settle(host);
    expect((await cluster.fitha("config", "set", "recovery_concurrency", "10")).exitCode).toBe(0);
    expect((await cluster.fitha("config", "set", "recovery_concurrency_per_host", "2")).exitCode).toBe(0);
    expect(cluster.history.overlaps()).toEqual([]);
  }, scenarioTimeoutMs);

  test("an etcd member of the management cluster is killed: the other two keep it going, and a host isolated then is recovered", async () => {
    const management = cluster.etcd.management!;
    await management.killMember(0);
    const host = cluster.host("host-1");
    const { ha } = await vmsOn(cluster, host, "member");
    const cutAtMs = performance.now();
    await cluster.cut(host);
    reportTime("one management member down, host isolated → HA VMs run elsewhere after", await recoveredElsewhere(cluster, ha, host, cutAtMs));
    await cluster.heal(host);
    await management.restartMember(0);
    await settle(host);
    expect(cluster.history.overlaps()).toEqual([]);
  }, scenarioTimeoutMs);
});
