/**
 * Where everything lives in a lease file (format version 1). See src/lease/README.md.
 *
 *   sector 0                 lockspace header
 *   sectors 1..H             delta lease of host id 1..H (one sector each)
 *   slot k (k = 0..N-1)      at slotsOffset + k × slotStride, 4 KiB aligned:
 *                              sector 0: leader record of the VM lease
 *                              sector h: ballot block of host id h (h = 1..H)
 *
 * One sector per record: a sector write is atomic, so no record can be torn, and hosts never
 * write the same sector (except a host id's delta sector, which only its holder writes).
 */
import type { SectorSize } from "./sector-device.ts";

/** Areas start on 4 KiB boundaries so that 512-byte-sector files also suit 4 KiB devices' caches. */
export const areaAlignmentBytes = 4096;
export const maxHosts = 2000;
export const maxSlots = 65_536;

export interface Geometry {
  readonly sectorSize: SectorSize;
  /** Host ids 1..hosts exist; every ballot phase reads all of them (DESIGN §4.1 rule 7). */
  readonly hosts: number;
  readonly slots: number;
}

export interface Layout extends Geometry {
  readonly deltaAreaOffset: number;
  readonly deltaAreaBytes: number;
  readonly slotsOffset: number;
  readonly slotStrideBytes: number;
  readonly totalBytes: number;
}

export function layout(geometry: Geometry): Layout {
  const { sectorSize, hosts, slots } = geometry;
  if (sectorSize !== 512 && sectorSize !== 4096) throw new RangeError(`sector size ${sectorSize}`);
  if (!(Number.isInteger(hosts) && hosts >= 1 && hosts <= maxHosts)) throw new RangeError(`hosts ${hosts} is outside 1..${maxHosts}`);
  if (!(Number.isInteger(slots) && slots >= 0 && slots <= maxSlots)) throw new RangeError(`slots ${slots} is outside 0..${maxSlots}`);
  const slotsOffset = alignUp((1 + hosts) * sectorSize, areaAlignmentBytes);
  const slotStrideBytes = alignUp((1 + hosts) * sectorSize, areaAlignmentBytes);
  return Object.freeze({
    sectorSize,
    hosts,
    slots,
    deltaAreaOffset: sectorSize,
    deltaAreaBytes: hosts * sectorSize,
    slotsOffset,
    slotStrideBytes,
    totalBytes: slotsOffset + slots * slotStrideBytes,
  });
}

export function deltaOffset(l: Layout, hostId: number): number {
  checkHostId(l, hostId);
  return hostId * l.sectorSize;
}

/** The leader sector of a slot; its ballot blocks follow contiguously, so one read gets all. */
export function slotOffset(l: Layout, slot: number): number {
  if (!(Number.isInteger(slot) && slot >= 0 && slot < l.slots)) throw new RangeError(`slot ${slot} is outside 0..${l.slots - 1}`);
  return l.slotsOffset + slot * l.slotStrideBytes;
}

export function ballotOffset(l: Layout, slot: number, hostId: number): number {
  checkHostId(l, hostId);
  return slotOffset(l, slot) + hostId * l.sectorSize;
}

export function checkHostId(l: Geometry, hostId: number): void {
  if (!(Number.isInteger(hostId) && hostId >= 1 && hostId <= l.hosts)) throw new RangeError(`host id ${hostId} is outside 1..${l.hosts}`);
}

function alignUp(bytes: number, alignment: number): number {
  return Math.ceil(bytes / alignment) * alignment;
}
