/**
 * Lost storage end to end with the real daemons (test/helpers/cluster.ts), the lockspace on a
 * loop device, and real storage hangs: each host's lockd in a blkio cgroup of its own whose
 * throttle makes every I/O of it to the device hang (TESTING-NOTES: the fault that works here).
 *
 * - Every host's storage hangs at once (a global storage fault): each lockd asks at renewal-warn,
 *   each agent raises a fencing event on every plane, the controller sees every host blind and
 *   answers no-fence; lockd keeps its VMs in grace. When the storage returns: same VMs, same
 *   hosts, leases renewed, no recovery.
 * - One host's storage hangs: the controller answers fence; that host's lockd destroys its VMs;
 *   the controller recovers them on the other hosts (a request of cause "storage") once the
 *   leases are free, and no VM runs on two hosts at any time.
 *
 * Timing: lockd T = 1 s (question at 4T after the last renewal, fence at validUntil − T without
 * an answer, host-dead 8T + K = 10 s), so an answer has ~3 s to travel agent → etcd →
 * controller → etcd → agent → lockd on a loaded machine.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { listEvents } from "../../src/store/events.ts";
import { taskRecord } from "../../src/store/records.ts";
import { attachLoop, createBlkioCgroup, removeLeftovers, type BlkioCgroup, type LoopDevice } from "../helpers/block-device.ts";
import { startCluster, type Cluster, type ClusterHost } from "../helpers/cluster.ts";
import { eventually } from "../helpers/eventually.ts";
import { runFitha } from "../helpers/fitha.ts";
import { tempDir, type TempDir } from "../helpers/tmp.ts";

let imageDir: TempDir;
let loop: LoopDevice;
let cluster: Cluster;
/** Per host, its lockd's cgroup. */
const cgroups = new Map<string, BlkioCgroup>();

beforeAll(async () => {
  imageDir = await tempDir("storage-loss");
  const image = join(imageDir.path, "lun.img");
  await writeFile(image, new Uint8Array(2 * 1024 * 1024));
  loop = await attachLoop(image);
  cluster = await startCluster({ label: "storage-loss", hosts: 3, leasePath: loop.path, ioTimeoutS: 1 });
  for (const host of cluster.hosts) {
    const cgroup = await createBlkioCgroup(`storage-loss-${host.name}`);
    await cgroup.addProcess(host.lockd.pid);
    cgroups.set(host.name, cgroup);
  }
}, 120_000);

afterAll(async () => {
  // The hangs end first (hung I/O completes), then the daemons go, then the cgroups and the device.
  for (const cgroup of cgroups.values()) await cgroup.release(loop.majorMinor).catch(() => undefined);
  await cluster?.stop();
  await removeLeftovers();
  await imageDir?.remove();
}, 60_000);

async function leaseStatus(host: ClusterHost): Promise<{ phase: string }> {
  const status = await runFitha(["lease", "status", "--socket", host.socket, "--json"]);
  return JSON.parse(status.stdout) as { phase: string };
}

/** Per host, the answers the controller gave (from its fencing-answered events: "question N: ANSWER: why"). */
async function fencingAnswers(): Promise<Map<string, Set<string>>> {
  const events = (await listEvents(cluster.admin, cluster.keys, { limit: 10_000 })).events;
  const answers = new Map<string, Set<string>>();
  for (const { record } of events.filter((e) => e.record.kind === "fencing-answered")) {
    const answer = record.reason.split(": ")[1]!;
    answers.set(record.host!, new Set([...(answers.get(record.host!) ?? []), answer]));
  }
  return answers;
}

describe("lost storage end to end", () => {
  test("every host's storage hangs: no-fence for all; every VM keeps running where it was; leases renewed once the storage is back", async () => {
    const hosts = cluster.hosts;
    const vms = new Map<ClusterHost, string>();
    for (const host of hosts) vms.set(host, await cluster.runVm(host, `steady-${host.name}`, { ha: true }));
    for (const host of hosts) await cgroups.get(host.name)!.hang(loop.majorMinor);
    const hungAtMs = Date.now();
    // Past the point where lockd, unanswered, would have fenced (validUntil − T ≈ 7 s after the last renewal).
    await eventually("every lockd in grace (answered no-fence)", async () => (await Promise.all(hosts.map(leaseStatus))).every((s) => s.phase === "grace"), 20_000, 200);
    while (Date.now() - hungAtMs < 9_000) {
      for (const [host, vm] of vms) expect(await cluster.runningOn(host, [vm])).toEqual([vm]);
      await Bun.sleep(250);
    }
    for (const host of hosts) await cgroups.get(host.name)!.release(loop.majorMinor);
    await eventually("every lockd renews again", async () => (await Promise.all(hosts.map(leaseStatus))).every((s) => s.phase === "ok"), 20_000, 200);
    for (const [host, vm] of vms) expect(await cluster.runningOn(host, [vm])).toEqual([vm]);
    const answers = await fencingAnswers();
    for (const host of hosts) expect(answers.get(host.name)).toEqual(new Set(["no-fence"]));
    expect((await cluster.admin.getPrefix(cluster.keys.tasksPrefix)).entries).toHaveLength(0);
    expect((await cluster.admin.getPrefix(cluster.keys.recoveryRequestsPrefix)).entries).toHaveLength(0);
  }, 120_000);

  test("one host's storage hangs: fence; its VMs are destroyed there and run on the others, never on two hosts", async () => {
    const [host1, host2, host3] = cluster.hosts as [ClusterHost, ClusterHost, ClusterHost];
    const ha = [await cluster.runVm(host1, "lost-1", { ha: true, priority: 3 }), await cluster.runVm(host1, "lost-2", { ha: true, priority: 7 })];
    await cgroups.get(host1.name)!.hang(loop.majorMinor);
    let overlap = false;
    await eventually(
      "host-1's HA VMs running on host-2 or host-3",
      async () => {
        const [on1, on2, on3] = [await cluster.runningOn(host1, ha), await cluster.runningOn(host2, ha), await cluster.runningOn(host3, ha)];
        if ([...on1, ...on2, ...on3].length !== new Set([...on1, ...on2, ...on3]).size) overlap = true;
        return on2.length + on3.length === ha.length;
      },
      60_000,
      100,
    );
    expect(overlap).toBe(false);
    expect(await cluster.runningOn(host1, ha)).toEqual([]);
    expect((await fencingAnswers()).get("host-1")).toContain("fence");
    // The controller applies the agents' results just after the VMs run.
    const tasks = async () => (await cluster.admin.getPrefix(cluster.keys.tasksPrefix)).entries.map((e) => taskRecord(JSON.parse(e.value), e.key)).filter((t) => ha.includes(t.vm));
    await eventually("host-1's tasks done", async () => (await tasks()).every((t) => t.state === "done"), 10_000, 100);
    expect((await tasks()).map((t) => [t.source, t.state])).toEqual(ha.map(() => ["host-1", "done"]));
    // The storage returns: host-1's lockd finds its leases taken and holds nothing; the VMs stay where they were recovered.
    await cgroups.get(host1.name)!.release(loop.majorMinor);
    await Bun.sleep(3_000);
    expect(await cluster.runningOn(host1, ha)).toEqual([]);
    expect((await cluster.runningOn(host2, ha)).length + (await cluster.runningOn(host3, ha)).length).toBe(ha.length);
  }, 120_000);
});
