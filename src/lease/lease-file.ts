/** Formatting a lease file (or device) and reading all of it back for `fitha lease dump`. */
import { layout, slotOffset } from "./layout.ts";
import { parseDeltaArea, readLockspace } from "./lockspace.ts";
import { CorruptionError, decodeRecord, encodeRecord, randomId, type HeaderRecord, type HostState } from "./records.ts";
import type { SectorDevice, SectorSize } from "./sector-device.ts";

export interface FormatOptions {
  readonly sectorSize: SectorSize;
  readonly hosts: number;
  readonly slots: number;
  readonly name: string;
  readonly maxIoTimeoutMs: number;
  readonly killBudgetMs: number;
  /** Overwrite an existing lockspace (or any non-zero data at the start). */
  readonly force: boolean;
  /** Deadline of each format write. */
  readonly ioTimeoutMs: number;
}

export class LockspaceExistsError extends Error {
  constructor(deviceName: string, what: string) {
    super(`${deviceName} already holds ${what}; use --force to overwrite it (every host must have left it)`);
    this.name = "LockspaceExistsError";
  }
}

/** Zeroing is done in chunks of this size: big enough to be fast, small enough to meet a deadline. */
const zeroChunkBytes = 1024 * 1024;

export async function formatLockspace(device: SectorDevice, options: FormatOptions): Promise<HeaderRecord> {
  const l = layout(options);
  if (options.sectorSize < device.sectorSize) throw new RangeError(`${device.name} needs ${device.sectorSize}-byte sectors, not ${options.sectorSize}`);
  if (l.totalBytes > device.sizeBytes) throw new RangeError(`${device.name} has ${device.sizeBytes} bytes; ${options.hosts} hosts and ${options.slots} slots need ${l.totalBytes}`);
  if (!options.force) {
    const [start] = await device.io([{ kind: "read", offset: 0, length: Math.min(4096, device.sizeBytes) }], options.ioTimeoutMs);
    if (!start!.every((b) => b === 0)) {
      let what = "data that is not a lockspace";
      try {
        const existing = await readLockspace(device, options.ioTimeoutMs);
        what = `lockspace "${existing.header.name}" (${existing.header.lockspaceId})`;
      } catch {
        // Not a readable lockspace: still not ours to overwrite without --force.
      }
      throw new LockspaceExistsError(device.name, what);
    }
  }
  // Everything but the header is zeroed first: a format cut short leaves no header in front of
  // stale records.
  const header: HeaderRecord = {
    kind: "header",
    sectorSize: options.sectorSize,
    hosts: options.hosts,
    slots: options.slots,
    maxIoTimeoutMs: options.maxIoTimeoutMs,
    killBudgetMs: options.killBudgetMs,
    lockspaceId: randomId(),
    name: options.name,
  };
  const encodedHeader = encodeRecord(header, options.sectorSize);
  await device.io([{ kind: "write", offset: 0, data: new Uint8Array(options.sectorSize) }], options.ioTimeoutMs);
  const zeros = new Uint8Array(zeroChunkBytes);
  for (let offset = options.sectorSize; offset < l.totalBytes; offset += zeroChunkBytes) {
    const length = Math.min(zeroChunkBytes, l.totalBytes - offset);
    await device.io([{ kind: "write", offset, data: zeros.subarray(0, length) }], options.ioTimeoutMs);
  }
  await device.io([{ kind: "write", offset: 0, data: encodedHeader }], options.ioTimeoutMs);
  return header;
}

/**
 * JSON shape of `fitha lease dump --json` (stable; keys always present):
 * { "path", "lockspace": { "name", "id", "sector_size", "hosts", "slots", "max_io_timeout_ms", "kill_budget_ms" },
 *   "hosts": [ { "host_id", "host_name", "state", "generation", "timestamp_ms", "io_timeout_ms", "install_id" } ],
 *   "leases": [ { "slot", "resource", "state", "owner_host_id", "owner_generation", "lver" } ],
 *   "corrupt": [ "<where>: corrupt lease record: <reason>" ] }
 * Only written records are listed (hosts that joined at least once, slots used at least once).
 */
export interface Dump {
  path: string;
  lockspace: { name: string; id: string; sector_size: SectorSize; hosts: number; slots: number; max_io_timeout_ms: number; kill_budget_ms: number };
  hosts: Array<{ host_id: number; host_name: string; state: HostState; generation: number; timestamp_ms: number; io_timeout_ms: number; install_id: string }>;
  leases: Array<{ slot: number; resource: string; state: HostState; owner_host_id: number; owner_generation: number; lver: number }>;
  corrupt: string[];
}

/** Leader sectors read per batch: bounded so that one batch meets its deadline. */
const leadersPerBatch = 256;

export async function dumpLockspace(device: SectorDevice, ioTimeoutMs: number): Promise<Dump> {
  const ls = await readLockspace(device, ioTimeoutMs);
  const { header, layout: l } = ls;
  const [area] = await device.io([{ kind: "read", offset: l.deltaAreaOffset, length: l.deltaAreaBytes }], ioTimeoutMs);
  const dump: Dump = {
    path: device.name,
    lockspace: { name: header.name, id: header.lockspaceId, sector_size: header.sectorSize, hosts: header.hosts, slots: header.slots, max_io_timeout_ms: header.maxIoTimeoutMs, kill_budget_ms: header.killBudgetMs },
    hosts: [],
    leases: [],
    corrupt: [],
  };
  for (const slot of parseDeltaArea(ls, area!)) {
    if (slot === "empty") continue;
    if ("corrupt" in slot) dump.corrupt.push(slot.corrupt);
    else dump.hosts.push({ host_id: slot.hostId, host_name: slot.hostName, state: slot.state, generation: slot.generation, timestamp_ms: slot.timestampMs, io_timeout_ms: slot.ioTimeoutMs, install_id: slot.installId });
  }
  for (let first = 0; first < l.slots; first += leadersPerBatch) {
    const slots = Array.from({ length: Math.min(leadersPerBatch, l.slots - first) }, (_, i) => first + i);
    const sectors = await device.io(slots.map((slot) => ({ kind: "read" as const, offset: slotOffset(l, slot), length: l.sectorSize })), ioTimeoutMs);
    slots.forEach((slot, i) => {
      try {
        const leader = decodeRecord(sectors[i]!, "leader", `${device.name} lease slot ${slot} leader`);
        if (leader === "empty") return;
        dump.leases.push({ slot, resource: leader.resource, state: leader.state, owner_host_id: leader.ownerHostId, owner_generation: leader.ownerGeneration, lver: leader.lver });
      } catch (error) {
        if (!(error instanceof CorruptionError)) throw error;
        dump.corrupt.push(error.message);
      }
    });
  }
  return dump;
}
