/**
 * The split-brain cases against real QEMU processes (scripts/harness/qemu-host.ts): per host a
 * real libvirtd with the qemu driver and fitha's qemu hook installed by `fitha hook install`,
 * tiny guests (a halting multiboot kernel, 32 MiB) whose disks are on the shared storage. Where a
 * guest runs is checked twice: by the history (each host's libvirt) and by the QEMU processes on
 * this machine whose command line carries the VM's UUID — exactly one, always.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { HarnessCluster } from "../../scripts/harness/cluster.ts";
import { qemuProcessesOf } from "../../scripts/harness/qemu-host.ts";
import { eventually } from "../helpers/eventually.ts";
import { healthy, placement, recoveredElsewhere, reportTime } from "../helpers/harness.ts";

let cluster: HarnessCluster;
const scenarioTimeoutMs = 150_000;

beforeAll(async () => {
  cluster = await HarnessCluster.start({ label: "qemu", hosts: 3, qemuHosts: 3 });
}, 180_000);

afterAll(async () => {
  await cluster?.stop();
}, 60_000);

async function qemuVm(hostName: string, name: string): Promise<string> {
  const host = cluster.host(hostName);
  await eventually(`${host.name} healthy`, () => healthy(cluster, host), 30_000, 200);
  const uuid = await cluster.runVm(host, name, { ha: true });
  await eventually(`${name} seen on ${host.name}`, async () => placement(cluster, [uuid])[0]!.join() === host.name, 5_000, 50);
  return uuid;
}

describe("split brain against real QEMU", () => {
  test("case 1: a second start of a running HA VM on another host is refused by fitha's qemu hook; one QEMU process", async () => {
    const uuid = await qemuVm("host-1", "hooked");
    expect(await qemuProcessesOf(uuid)).toHaveLength(1);
    const xml = (await cluster.fithaJson<{ xml: string }>("vm", "show", uuid)).xml;
    const other = cluster.host("host-2");
    await other.hypervisor!.define(xml);
    // As `virsh start` on host-2 would: libvirt runs the hook, which asks host-2's lockd.
    const refused = await other.hypervisor!.start(uuid).then(
      () => "started",
      (error: unknown) => String(error),
    );
    expect(refused).toContain("Hook script execution failed");
    expect(refused).toContain("exit status 3");
    await other.hypervisor!.undefine(uuid);
    expect(await qemuProcessesOf(uuid)).toHaveLength(1);
    expect(placement(cluster, [uuid])).toEqual([["host-1"]]);
    expect(cluster.history.overlaps()).toEqual([]);
  }, scenarioTimeoutMs);

  test("case 4: a host isolated from every plane: its guest's QEMU stops there and runs on exactly one other host", async () => {
    const host = cluster.host("host-2");
    const uuid = await qemuVm(host.name, "isolated");
    const cutAtMs = performance.now();
    await cluster.cut(host);
    reportTime("QEMU, host isolated → the guest runs elsewhere after", await recoveredElsewhere(cluster, [uuid], host, cutAtMs));
    await eventually("one QEMU process", async () => (await qemuProcessesOf(uuid)).length === 1, 10_000, 100);
    await cluster.heal(host);
    await eventually(`${host.name} healthy again`, () => healthy(cluster, host), 30_000, 200);
    await Bun.sleep(2_000);
    expect(await qemuProcessesOf(uuid)).toHaveLength(1);
    expect(cluster.history.overlaps()).toEqual([]);
  }, scenarioTimeoutMs);

  test("a host loses power (QEMU processes killed with it): the guest runs on exactly one other host", async () => {
    const host = cluster.host("host-3");
    const uuid = await qemuVm(host.name, "powerloss");
    const offAtMs = performance.now();
    await cluster.powerOff(host);
    expect(await qemuProcessesOf(uuid)).toEqual([]);
    reportTime("QEMU, host powered off → the guest runs elsewhere after", await recoveredElsewhere(cluster, [uuid], host, offAtMs));
    expect(await qemuProcessesOf(uuid)).toHaveLength(1);
    await cluster.powerOn(host);
    await eventually(`${host.name} healthy again`, () => healthy(cluster, host), 60_000, 200);
    expect(await qemuProcessesOf(uuid)).toHaveLength(1);
    expect(cluster.history.overlaps()).toEqual([]);
  }, scenarioTimeoutMs);
});
