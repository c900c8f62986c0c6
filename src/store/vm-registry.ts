/**
 * The VM registry: P/vms/UUID holds one VmRecord per VM fitha knows (records.ts), HA or not. An
 * HA VM holds a VM lease slot (lease-slots.ts) that its stored domain XML names in fitha's lease
 * element (src/virt/domain-definition.ts), which the qemu hook acquires before the VM starts.
 *
 * - add: create-only, so a second add of one UUID never overwrites the first. Names are kept
 *   unique too (libvirt refuses two domains of one name on a host, and a VM moves between
 *   hosts), but checked before the create, not in it: two adds racing with one name and
 *   different UUIDs may both succeed, and a lookup by that name then says it is ambiguous.
 * - HA on/off: a compare-and-swap on the record, read again and re-applied when it loses.
 * - remove: deletes the record, never the slot claim (lease-slots.ts says why).
 */
import { ExitCode, FithaError } from "../errors.ts";
import { maxSlots as layoutMaxSlots } from "../lease/layout.ts";
import { setLeaseElement, type DomainDefinition } from "../virt/domain-definition.ts";
import { DecodeError, type Codec } from "./codec.ts";
import { vmUuidPattern, type Keys } from "./keys.ts";
import type { Kv } from "./kv.ts";
import { allocateLeaseSlot } from "./lease-slots.ts";
import { vmRecord, type VmRecord } from "./records.ts";
import { listRecords, readRecord, type Decoded } from "./typed.ts";

/**
 * A compare-and-swap that loses means another command wrote the record in between: read it
 * again and re-apply. More losses in a row than this is a fight, not a race: give up and say so.
 */
const maxWriteAttempts = 5;

export interface StoredVm {
  readonly record: VmRecord;
  readonly key: string;
  /** The record's last write, for a compare-and-swap. */
  readonly modRevision: bigint;
}

export interface RegistryOptions {
  /** The wall clock for the records' times. */
  readonly now?: () => Date;
  /** Lease slots 0..maxSlots-1 may be allocated (default: as many as a lockspace can have). */
  readonly maxSlots?: number;
}

export interface NewVm {
  /** From readDomainDefinition: checked, with its <uuid>. */
  readonly definition: DomainDefinition;
  readonly ha: boolean;
  readonly priority: number;
  readonly group: string;
  readonly host: string | null;
}

/** No VM under that UUID or name; exit 1, like other lookups of what is not there. */
export class UnknownVmError extends FithaError {
  constructor(message: string) {
    super(message);
    this.name = "UnknownVmError";
  }
}

/** "web-1 (6f1c8a3e-…)", for messages and events. */
export function describeVm(record: Pick<VmRecord, "name" | "uuid">): string {
  return `${record.name} (${record.uuid})`;
}

/**
 * Adds a VM: create-only, an HA one with its lease slot claimed first (so that its record never
 * names a slot it does not hold). A VM already there under its UUID or name is an error naming it;
 * nothing is overwritten.
 */
export async function addVm(kv: Kv, keys: Keys, vm: NewVm, options: RegistryOptions = {}): Promise<VmRecord> {
  const { now = () => new Date(), maxSlots = layoutMaxSlots } = options;
  const { uuid, name } = vm.definition;
  const key = keys.vm(uuid);
  const existing = await readVmEntry(kv, keys, uuid);
  if (existing !== undefined) throw alreadyThere(key, existing);
  const namesake = (await listVms(kv, keys)).vms.find((v) => v.record.name === name);
  if (namesake !== undefined) throw new FithaError(`a VM named ${JSON.stringify(name)} is already registered: ${describeVm(namesake.record)}; nothing changed`);
  // Tried before the slot is claimed, so that an XML the element cannot go into claims nothing
  // (a claim is for good, and the UUID of a file without one is new on every try).
  if (vm.ha) setLeaseElement(vm.definition.xml, { slot: 0, resource: uuid });
  const slot = vm.ha ? await allocateLeaseSlot(kv, keys, uuid, maxSlots, { now }) : null;
  const time = now().toISOString();
  const record: VmRecord = {
    uuid,
    name,
    xml: setLeaseElement(vm.definition.xml, slot === null ? null : { slot, resource: uuid }),
    ha: vm.ha,
    priority: vm.priority,
    group: vm.group,
    slot,
    host: vm.host,
    addedAt: time,
    updatedAt: time,
  };
  if (await kv.createIfAbsent(key, encodeVm(record))) return record;
  // Added by someone else since the check above (its slot, if any, is its own claim: the same).
  const winner = await readVmEntry(kv, keys, uuid);
  throw winner === undefined ? new FithaError(`VM ${uuid} was added and removed again by someone else meanwhile; nothing changed`) : alreadyThere(key, winner);
}

function alreadyThere(key: string, existing: Decoded<VmRecord>): FithaError {
  if ("bad" in existing) return new FithaError(`${key} already exists, with a bad value (${existing.bad.problems.join("; ")}); nothing changed`);
  return new FithaError(`VM ${describeVm(existing.record)} is already registered (added ${existing.record.addedAt}); nothing changed`);
}

/**
 * Switches a VM's HA on or off. On: the VM's lease slot (the one it was given before, else a new
 * one) goes into its record and its domain XML's lease element. Off: the element goes, the slot
 * stays the VM's. `changed` is false when HA already was as asked.
 */
export async function setVmHa(kv: Kv, keys: Keys, ref: string, on: boolean, options: RegistryOptions = {}): Promise<{ readonly record: VmRecord; readonly changed: boolean }> {
  const { now = () => new Date(), maxSlots = layoutMaxSlots } = options;
  let current = await findVm(kv, keys, ref);
  for (let attempt = 1; ; attempt++) {
    const { record, key, modRevision } = current;
    if (record.ha === on) return { record, changed: false };
    const lease = on ? { slot: record.slot ?? (await allocateLeaseSlot(kv, keys, record.uuid, maxSlots, { now })), resource: record.uuid } : null;
    const xml = storedXml(key, () => setLeaseElement(record.xml, lease));
    const next: VmRecord = { ...record, ha: on, slot: lease?.slot ?? record.slot, xml, updatedAt: now().toISOString() };
    if (await kv.putIfModRevision(key, encodeVm(next), modRevision)) return { record: next, changed: true };
    if (attempt === maxWriteAttempts) throw new FithaError(`VM ${describeVm(record)}: ${key} changed under each of ${maxWriteAttempts} attempts to switch HA ${on ? "on" : "off"}; nothing changed, try again`);
    current = await readVm(kv, keys, record.uuid);
  }
}

/**
 * Removes a VM from the registry: one that is not HA, or any with `force`. Its lease slot stays
 * claimed (lease-slots.ts). The HA check and the delete are two requests (the Kv has no
 * conditional delete): HA switched on in between is removed with the VM.
 */
export async function removeVm(kv: Kv, keys: Keys, ref: string, force: boolean): Promise<VmRecord> {
  const { record, key } = await findVm(kv, keys, ref);
  if (record.ha && !force) throw new FithaError(`VM ${describeVm(record)} is HA: switch HA off first (fitha vm ha ${record.uuid} off) or remove it with --force`);
  await kv.delete(key);
  return record;
}

export interface VmList {
  /** In key (UUID) order. */
  readonly vms: readonly StoredVm[];
  /** Values under P/vms/ that are no VmRecord of their key: skipped; the caller reports them. */
  readonly bad: readonly DecodeError[];
}

export async function listVms(kv: Kv, keys: Keys): Promise<VmList> {
  const list = await listRecords(kv, keys.vmsPrefix, vmAt(keys));
  return { vms: list.records, bad: list.bad };
}

/** The VM under its UUID (any case), else the one of that name. */
export async function findVm(kv: Kv, keys: Keys, ref: string): Promise<StoredVm> {
  const uuid = ref.toLowerCase();
  if (vmUuidPattern.test(uuid)) {
    const entry = await readVmEntry(kv, keys, uuid);
    if (entry !== undefined) return stored(entry);
  }
  const { vms, bad } = await listVms(kv, keys);
  const named = vms.filter((v) => v.record.name === ref);
  const [only, ...more] = named;
  if (only === undefined) {
    const skipped = bad.length === 0 ? "" : `; ${bad.length} bad value${bad.length === 1 ? "" : "s"} under ${keys.vmsPrefix} skipped`;
    throw new UnknownVmError(`no VM ${JSON.stringify(ref)} is registered (no UUID or name under ${keys.vmsPrefix} matches${skipped})`);
  }
  if (more.length > 0) throw new FithaError(`${named.length} VMs are named ${JSON.stringify(ref)}: ${named.map((v) => v.record.uuid).join(", ")}; name one by its UUID`);
  return only;
}

async function readVm(kv: Kv, keys: Keys, uuid: string): Promise<StoredVm> {
  const entry = await readVmEntry(kv, keys, uuid);
  if (entry === undefined) throw new UnknownVmError(`VM ${uuid} is no longer registered (${keys.vm(uuid)} was deleted meanwhile)`);
  return stored(entry);
}

function readVmEntry(kv: Kv, keys: Keys, uuid: string): Promise<Decoded<VmRecord> | undefined> {
  return readRecord(kv, keys.vm(uuid), vmAt(keys));
}

function stored(entry: Decoded<VmRecord>): StoredVm {
  if ("bad" in entry) throw new FithaError(`${entry.bad.source} holds a bad value (${entry.bad.problems.join("; ")}): fix or delete it with etcdctl`);
  return entry;
}

/** vmRecord, and the record must be its key's: a value copied under another UUID is no VM there. */
function vmAt(keys: Keys): Codec<VmRecord> {
  return (raw, source) => {
    const record = vmRecord(raw, source);
    if (keys.vm(record.uuid) !== source) throw new DecodeError(source, [`uuid: ${record.uuid} is not the UUID of the key`]);
    return record;
  };
}

/** The record's JSON, checked against its codec first: a bad record is a bug here, not a surprise for readers. */
function encodeVm(record: VmRecord): string {
  const value = JSON.stringify(record);
  vmRecord(JSON.parse(value), "the VM record to write");
  return value;
}

/** A stored domain XML fitha cannot change is no bad input of this command: exit 1, naming the key. */
function storedXml(key: string, change: () => string): string {
  try {
    return change();
  } catch (error) {
    if (error instanceof FithaError && error.exitCode === ExitCode.usage) throw new FithaError(`${key}: the stored domain XML: ${error.message}`);
    throw error;
  }
}
