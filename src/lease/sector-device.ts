/**
 * The storage under the leases: a file or block device addressed in whole sectors.
 *
 * Two implementations stand behind this interface: `DirectDevice` (O_DIRECT I/O on a real file
 * or block device, performed in a worker thread so a hung storage never freezes the caller) and
 * `MemoryDevice` (in memory, with injected delays, errors, torn writes and hangs, for tests and
 * the simulator). The lease algorithms see only this interface.
 *
 * Contract, relied upon by the lease algorithms' safety arguments:
 * - Offsets and lengths are multiples of `sectorSize`; anything else is rejected before any I/O.
 * - A batch runs its operations in order, each after the previous one completed.
 * - A single-sector write is atomic: a reader sees the old or the new sector, never a mix.
 *   (Multi-sector writes may tear at sector boundaries; lease records are one sector each.)
 * - `io()` settles within `timeoutMs` (plus scheduling noise) whatever the storage does. A batch
 *   that misses its deadline rejects with `IoTimeoutError`; its operations may still complete
 *   later (a write may land after the caller was told it failed: the caller must treat such a
 *   write as "in doubt", neither done nor undone, until it re-reads).
 * - The returned buffers belong to the caller; the device never reuses them.
 */

export type SectorSize = 512 | 4096;

export type IoOp =
  | { readonly kind: "read"; readonly offset: number; readonly length: number }
  | { readonly kind: "write"; readonly offset: number; readonly data: Uint8Array };

export interface SectorDevice {
  /** Human name for messages: the path, or "memory:NAME". */
  readonly name: string;
  readonly sectorSize: SectorSize;
  /** Usable size in bytes (a multiple of sectorSize). */
  readonly sizeBytes: number;
  /**
   * Runs `ops` in order; resolves with the data of each read, in order. Rejects with an IoError
   * (IoTimeoutError after `timeoutMs`) if any operation fails: later operations are then not
   * started, but earlier writes of the batch may have landed.
   */
  io(ops: readonly IoOp[], timeoutMs: number): Promise<Uint8Array[]>;
  /** Waits for in-flight I/O (bounded by its deadline) and releases the device. Idempotent. */
  close(): Promise<void>;
}

/** An I/O that failed: the device reported an error, or the request was malformed. */
export class IoError extends Error {
  constructor(
    message: string,
    /** errno name when the kernel reported one ("EIO", "ENOSPC"), else undefined. */
    readonly code?: string,
  ) {
    super(message);
    this.name = "IoError";
  }
}

/** An I/O that did not complete within its deadline; it may still complete later. */
export class IoTimeoutError extends IoError {
  constructor(deviceName: string, timeoutMs: number) {
    super(`${deviceName}: I/O did not complete within ${timeoutMs} ms`, "ETIMEDOUT");
    this.name = "IoTimeoutError";
  }
}

/** Checks a batch against the device geometry; throws IoError naming the bad operation. */
export function checkBatch(device: Pick<SectorDevice, "name" | "sectorSize" | "sizeBytes">, ops: readonly IoOp[], timeoutMs: number): void {
  if (!(Number.isFinite(timeoutMs) && timeoutMs > 0)) throw new IoError(`${device.name}: I/O deadline ${timeoutMs} ms`);
  if (ops.length === 0) throw new IoError(`${device.name}: empty I/O batch`);
  for (const op of ops) {
    const length = op.kind === "read" ? op.length : op.data.byteLength;
    const aligned = op.offset % device.sectorSize === 0 && length % device.sectorSize === 0;
    if (!Number.isSafeInteger(op.offset) || op.offset < 0 || length <= 0 || !aligned || op.offset + length > device.sizeBytes) {
      throw new IoError(`${device.name}: ${op.kind} of ${length} bytes at offset ${op.offset} is outside the device or not aligned to ${device.sectorSize}-byte sectors`);
    }
  }
}
