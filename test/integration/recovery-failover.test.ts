/**
 * The leading controller dies in the middle of a 100-VM recovery (real daemons, two controllers):
 * the standby takes over from the tasks in etcd, and every VM is started exactly once — none
 * twice (two leaders, or a resumed task run again), none forgotten.
 *
 * "Started" is counted from the agents' own logs: an order that really started a domain logs
 * "order done" with "… started under its lease"; a repeated order on the same host would log
 * "already running", and a start on a second host would need a lease that the first one holds.
 * Limits 2 cluster-wide and 1 per host keep the recovery going long enough to kill the leader
 * with most of it still to do.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { listEvents } from "../../src/store/events.ts";
import { taskRecord } from "../../src/store/records.ts";
import { startCluster, type Cluster, type ClusterHost } from "../helpers/cluster.ts";
import { eventually } from "../helpers/eventually.ts";

const vmCount = 100;
let cluster: Cluster;

beforeAll(async () => {
  cluster = await startCluster({ label: "recovery-failover", hosts: 3, controllers: 2, slots: 128, settings: { recovery_concurrency: 2, recovery_concurrency_per_host: 1 } });
}, 120_000);

afterAll(async () => {
  await cluster?.stop();
}, 60_000);

/** Per VM, how many times an agent's log says it started it. */
async function startsByVm(hosts: readonly ClusterHost[]): Promise<Map<string, number>> {
  const starts = new Map<string, number>();
  for (const host of hosts) {
    const text = await Bun.file(join(cluster.dir.path, host.name, "agent.log")).text();
    for (const line of text.split("\n")) {
      if (!line.startsWith("{")) continue;
      const entry = JSON.parse(line) as { msg?: string; vm?: string; action?: string; reason?: string };
      if (entry.msg === "order done" && entry.action === "start" && entry.reason?.includes(" started") === true) starts.set(entry.vm!, (starts.get(entry.vm!) ?? 0) + 1);
    }
  }
  return starts;
}

describe("controller failover during a recovery", () => {
  test(`the leader is killed with most of ${vmCount} VMs still to recover: the standby finishes, each VM started exactly once`, async () => {
    const { admin, keys, runningOn, controllers } = cluster;
    const [host1, host2, host3] = cluster.hosts as [ClusterHost, ClusterHost, ClusterHost];
    const vms: string[] = [];
    for (let i = 1; i <= vmCount; i++) vms.push(await cluster.runVm(host1, `vm-${i}`, { ha: true, priority: i % 10, memoryKiB: 16_384 }));
    await eventually("a leader", async () => (await cluster.leader()) !== undefined, 20_000, 100);
    const first = (await cluster.leader())!;

    host1.agent.kill("SIGKILL");
    host1.lockd.kill("SIGKILL");
    await host1.hypervisor.close();
    await host1.libvirtd.stop();

    const doneTasks = async () => (await admin.getPrefix(keys.tasksPrefix)).entries.map((e) => taskRecord(JSON.parse(e.value), e.key)).filter((t) => t.state === "done").length;
    await eventually("10 VMs recovered", async () => (await doneTasks()) >= 10, 60_000, 100);
    const doneAtKill = await doneTasks();
    controllers[Number(first.slice("ctl-".length)) - 1]!.kill("SIGKILL");
    expect(doneAtKill).toBeLessThan(vmCount / 2);

    let overlap = false;
    await eventually(
      `all ${vmCount} VMs running on host-2 or host-3`,
      async () => {
        const [on2, on3] = [await runningOn(host2, vms), await runningOn(host3, vms)];
        if (on2.some((vm) => on3.includes(vm))) overlap = true;
        return on2.length + on3.length === vmCount;
      },
      180_000,
      250,
    );
    expect(overlap).toBe(false);
    const leader = await cluster.leader();
    expect(leader).toBeDefined();
    expect(leader).not.toBe(first);

    // Exactly once: one start per VM in the agents' logs, one vm-recovered event, every task done at its first attempt.
    const starts = await startsByVm([host2, host3]);
    expect([...starts.keys()].sort()).toEqual([...vms].sort());
    expect([...starts.values()].every((n) => n === 1)).toBe(true);
    // The controller applies the last results (and writes their events) just after the VMs run.
    const recoveredEvents = async () => (await listEvents(admin, keys, { limit: 10_000 })).events.filter((e) => e.record.kind === "vm-recovered");
    await eventually(`${vmCount} vm-recovered events`, async () => (await recoveredEvents()).length >= vmCount, 10_000, 100);
    const recovered = await recoveredEvents();
    expect(recovered).toHaveLength(vmCount);
    const byWhom = new Set(recovered.map((e) => e.record.by));
    expect(byWhom).toEqual(new Set([`controller@${first}`, `controller@${leader}`]));
    const tasks = (await admin.getPrefix(keys.tasksPrefix)).entries.map((e) => taskRecord(JSON.parse(e.value), e.key));
    expect(tasks.map((t) => [t.state, t.attempts])).toEqual(vms.map(() => ["done", 0]));
  }, 300_000);
});
