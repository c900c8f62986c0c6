/**
 * The seed's four split-brain cases on real processes in network namespaces (scripts/harness):
 * an etcd cluster per plane, the built binary's controllers, agents, lockds and watchdogs, a
 * lease file on ext4 on a loop device. Where each VM runs is watched from the hypervisors (the
 * history); after every case no VM may have run on two hosts at once. Each case leaves the
 * cluster healed for the next. lockd's T is 1 s here (host-dead 8T + K = 10 s): answers to its
 * fencing questions get room on a loaded 2-core machine.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { HarnessCluster, type HarnessHost } from "../../scripts/harness/cluster.ts";
import { eventually } from "../helpers/eventually.ts";
import { healthy as healthyIn, placement as placementOf, recoveredElsewhere, reportTime, vmsOn } from "../helpers/harness.ts";

let cluster: HarnessCluster;
const caseTimeoutMs = 150_000;

beforeAll(async () => {
  cluster = await HarnessCluster.start({ label: "split-brain", hosts: 4 });
}, 180_000);

afterAll(async () => {
  await cluster?.stop();
}, 60_000);

const placement = (uuids: readonly string[]) => placementOf(cluster, uuids);
const healthy = (host: HarnessHost) => healthyIn(cluster, host);

describe("the seed's split-brain cases, real processes", () => {
  test("the history sees a VM started twice by hand (the check can fail)", async () => {
    const [a, b] = [cluster.host("host-3"), cluster.host("host-4")];
    const uuid = await cluster.runVm(a, "twice", { ha: false });
    // As an operator bypassing fitha would: define and start the same domain on another host.
    const xml = (await cluster.fithaJson<{ xml: string }>("vm", "show", uuid)).xml;
    await b.hypervisor!.define(xml);
    await b.hypervisor!.start(uuid);
    await eventually("the overlap seen", () => cluster.history.overlaps().some((o) => o.vm === uuid), 5_000, 50);
    await b.hypervisor!.destroy(uuid);
    await b.hypervisor!.undefine(uuid);
    await a.hypervisor!.destroy(uuid);
    await cluster.fitha("vm", "remove", uuid);
    cluster.history.forget(uuid);
    expect(cluster.history.overlaps()).toEqual([]);
  }, caseTimeoutMs);

  test("case 1: a running HA VM's lease is in the lockspace: another host's lockd refuses it, naming the holder", async () => {
    const host = cluster.host("host-1");
    const { ha } = await vmsOn(cluster, host, "spawned");
    const slot = (await cluster.fithaJson<{ slot: number }>("vm", "show", ha[0]!)).slot;
    const other = cluster.host("host-3");
    const refused = await cluster.fithaOn(other, "lease", "acquire", ha[0]!, "--slot", String(slot), "--socket", other.socket);
    expect(refused.exitCode).toBe(3);
    expect(refused.stderr + refused.stdout).toContain("host-1");
    expect(placement(ha)).toEqual([["host-1"], ["host-1"]]);
    expect(cluster.history.overlaps()).toEqual([]);
  }, caseTimeoutMs);

  test("case 2, one host: its storage hangs; the controller answers fence; its VMs stop there and run on exactly one other host each", async () => {
    const host = cluster.host("host-2");
    const { ha, plain } = await vmsOn(cluster, host, "lun");
    const hungAtMs = performance.now();
    await cluster.storageHang([host]);
    reportTime("case 2 (one host's storage hung) → HA VMs run elsewhere after", await recoveredElsewhere(cluster, ha, host, hungAtMs));
    // lockd fences what runs under its leases: the plain VM has none and stays.
    expect(placement([plain])).toEqual([["host-2"]]);
    await cluster.storageHealthy([host]);
    await eventually("host-2's lockd back in the lockspace", async () => (await cluster.lockdPhase(host)) === "ok", 60_000, 500);
    expect(placement(ha).map((hosts) => hosts.length)).toEqual([1, 1]);
    expect(cluster.history.overlaps()).toEqual([]);
  }, caseTimeoutMs);
  test("case 2, every host: the storage hangs for all; the controller answers no-fence; every VM stays where it is", async () => {
    const host = cluster.host("host-3");
    const { ha, plain } = await vmsOn(cluster, host, "global");
    const before = placement([...ha, plain]);
    await cluster.storageHang(cluster.hosts);
    // Past the point where an unanswered lockd would have fenced (validUntil − T, ~9 s after the
    // last renewal) and past host-dead (10 s): no-fence keeps them in grace, and nobody can take
    // a lease while nobody reads the storage.
    await Bun.sleep(15_000);
    expect(await Promise.all(cluster.hosts.map((h) => cluster.lockdPhase(h)))).toEqual(cluster.hosts.map(() => "grace"));
    expect(placement([...ha, plain])).toEqual(before);
    await cluster.storageHealthy(cluster.hosts);
    await eventually("every lockd renews again", async () => (await Promise.all(cluster.hosts.map((h) => cluster.lockdPhase(h)))).every((phase) => phase === "ok"), 30_000, 500);
    expect(placement([...ha, plain])).toEqual(before);
    expect(cluster.history.overlaps()).toEqual([]);
  }, caseTimeoutMs);

  test("case 3: a host cut from the management plane still renews its lease: its VMs keep running there and start nowhere else", async () => {
    const host = cluster.host("host-4");
    const { ha, plain } = await vmsOn(cluster, host, "mgmt");
    await cluster.cut(host, ["management"]);
    // Heartbeat TTL 2 s + grace 2 s + lease expiry (10 s after a last renewal): long past all of them.
    await Bun.sleep(15_000);
    expect(await cluster.decision(host)).toBe("strategy");
    expect(placement([...ha, plain])).toEqual([[host.name], [host.name], [host.name]]);
    await cluster.heal(host, ["management"]);
    await eventually(`${host.name} healthy again`, () => healthy(host), 30_000, 200);
    expect(placement([...ha, plain])).toEqual([[host.name], [host.name], [host.name]]);
    expect(cluster.history.overlaps()).toEqual([]);
  }, caseTimeoutMs);

  test("case 4: a host isolated from every plane stops its HA VMs, which run on exactly one other host each; its plain VM stays", async () => {
    const host = cluster.host("host-1");
    const { ha, plain } = await vmsOn(cluster, host, "iso");
    const cutAtMs = performance.now();
    await cluster.cut(host);
    reportTime("case 4 (host isolated) → HA VMs run elsewhere after", await recoveredElsewhere(cluster, ha, host, cutAtMs));
    expect(placement([plain])).toEqual([[host.name]]);
    await cluster.heal(host);
    await eventually(`${host.name} healthy again`, () => healthy(host), 30_000, 200);
    await Bun.sleep(3_000);
    // Healing brings nothing back and starts nothing twice.
    expect(placement(ha).map((hosts) => hosts.length)).toEqual([1, 1]);
    expect(placement(ha).flat()).not.toContain(host.name);
    expect(cluster.history.overlaps()).toEqual([]);
  }, caseTimeoutMs);
});
