/** `fitha vm add | ha | list | show | remove` and lease slot allocation: the built binary and racing clients against a real etcd. */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { EtcdKv } from "../../src/store/etcd-kv.ts";
import { listEvents } from "../../src/store/events.ts";
import { keys } from "../../src/store/keys.ts";
import { allocateLeaseSlot } from "../../src/store/lease-slots.ts";
import { leaseSlotClaim } from "../../src/store/records.ts";
import { listRecords } from "../../src/store/typed.ts";
import { addVm, findVm, listVms } from "../../src/store/vm-registry.ts";
import { readDomainDefinition } from "../../src/virt/domain-definition.ts";
import { leaseMetadata } from "../../src/virt/lease-metadata.ts";
import { etcdSettings } from "../helpers/etcd-settings.ts";
import { commandTestTimeoutMs, hostRecord, startManagement, type ManagementFixture, type Scope } from "../helpers/management.ts";
import { tempDir, type TempDir } from "../helpers/tmp.ts";

let cluster: ManagementFixture;
let files: TempDir;

beforeAll(async () => {
  [cluster, files] = await Promise.all([startManagement("vm-cmd"), tempDir("vm-files")]);
}, commandTestTimeoutMs);

afterAll(async () => {
  await Promise.all([cluster?.stop(), files?.remove()]);
});

const web = "6f1c8a3e-2b7d-4c1e-9a55-0d3b2f4e8c71";
const db = "0a1b2c3d-4e5f-4a6b-8c7d-8e9fa0b1c2d3";
const isoTime = expect.stringMatching(/^\d{4}-\d\d-\d\dT[\d:.]+Z$/);
const cli = expect.stringMatching(/^cli@\S+@\S+$/);

/** A domain XML file named `file`, with `uuid` in upper case (libvirt takes either) unless undefined. */
async function domainFile(file: string, name: string, uuid: string | undefined): Promise<string> {
  const path = join(files.path, file);
  const id = uuid === undefined ? "" : `  <uuid>${uuid.toUpperCase()}</uuid>\n`;
  await Bun.write(path, `<domain type='kvm'>\n  <name>${name}</name>\n${id}  <memory unit='KiB'>1048576</memory>\n</domain>\n`);
  return path;
}

/** A VM added directly (as `vm add` would), for tests of the other commands. */
async function register(scope: Scope, name: string, uuid: string, ha: boolean): Promise<void> {
  const definition = readDomainDefinition(`<domain type='kvm'>\n  <name>${name}</name>\n  <uuid>${uuid}</uuid>\n</domain>\n`);
  await addVm(scope.kv, scope.keys, { definition, ha, priority: 0, group: "", host: null });
}

async function eventsOf(scope: Scope) {
  return (await listEvents(scope.kv, scope.keys, { limit: 50 })).events.map((e) => e.record);
}

describe("fitha vm", () => {
  test("add (plain and HA), show, list: records, XML with the lease element, JSON shapes, events", async () => {
    const scope = await cluster.scope("add");
    await scope.kv.put(scope.keys.host("compute-1"), JSON.stringify(hostRecord("compute-1", 1)));
    const [webXml, dbXml] = await Promise.all([domainFile("web.xml", "web-1", web), domainFile("db.xml", "db-1", undefined)]);

    const [added, db] = await Promise.all([scope.fitha("vm", "add", "--xml", webXml, "--priority", "10", "--group", "web", "--host", "compute-1"), scope.fitha("vm", "add", "--xml", dbXml, "--ha", "--json")]);
    expect(added).toEqual({ exitCode: 0, stdout: `VM web-1 (${web}) added: HA off\n`, stderr: "" });
    expect(db.exitCode).toBe(0);
    const dbJson = JSON.parse(db.stdout);
    expect(dbJson).toEqual({ uuid: expect.stringMatching(/^[0-9a-f-]{36}$/), name: "db-1", ha: true, priority: 0, group: "", slot: 0, host: null, added_at: isoTime, updated_at: isoTime, xml: expect.any(String) });
    // The generated <uuid> and the lease element, as the qemu hook reads them.
    expect(dbJson.xml).toContain(`<uuid>${dbJson.uuid}</uuid>`);
    expect(leaseMetadata(dbJson.xml)).toEqual({ slot: 0, resource: dbJson.uuid });

    const [list, show, showText, listText, onHost] = await Promise.all([
      scope.fitha("vm", "list", "--json"),
      scope.fitha("vm", "show", "web-1", "--json"),
      scope.fitha("vm", "show", dbJson.uuid.toUpperCase()),
      scope.fitha("vm", "list"),
      scope.fitha("vm", "list", "--host", "compute-1", "--json"),
    ]);
    const webJson = { uuid: web, name: "web-1", ha: false, priority: 10, group: "web", slot: null, host: "compute-1", added_at: isoTime, updated_at: isoTime };
    const { xml: _, ...dbListed } = dbJson;
    expect(JSON.parse(list.stdout)).toEqual({ vms: [dbListed, webJson], bad_values: [] });
    expect(JSON.parse(show.stdout)).toEqual({ ...webJson, xml: await Bun.file(webXml).text() });
    expect(showText.stdout).toStartWith(`VM db-1 (${dbJson.uuid}): HA on, lease slot 0\n  priority: 0\n  group:    none\n  host:     not known\n`);
    expect(showText.stdout).toEndWith(`  domain XML:\n${dbJson.xml}`);
    expect(listText.stdout.split("\n")).toEqual([
      expect.stringMatching(/^NAME +UUID +HA +SLOT +PRIORITY +GROUP +HOST$/),
      expect.stringMatching(new RegExp(`^db-1 +${dbJson.uuid} +on +0 +0 +- +-$`)),
      expect.stringMatching(new RegExp(`^web-1 +${web} +off +- +10 +web +compute-1$`)),
      "",
    ]);
    expect(JSON.parse(onHost.stdout).vms).toEqual([webJson]);

    // The two adds ran at once: their events in either order.
    expect((await eventsOf(scope)).sort((x, y) => (x.reason < y.reason ? -1 : 1))).toEqual([
      { time: isoTime, kind: "vm-added", host: null, reason: `VM db-1 (${dbJson.uuid}) added: HA on, lease slot 0, priority 0`, by: cli },
      { time: isoTime, kind: "vm-added", host: "compute-1", reason: `VM web-1 (${web}) added: HA off, priority 10, group web, host compute-1`, by: cli },
    ]);
  }, commandTestTimeoutMs);

  test("a second add of one UUID or name is refused, naming the VM; nothing is lost or changed", async () => {
    const scope = await cluster.scope("duplicate");
    const [first, sameUuid, sameName] = await Promise.all([domainFile("dup-1.xml", "web-1", web), domainFile("dup-2.xml", "web-2", web), domainFile("dup-3.xml", "web-1", undefined)]);
    expect((await scope.fitha("vm", "add", "--xml", first, "--priority", "5")).exitCode).toBe(0);
    const before = await scope.kv.getPrefix(`${scope.keys.prefix}/vms/`);
    const [again, byName] = await Promise.all([scope.fitha("vm", "add", "--xml", sameUuid, "--ha", "--priority", "9"), scope.fitha("vm", "add", "--xml", sameName, "--ha")]);
    expect(again).toEqual({ exitCode: 1, stdout: "", stderr: expect.stringMatching(new RegExp(`^fitha: VM web-1 \\(${web}\\) is already registered \\(added \\S+\\); nothing changed\\n$`)) });
    expect(byName).toEqual({ exitCode: 1, stdout: "", stderr: `fitha: a VM named "web-1" is already registered: web-1 (${web}); nothing changed\n` });
    expect(await scope.kv.getPrefix(`${scope.keys.prefix}/vms/`)).toMatchObject({ entries: before.entries });
    expect((await scope.kv.getPrefix(scope.keys.leaseSlotsPrefix)).count).toBe(0);
    expect((await eventsOf(scope)).map((e) => e.kind)).toEqual(["vm-added"]);
  }, commandTestTimeoutMs);

  test("ha on allocates a slot once and keeps it; off takes the element out; on again: the same slot", async () => {
    const scope = await cluster.scope("ha");
    await register(scope, "web-1", web, false);
    expect(await scope.fitha("vm", "ha", "web-1", "on")).toEqual({ exitCode: 0, stdout: `VM web-1 (${web}): HA on, lease slot 0\n`, stderr: "" });
    expect((await scope.fitha("vm", "ha", web, "on")).stdout).toBe(`VM web-1 (${web}): unchanged, HA on, lease slot 0\n`);
    // Another HA VM added meanwhile gets slot 1, never web-1's.
    const [off, other] = await Promise.all([scope.fitha("vm", "ha", web, "off"), scope.fitha("vm", "add", "--ha", "--xml", await domainFile("ha-2.xml", "db-1", undefined))]);
    expect(off.stdout).toBe(`VM web-1 (${web}): HA off (lease slot 0 stays its own)\n`);
    expect(other.stdout).toEndWith("HA on, lease slot 1\n");
    const offRecord = (await findVm(scope.kv, scope.keys, web)).record;
    expect(offRecord).toMatchObject({ ha: false, slot: 0 });
    expect(leaseMetadata(offRecord.xml)).toBeUndefined();
    expect((await scope.fitha("vm", "ha", "web-1", "on")).stdout).toBe(`VM web-1 (${web}): HA on, lease slot 0\n`);
    expect(leaseMetadata((await findVm(scope.kv, scope.keys, web)).record.xml)).toEqual({ slot: 0, resource: web });
    const claims = await listRecords(scope.kv, scope.keys.leaseSlotsPrefix, leaseSlotClaim);
    expect(claims.records.map((claim) => [claim.key, claim.record.vm === web])).toEqual([
      [scope.keys.leaseSlot(0), true],
      [scope.keys.leaseSlot(1), false],
    ]);
    expect((await eventsOf(scope)).filter((e) => e.kind === "vm-ha-changed").map((e) => e.reason)).toEqual([
      `VM web-1 (${web}): HA on, lease slot 0`,
      `VM web-1 (${web}): HA off (lease slot 0 stays its own)`,
      `VM web-1 (${web}): HA on, lease slot 0`,
    ]);
  }, commandTestTimeoutMs);

  test("remove: a plain VM; an HA one only with --force; its slot stays claimed", async () => {
    const scope = await cluster.scope("remove");
    await register(scope, "web-1", web, true);
    await register(scope, "db-1", db, false);
    const [refused, plain] = await Promise.all([scope.fitha("vm", "remove", "web-1"), scope.fitha("vm", "remove", "db-1")]);
    expect(refused).toEqual({ exitCode: 1, stdout: "", stderr: `fitha: VM web-1 (${web}) is HA: switch HA off first (fitha vm ha ${web} off) or remove it with --force\n` });
    expect(plain).toEqual({ exitCode: 0, stdout: `VM db-1 (${db}) removed\n`, stderr: "" });
    expect(await scope.fitha("vm", "remove", web, "--force")).toEqual({ exitCode: 0, stdout: `VM web-1 (${web}) removed; lease slot 0 stays claimed\n`, stderr: "" });
    expect(await listVms(scope.kv, scope.keys)).toEqual({ vms: [], bad: [] });
    expect((await scope.kv.get(scope.keys.leaseSlot(0)))?.value).toContain(web);
    expect((await eventsOf(scope)).filter((e) => e.kind === "vm-removed").map((e) => e.reason)).toEqual([
      `VM db-1 (${db}) removed (HA was off)`,
      `VM web-1 (${web}) removed (HA was on; lease slot 0 stays claimed)`,
    ]);
  }, commandTestTimeoutMs);

  test("bad XML, bad options and unknown VMs: one line naming the problem, exit 2 or 1, nothing written", async () => {
    const scope = await cluster.scope("errors");
    const network = join(files.path, "network.xml");
    const badUuid = join(files.path, "bad-uuid.xml");
    await Promise.all([Bun.write(network, "<network><name>default</name></network>\n"), Bun.write(badUuid, "<domain><name>x</name><uuid>1234</uuid></domain>\n")]);
    const good = await domainFile("good.xml", "web-1", web);
    const missing = join(files.path, "nope.xml");
    const results = await Promise.all([
      scope.fitha("vm", "add", "--xml", network),
      scope.fitha("vm", "add", "--xml", badUuid),
      scope.fitha("vm", "add", "--xml", missing),
      scope.fitha("vm", "add", "--xml", good, "--priority", "1001"),
      scope.fitha("vm", "add", "--xml", good, "--priority", "high"),
      scope.fitha("vm", "add", "--xml", good, "--group", "a b"),
      scope.fitha("vm", "add", "--xml", good, "--host", "ghost"),
      scope.fitha("vm", "show", "ghost"),
      scope.fitha("vm", "ha", "ghost", "on"),
      scope.fitha("vm", "ha", "ghost", "maybe"),
      scope.fitha("vm", "remove", web),
    ]);
    expect(results).toEqual([
      { exitCode: 2, stdout: "", stderr: `fitha: vm add: ${network}: the root element is not <domain> (expected libvirt's domain XML, as \`virsh dumpxml\` prints it)\n` },
      { exitCode: 2, stdout: "", stderr: `fitha: vm add: ${badUuid}: the domain's <uuid> "1234" is not a UUID (expected 8-4-4-4-12 hex digits, e.g. ${web})\n` },
      { exitCode: 2, stdout: "", stderr: `fitha: vm add: ${missing}: cannot read the file (no such file)\n` },
      { exitCode: 2, stdout: "", stderr: 'fitha: vm add: --priority must be a whole number from 0 to 1000, not "1001"\n' },
      { exitCode: 2, stdout: "", stderr: 'fitha: vm add: --priority must be a whole number from 0 to 1000, not "high"\n' },
      { exitCode: 2, stdout: "", stderr: 'fitha: vm add: --group "a b": 1 to 63 letters, digits, ".", "_" or "-", starting with a letter or digit\n' },
      { exitCode: 1, stdout: "", stderr: `fitha: vm add: no host "ghost" is registered (/errors/hosts/ghost does not exist)\n` },
      { exitCode: 1, stdout: "", stderr: 'fitha: no VM "ghost" is registered (no UUID or name under /errors/vms/ matches)\n' },
      { exitCode: 1, stdout: "", stderr: 'fitha: no VM "ghost" is registered (no UUID or name under /errors/vms/ matches)\n' },
      { exitCode: 2, stdout: "", stderr: 'fitha: vm ha: the state must be on or off, not "maybe"\n' },
      { exitCode: 1, stdout: "", stderr: `fitha: no VM "${web}" is registered (no UUID or name under /errors/vms/ matches)\n` },
    ]);
    expect((await scope.kv.getPrefix(`${scope.keys.prefix}/`)).count).toBe(0);
  }, commandTestTimeoutMs);
});

describe("lease slot allocation against a real etcd", () => {
  test("20 VMs allocating at once, two allocators each: 20 distinct slots, each claimed by its VM", async () => {
    const k = keys("/slot-race");
    const vms = Array.from({ length: 20 }, (_, i) => `00000000-0000-4000-8000-${String(i).padStart(12, "0")}`);
    // Each allocator with its own connection, as separate commands would have.
    const clients = [...vms, ...vms].map(() => EtcdKv.connect(etcdSettings({ endpoint: cluster.etcd.endpoint }), "management"));
    try {
      const slots = await Promise.all(clients.map((kv, i) => allocateLeaseSlot(kv, k, vms[i % vms.length]!, 64)));
      const claims = await listRecords(clients[0]!, k.leaseSlotsPrefix, leaseSlotClaim);
      expect(claims.bad).toEqual([]);
      const owner = new Map(claims.records.map((claim) => [claim.key, claim.record.vm]));
      // Every slot handed out is claimed in etcd by the very VM it was handed to.
      slots.forEach((slot, i) => expect({ slot, owner: owner.get(k.leaseSlot(slot)) }).toEqual({ slot, owner: vms[i % vms.length]! }));
      // From now on each VM gets one slot, distinct from every other VM's.
      const settled = await Promise.all(vms.map((vm, i) => allocateLeaseSlot(clients[i]!, k, vm, 64)));
      expect(new Set(settled).size).toBe(vms.length);
    } finally {
      for (const kv of clients) kv.close();
    }
  }, commandTestTimeoutMs);

  test("`vm add --ha` of 6 VMs at once: 6 distinct slots, each named in its VM's XML", async () => {
    const scope = await cluster.scope("parallel");
    const paths = await Promise.all(Array.from({ length: 6 }, (_, i) => domainFile(`par-${i}.xml`, `vm-${i}`, undefined)));
    const results = await Promise.all(paths.map((path) => scope.fitha("vm", "add", "--ha", "--xml", path, "--json")));
    expect(results.map((r) => [r.exitCode, r.stderr])).toEqual(paths.map(() => [0, ""]));
    const vms = results.map((r) => JSON.parse(r.stdout));
    expect(new Set(vms.map((vm) => vm.slot)).size).toBe(6);
    for (const vm of vms) expect(leaseMetadata(vm.xml)).toEqual({ slot: vm.slot, resource: vm.uuid });
    expect((await scope.kv.getPrefix(scope.keys.leaseSlotsPrefix)).count).toBe(6);
  }, commandTestTimeoutMs);
});
