/**
 * The VM registry and lease slot allocation on MemoryKv: records and their codecs, create-only
 * adds, HA on/off with its slot kept, lookups, removal, lost answers and lost compare-and-swaps.
 * Racing allocators and the CLI against a real etcd: test/integration/vm-command.test.ts.
 */
import { describe, expect, test } from "bun:test";
import { VirtualClock } from "../../src/core/clock.ts";
import { DecodeError } from "../../src/store/codec.ts";
import { keys } from "../../src/store/keys.ts";
import { KvError, type Kv } from "../../src/store/kv.ts";
import { allocateLeaseSlot } from "../../src/store/lease-slots.ts";
import { MemoryCluster } from "../../src/store/memory-kv.ts";
import { leaseSlotClaim, vmRecord, type VmRecord } from "../../src/store/records.ts";
import { listRecords } from "../../src/store/typed.ts";
import { addVm, findVm, listVms, removeVm, setVmHa, type NewVm } from "../../src/store/vm-registry.ts";
import { readDomainDefinition } from "../../src/virt/domain-definition.ts";
import { leaseMetadata } from "../../src/virt/lease-metadata.ts";

const k = keys("/fitha");
const time = "2026-01-31T12:00:00.000Z";
const now = () => new Date(time);
const uuids = ["11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222", "33333333-3333-4333-8333-333333333333"] as const;
const [a, b, c] = uuids;

function memoryKv() {
  return new MemoryCluster(new VirtualClock()).connect();
}

function newVm(name: string, uuid: string, more: Partial<Omit<NewVm, "definition">> = {}): NewVm {
  const definition = readDomainDefinition(`<domain type='kvm'>\n  <name>${name}</name>\n  <uuid>${uuid}</uuid>\n</domain>\n`);
  return { definition, ha: false, priority: 0, group: "", host: null, ...more };
}

/** `kv` with some calls replaced (the others called on `kv` itself, whose fields are private). */
function intercept(kv: Kv, overrides: Partial<Kv>): Kv {
  return new Proxy(kv, {
    get(target, property) {
      if (property in overrides) return overrides[property as keyof Kv];
      const value: unknown = Reflect.get(target, property);
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
}

function problems(work: () => unknown): readonly string[] {
  try {
    work();
  } catch (error) {
    expect(error).toBeInstanceOf(DecodeError);
    return (error as DecodeError).problems;
  }
  throw new Error("decoded");
}

describe("records", () => {
  const vm: VmRecord = { uuid: a, name: "web 1", xml: "<domain/>", ha: true, priority: 1000, group: "db", slot: 0, host: "compute-1", addedAt: time, updatedAt: time };

  test("a VM record and a slot claim round-trip", () => {
    expect(vmRecord(JSON.parse(JSON.stringify(vm)), "k")).toEqual(vm);
    const plain = { ...vm, ha: false, priority: 0, group: "", slot: null, host: null };
    expect(vmRecord(plain, "k")).toEqual(plain);
    expect(leaseSlotClaim({ vm: a, claimedAt: time }, "k")).toEqual({ vm: a, claimedAt: time });
  });

  test("every problem is named with its field", () => {
    const bad = { ...vm, uuid: "6F1C8A3E-2B7D-4C1E-9A55-0D3B2F4E8C71", name: "a/b", ha: true, slot: null, priority: 1001, group: "-x", host: "", extra: 1 };
    expect(problems(() => vmRecord(bad, "/fitha/vms/x"))).toEqual([
      "extra: unknown field",
      "slot: an HA VM needs a lease slot, got null",
      'uuid: expected a string of 1 to 1024 characters matching /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/, got "6F1C8A3E-2B7D-4C1E-9A55-0D3B2F4E8C71"',
      'name: expected a string of 1 to 1024 characters matching /^[^/\\p{Cc}]{1,255}$/u, got "a/b"',
      "priority: expected an integer from 0 to 1000, got 1001",
      'group: expected a string of 1 to 1024 characters matching /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/, got "-x"',
      'host: expected a string of 1 to 1024 characters matching /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/, got ""',
    ]);
    expect(problems(() => vmRecord({ ...vm, slot: 65_536 }, "k"))).toEqual(["slot: expected an integer from 0 to 65535, got 65536"]);
    expect(problems(() => leaseSlotClaim({ vm: "web-1", claimedAt: "yesterday" }, "k"))).toHaveLength(2);
  });
});

describe("allocateLeaseSlot", () => {
  test("the lowest free slot from 0, and the same slot again to the same VM", async () => {
    const kv = memoryKv();
    expect(await allocateLeaseSlot(kv, k, a, 16, { now })).toBe(0);
    expect(await allocateLeaseSlot(kv, k, b, 16, { now })).toBe(1);
    expect(await allocateLeaseSlot(kv, k, a, 16, { now })).toBe(0);
    expect((await kv.get(k.leaseSlot(1)))?.value).toBe(JSON.stringify({ vm: b, claimedAt: time }));
    expect(k.leaseSlot(1)).toBe("/fitha/lease-slots/00001");
  });

  test("a claim whose value is bad keeps its slot taken and is reported; all taken is a clear error", async () => {
    const kv = memoryKv();
    await kv.put(k.leaseSlot(0), "{not json");
    await kv.put(`${k.leaseSlotsPrefix}not-a-slot`, JSON.stringify({ vm: c, claimedAt: time }));
    const bad: DecodeError[] = [];
    expect(await allocateLeaseSlot(kv, k, a, 2, { now, onBadValue: (error) => bad.push(error) })).toBe(1);
    expect(bad.map((error) => error.source)).toEqual([k.leaseSlot(0)]);
    await expect(allocateLeaseSlot(kv, k, b, 2, { now })).rejects.toThrow(`no lease slot left for VM ${b}: all 2 are claimed under /fitha/lease-slots/`);
    await expect(allocateLeaseSlot(kv, k, a, 1, { now })).rejects.toThrow(`VM ${a} holds lease slot 1 (/fitha/lease-slots/00001), beyond lease slots 0..0`);
    await expect(allocateLeaseSlot(kv, k, "web-1", 2, { now })).rejects.toThrow(RangeError);
    await expect(allocateLeaseSlot(kv, k, a, 65_537, { now })).rejects.toThrow("max slots 65537: 1 to 65536");
  });

  test("a claim whose answer was lost is found and kept on the next try", async () => {
    const kv = memoryKv();
    const lossy = intercept(kv, {
      async createIfAbsent(key, value) {
        await kv.createIfAbsent(key, value);
        throw new KvError(kv.name, "create", key, "timeout", "injected: applied, answer lost");
      },
    });
    await expect(allocateLeaseSlot(lossy, k, a, 16, { now })).rejects.toThrow("answer lost");
    expect(await allocateLeaseSlot(kv, k, a, 16, { now })).toBe(0);
    expect(await allocateLeaseSlot(kv, k, b, 16, { now })).toBe(1);
  });

  test("racing allocators, each on its own client: one distinct slot per VM", async () => {
    const memory = new MemoryCluster(new VirtualClock());
    const vms = Array.from({ length: 20 }, (_, i) => `00000000-0000-4000-8000-${String(i).padStart(12, "0")}`);
    const slots = await Promise.all(vms.map((vm) => allocateLeaseSlot(memory.connect(), k, vm, 20, { now })));
    expect([...slots].sort((x, y) => x - y)).toEqual(vms.map((_, i) => i));
    const claims = await listRecords(memory.connect(), k.leaseSlotsPrefix, leaseSlotClaim);
    expect(new Map(claims.records.map((claim) => [claim.key, claim.record.vm]))).toEqual(new Map(slots.map((slot, i) => [k.leaseSlot(slot), vms[i]!])));
  });
});

describe("the VM registry", () => {
  test("add: an HA VM gets a slot named in its XML; a plain one none, even if its file had one", async () => {
    const kv = memoryKv();
    const ha = await addVm(kv, k, newVm("web-1", a, { ha: true, priority: 10, group: "web", host: "compute-1" }), { now });
    expect(ha).toMatchObject({ uuid: a, name: "web-1", ha: true, priority: 10, group: "web", slot: 0, host: "compute-1", addedAt: time, updatedAt: time });
    expect(leaseMetadata(ha.xml)).toEqual({ slot: 0, resource: a });
    const withForeignLease = readDomainDefinition(`<domain><name>db-1</name><uuid>${b}</uuid><metadata><fitha:lease xmlns:fitha="https://fitha.dev/xmlns/lease/1" slot="7"/></metadata></domain>`);
    const plain = await addVm(kv, k, { ...newVm("db-1", b), definition: withForeignLease }, { now });
    expect(plain).toMatchObject({ ha: false, slot: null });
    expect(leaseMetadata(plain.xml)).toBeUndefined();
    expect((await listVms(kv, k)).vms.map((v) => v.record)).toEqual([ha, plain]);
  });

  test("add again, under the same UUID or name: refused, naming the VM, nothing changed", async () => {
    const kv = memoryKv();
    const first = await addVm(kv, k, newVm("web-1", a), { now });
    const before = await kv.getPrefix("/fitha/");
    await expect(addVm(kv, k, newVm("web-2", a, { ha: true }), { now })).rejects.toThrow(`VM web-1 (${a}) is already registered (added ${time}); nothing changed`);
    await expect(addVm(kv, k, newVm("web-1", b, { ha: true }), { now })).rejects.toThrow(`a VM named "web-1" is already registered: web-1 (${a}); nothing changed`);
    expect(await kv.getPrefix("/fitha/")).toEqual(before);
    expect((await findVm(kv, k, "web-1")).record).toEqual(first);
  });

  test("add racing another add of the same UUID: the loser is told, the winner's record stays", async () => {
    const kv = memoryKv();
    const racing = intercept(kv, {
      async createIfAbsent(key, value) {
        if (key === k.vm(a)) await addVm(kv, k, newVm("web-1", a), { now });
        return kv.createIfAbsent(key, value);
      },
    });
    await expect(addVm(racing, k, newVm("web-1", a, { priority: 5 }), { now })).rejects.toThrow(`VM web-1 (${a}) is already registered`);
    expect((await findVm(kv, k, a)).record.priority).toBe(0);
  });

  test("HA on allocates a slot once; off removes the element and keeps the slot; on again reuses it", async () => {
    const kv = memoryKv();
    await addVm(kv, k, newVm("other", c, { ha: true }), { now });
    await addVm(kv, k, newVm("web-1", a), { now });
    const on = await setVmHa(kv, k, "web-1", true, { now });
    expect(on).toMatchObject({ changed: true, record: { ha: true, slot: 1 } });
    expect(leaseMetadata(on.record.xml)).toEqual({ slot: 1, resource: a });
    expect(await setVmHa(kv, k, a, true, { now })).toEqual({ changed: false, record: on.record });
    const off = await setVmHa(kv, k, a.toUpperCase(), false, { now });
    expect(off).toMatchObject({ changed: true, record: { ha: false, slot: 1 } });
    expect(leaseMetadata(off.record.xml)).toBeUndefined();
    // A new HA VM meanwhile gets a new slot, never the one kept for web-1.
    await addVm(kv, k, newVm("db-1", b, { ha: true }), { now });
    expect((await findVm(kv, k, b)).record.slot).toBe(2);
    expect((await setVmHa(kv, k, a, true, { now })).record).toMatchObject({ ha: true, slot: 1 });
    expect((await kv.getPrefix(k.leaseSlotsPrefix)).count).toBe(3);
  });

  test("HA switched while someone else writes the record: read again and re-applied, within bounds", async () => {
    const kv = memoryKv();
    await addVm(kv, k, newVm("web-1", a), { now });
    let interferences = 0;
    const contested = (times: number) =>
      intercept(kv, {
        async putIfModRevision(key, value, modRevision) {
          if (interferences++ < times) {
            const current = (await findVm(kv, k, a)).record;
            await kv.put(key, JSON.stringify({ ...current, priority: current.priority + 1 }));
          }
          return kv.putIfModRevision(key, value, modRevision);
        },
      });
    expect((await setVmHa(contested(1), k, a, true, { now })).record).toMatchObject({ ha: true, slot: 0, priority: 1 });
    interferences = 0;
    await expect(setVmHa(contested(5), k, a, false, { now })).rejects.toThrow(`VM web-1 (${a}): /fitha/vms/${a} changed under each of 5 attempts to switch HA off; nothing changed, try again`);
    expect((await findVm(kv, k, a)).record).toMatchObject({ ha: true, slot: 0, priority: 6 });
  });

  test("lookups: by UUID (any case) or name; unknown, ambiguous and bad values are named", async () => {
    const kv = memoryKv();
    await addVm(kv, k, newVm("web-1", a), { now });
    await expect(findVm(kv, k, "nope")).rejects.toThrow(`no VM "nope" is registered (no UUID or name under /fitha/vms/ matches)`);
    // A value copied under another UUID is no VM there; a second record of one name (a race of two adds).
    const copy = (await findVm(kv, k, a)).record;
    await kv.put(k.vm(b), JSON.stringify(copy));
    await kv.put(k.vm(c), JSON.stringify({ ...copy, uuid: c }));
    const { vms, bad } = await listVms(kv, k);
    expect(vms.map((v) => v.record.uuid)).toEqual([a, c]);
    expect(bad.map((error) => error.message)).toEqual([`/fitha/vms/${b}: uuid: ${a} is not the UUID of the key`]);
    await expect(findVm(kv, k, "web-1")).rejects.toThrow(`2 VMs are named "web-1": ${a}, ${c}; name one by its UUID`);
    await expect(findVm(kv, k, b)).rejects.toThrow(`/fitha/vms/${b} holds a bad value (uuid: ${a} is not the UUID of the key): fix or delete it with etcdctl`);
    await expect(findVm(kv, k, "db-1")).rejects.toThrow(`no VM "db-1" is registered (no UUID or name under /fitha/vms/ matches; 1 bad value under /fitha/vms/ skipped)`);
  });

  test("remove: a plain VM; an HA one only with force; the slot claim stays", async () => {
    const kv = memoryKv();
    await addVm(kv, k, newVm("web-1", a, { ha: true }), { now });
    await addVm(kv, k, newVm("db-1", b), { now });
    await expect(removeVm(kv, k, "web-1", false)).rejects.toThrow(`VM web-1 (${a}) is HA: switch HA off first (fitha vm ha ${a} off) or remove it with --force`);
    expect((await removeVm(kv, k, "db-1", false)).uuid).toBe(b);
    expect((await removeVm(kv, k, "web-1", true)).slot).toBe(0);
    expect((await listVms(kv, k)).vms).toEqual([]);
    expect((await kv.get(k.leaseSlot(0)))?.value).toContain(a);
    // Added again under its UUID, it gets its slot back; no other VM ever does.
    expect((await addVm(kv, k, newVm("db-2", c, { ha: true }), { now })).slot).toBe(1);
    expect((await addVm(kv, k, newVm("web-1", a, { ha: true }), { now })).slot).toBe(0);
  });
});
