/**
 * Recovery end to end with the real daemons (test/helpers/cluster.ts): one etcd, a controller,
 * and three compute hosts, each with its own libvirtd (test driver), lockd on one shared lease
 * file, and agent. host-1 runs three HA VMs and one plain VM; then host-1 dies (agent, lockd and
 * libvirtd killed). Its HA VMs must run again on the other hosts — none before host-1's leases
 * could expire — and the plain VM must not move.
 *
 * Timing: lockd T = 0.5 s and K = 2 s (host-dead 6 s after the last renewal), heartbeats every
 * 500 ms living 2 s, grace 2 s.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { taskRecord, vmRecord } from "../../src/store/records.ts";
import { readRecord } from "../../src/store/typed.ts";
import { startCluster, type Cluster, type ClusterHost } from "../helpers/cluster.ts";
import { eventually } from "../helpers/eventually.ts";
import { runFitha } from "../helpers/fitha.ts";

let cluster: Cluster;

beforeAll(async () => {
  cluster = await startCluster({ label: "recovery", hosts: 3 });
}, 120_000);

afterAll(async () => {
  await cluster?.stop();
}, 60_000);

describe("recovery end to end", () => {
  test("host-1 dies: its HA VMs run on the other hosts, not before its leases expired; its plain VM stays", async () => {
    const { admin, keys, runningOn } = cluster;
    const [host1, host2, host3] = cluster.hosts as [ClusterHost, ClusterHost, ClusterHost];
    const ha = [await cluster.runVm(host1, "web-1", { ha: true, priority: 5 }), await cluster.runVm(host1, "web-2", { ha: true, priority: 9 }), await cluster.runVm(host1, "db-1", { ha: true, priority: 1 })];
    const plain = await cluster.runVm(host1, "batch-1", { ha: false });
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
    // The controller applies the agents' results, and updates the registry, just after the VMs run.
    const settled = async (uuid: string) => {
      const [task, vm] = [await readRecord(admin, keys.task(uuid), taskRecord), await readRecord(admin, keys.vm(uuid), vmRecord)];
      return task !== undefined && "record" in task && task.record.state === "done" && vm !== undefined && "record" in vm && vm.record.host !== "host-1";
    };
    await eventually("tasks done and the registry updated", async () => (await Promise.all(ha.map(settled))).every(Boolean), 10_000, 100);
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
    const { runningOn } = cluster;
    const [, host2, host3] = cluster.hosts as [ClusterHost, ClusterHost, ClusterHost];
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
