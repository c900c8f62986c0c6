/**
 * The lease file as lockd would use it, for `fitha lease check` (which `fitha doctor` runs in a
 * process of its own, facts.ts). Apart from facts.ts so that the lease commands load no etcd
 * client.
 */
import { withDeadline } from "../deadline.ts";
import { FithaError } from "../errors.ts";
import { DirectDevice } from "../lease/direct-device.ts";
import { dumpLockspace } from "../lease/lease-file.ts";
import { NotFormattedError, SectorSizeMismatchError } from "../lease/lockspace.ts";
import { CorruptionError } from "../lease/records.ts";
import { IoError } from "../lease/sector-device.ts";
import type { LeaseFacts } from "./verdicts.ts";

/**
 * Deadline of each step of the lease check (open, first read, the lockspace): three in a row fit
 * in the time doctor waits for them (leaseCheckTimeoutMs).
 */
export const leaseStepTimeoutMs = 2_000;

/**
 * Opens the lease file as lockd does (O_DIRECT, in the I/O worker), reads its first sectors, then
 * the whole lockspace as `fitha lease dump` does. A device whose I/O failed is closed without
 * waiting: its worker may be stuck in a syscall for as long as the storage hangs.
 */
export async function inspectLease(path: string): Promise<LeaseFacts> {
  const openedAt = performance.now();
  let device: DirectDevice;
  try {
    device = await DirectDevice.open(path, { timeoutMs: leaseStepTimeoutMs });
  } catch (error) {
    if (!(error instanceof IoError)) throw error;
    return { state: "unopened", path, error: error.message, code: error.code };
  }
  const openMs = performance.now() - openedAt;
  const facts = { state: "opened" as const, path, openMs, device: { blockDevice: device.blockDevice, sectorSize: device.sectorSize, alignmentBytes: device.alignmentBytes, sizeBytes: device.sizeBytes } };
  let healthy = false;
  try {
    const bytes = Math.min(4096, device.sizeBytes);
    if (bytes === 0) {
      healthy = true;
      return { ...facts, firstRead: { ok: true, bytes, ms: 0 }, lockspace: { state: "not-formatted" } };
    }
    const readAt = performance.now();
    try {
      await device.io([{ kind: "read", offset: 0, length: bytes }], leaseStepTimeoutMs);
    } catch (error) {
      if (!(error instanceof IoError)) throw error;
      return { ...facts, firstRead: { ok: false, error: error.message }, lockspace: undefined };
    }
    const firstRead = { ok: true as const, bytes, ms: performance.now() - readAt };
    try {
      const dump = await withDeadline(dumpLockspace(device, leaseStepTimeoutMs), leaseStepTimeoutMs, `reading the lockspace on ${path}`);
      healthy = true;
      return { ...facts, firstRead, lockspace: { state: "read", dump } };
    } catch (error) {
      if (error instanceof NotFormattedError) {
        healthy = true;
        return { ...facts, firstRead, lockspace: { state: "not-formatted" } };
      }
      if (error instanceof SectorSizeMismatchError) {
        healthy = true;
        return { ...facts, firstRead, lockspace: { state: "sector-size", lockspaceSectorSize: error.lockspaceSectorSize, deviceSectorSize: error.deviceSectorSize } };
      }
      if (error instanceof CorruptionError || error instanceof RangeError) return { ...facts, firstRead, lockspace: { state: "corrupt", error: error.message } };
      if (error instanceof IoError || error instanceof FithaError) return { ...facts, firstRead, lockspace: { state: "unreadable", error: error.message } };
      throw error;
    }
  } finally {
    const closing = device.close();
    if (healthy) await closing;
  }
}
