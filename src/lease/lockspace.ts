/**
 * Reading the parts of a lease file every lease operation needs: the header (geometry and
 * timing of the lockspace) and the delta area (one record per host id).
 */
import { layout, type Layout } from "./layout.ts";
import { CorruptionError, decodeRecord, type HeaderRecord } from "./records.ts";
import type { DeltaSlot } from "./host-view.ts";
import { IoError, type SectorDevice } from "./sector-device.ts";

export interface Lockspace {
  readonly device: SectorDevice;
  readonly header: HeaderRecord;
  readonly layout: Layout;
}

export class NotFormattedError extends Error {
  constructor(deviceName: string) {
    super(`${deviceName}: no lockspace here (run "fitha lease format" first)`);
    this.name = "NotFormattedError";
  }
}

/** The lockspace's sectors are smaller than the I/O the device needs: it cannot be used there. */
export class SectorSizeMismatchError extends IoError {
  constructor(
    deviceName: string,
    readonly lockspaceSectorSize: number,
    readonly deviceSectorSize: number,
  ) {
    super(`${deviceName}: lockspace uses ${lockspaceSectorSize}-byte sectors but the device needs ${deviceSectorSize}-byte I/O`);
    this.name = "SectorSizeMismatchError";
  }
}

/** Decodes and checks the header sector against the device it was read from. */
export function parseHeader(device: SectorDevice, sector: Uint8Array): Lockspace {
  const header = decodeRecord(sector, "header", `${device.name} header`);
  if (header === "empty") throw new NotFormattedError(device.name);
  const where = `${device.name} header`;
  let l: Layout;
  try {
    l = layout(header);
  } catch (error) {
    throw new CorruptionError(where, error instanceof Error ? error.message : String(error));
  }
  if (header.sectorSize < device.sectorSize) {
    throw new SectorSizeMismatchError(device.name, header.sectorSize, device.sectorSize);
  }
  if (l.totalBytes > device.sizeBytes) {
    throw new CorruptionError(where, `lockspace needs ${l.totalBytes} bytes, device has ${device.sizeBytes}`);
  }
  return { device, header, layout: l };
}

/** Reads and checks the header at the start of `device`. */
export async function readLockspace(device: SectorDevice, timeoutMs: number): Promise<Lockspace> {
  // The header says its own sector size; 4 KiB is a whole header in either format.
  const [first] = await device.io([{ kind: "read", offset: 0, length: Math.min(4096, device.sizeBytes) }], timeoutMs);
  const headerSize = new DataView(first!.buffer, first!.byteOffset).getUint32(8, true) === 4096 ? 4096 : 512;
  return parseHeader(device, first!.subarray(0, headerSize));
}

/** Decodes the delta area; a corrupt sector is reported in place, never thrown past its host id. */
export function parseDeltaArea(ls: Lockspace, area: Uint8Array): DeltaSlot[] {
  const { sectorSize, hosts } = ls.layout;
  return Array.from({ length: hosts }, (_, index) => {
    const hostId = index + 1;
    const where = `${ls.device.name} delta lease of host id ${hostId}`;
    try {
      const record = decodeRecord(area.subarray(index * sectorSize, (index + 1) * sectorSize), "delta", where);
      if (record !== "empty" && record.hostId !== hostId) throw new CorruptionError(where, `record names host id ${record.hostId}`);
      return record;
    } catch (error) {
      if (error instanceof CorruptionError) return { corrupt: error.message };
      throw error;
    }
  });
}
