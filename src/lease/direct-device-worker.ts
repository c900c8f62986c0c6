/**
 * The thread behind one DirectDevice (direct-device.ts): it owns the file descriptor and the
 * aligned buffer and makes every blocking syscall, so that storage that hangs blocks this thread
 * only, never the caller's event loop and its timers.
 *
 * Requests are handled one at a time, in the order they were posted: each handler runs its
 * syscalls synchronously and returns to the event loop only when they have all returned. So a
 * batch the caller gave up on (deadline passed) still owns the buffer until its syscall returns,
 * and the next batch cannot touch that memory while the kernel may still be writing into it.
 */
import * as libc from "../../ffi/libc.ts";
import type { IoOp, SectorSize } from "./sector-device.ts";

export type WorkerRequest =
  | { readonly type: "open"; readonly path: string; readonly sectorSize: SectorSize | undefined }
  | { readonly type: "io"; readonly id: number; readonly ops: readonly IoOp[] }
  | { readonly type: "close" };

export type WorkerReply =
  | { readonly type: "opened"; readonly sectorSize: SectorSize; readonly sizeBytes: number; readonly alignmentBytes: number; readonly blockDevice: boolean }
  | { readonly type: "open-failed"; readonly message: string; readonly code: string | undefined }
  | { readonly type: "done"; readonly id: number; readonly reads: ArrayBuffer[] }
  | { readonly type: "failed"; readonly id: number; readonly message: string; readonly code: string | undefined }
  | { readonly type: "closed" };

declare const self: Worker;

/** Page alignment: enough for either sector size and for any O_DIRECT memory alignment in practice. */
const bufferAlignmentBytes = 4096;
/** A signal can interrupt a syscall before it transfers anything; retrying is safe, but not forever. */
const maxEintrAttempts = 5;

/** An expected failure: its message goes to the caller as is, with an errno name when there is one. */
class DeviceError extends Error {
  constructor(
    message: string,
    readonly code: string | undefined,
  ) {
    super(message);
  }
}

let fd: number | undefined;
let buffer: libc.AlignedBuffer | undefined;

self.onmessage = (event: MessageEvent<WorkerRequest>) => {
  const request = event.data;
  switch (request.type) {
    case "open":
      reply(attempt(() => open(request.path, request.sectorSize), (error) => ({ type: "open-failed", ...error })));
      break;
    case "io":
      reply(attempt(() => ({ type: "done", id: request.id, reads: runBatch(request.ops) }), (error) => ({ type: "failed", id: request.id, ...error })));
      break;
    case "close":
      release();
      reply({ type: "closed" });
      break;
  }
};

function reply(message: WorkerReply): void {
  // Read data is moved, not copied: each ArrayBuffer was made for this reply and is the caller's now.
  postMessage(message, message.type === "done" ? message.reads : []);
}

function attempt(work: () => WorkerReply, onError: (error: { message: string; code: string | undefined }) => WorkerReply): WorkerReply {
  try {
    return work();
  } catch (error) {
    if (error instanceof DeviceError || error instanceof libc.ErrnoError) return onError({ message: error.message, code: error.code });
    // A bug here must not look like a storage failure the lease code would ride out.
    return onError({ message: `internal error in the I/O worker: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`, code: undefined });
  }
}

function open(path: string, requested: SectorSize | undefined): WorkerReply {
  const openFd = libc.open(path, libc.O_RDWR | libc.O_DIRECT | libc.O_DSYNC | libc.O_CLOEXEC);
  try {
    const geometry = measure(openFd, path, requested);
    fd = openFd;
    return { type: "opened", ...geometry };
  } catch (error) {
    libc.close(openFd);
    throw error;
  }
}

/** Sector size, usable size (whole sectors) and needed I/O alignment of the open file or block device. */
function measure(openFd: number, path: string, requested: SectorSize | undefined): { sectorSize: SectorSize; sizeBytes: number; alignmentBytes: number; blockDevice: boolean } {
  const status = libc.fstatx(openFd);
  const type = status.mode & libc.S_IFMT;
  let rawSizeBytes: number;
  let neededBytes: number;
  if (type === libc.S_IFBLK) {
    rawSizeBytes = libc.blockDeviceSizeBytes(openFd);
    neededBytes = libc.blockDeviceSectorBytes(openFd);
  } else if (type === libc.S_IFREG) {
    rawSizeBytes = status.sizeBytes;
    neededBytes = fileAlignmentBytes(path, status.directIoAlignBytes);
  } else {
    throw new DeviceError(`${path}: not a regular file or block device`, "EINVAL");
  }
  const sectorSize = chooseSectorSize(path, neededBytes, requested);
  return { sectorSize, sizeBytes: Math.floor(rawSizeBytes / sectorSize) * sectorSize, alignmentBytes: neededBytes, blockDevice: type === libc.S_IFBLK };
}

/**
 * The O_DIRECT alignment a regular file needs, as its file system reports it (statx
 * STATX_DIOALIGN: ext4 and other local file systems on Linux 6.1 and later, which Debian 12
 * runs). We ask rather than probe with a 512-byte read: a read that falls in a hole of a sparse
 * file (a new lease file is one) returns zeros without the alignment check, so a probe passes on
 * a 4096-byte-sector disk and the first write then fails (seen here on ext4 over a 4 KiB loop
 * device). A file system that does not report it (NFS, CephFS, FUSE, older kernels) is taken to
 * need 512: network file systems do not align O_DIRECT to sectors, and if one does, its I/O fails
 * with EINVAL (an IoError, never silent damage) and an explicit 4096-byte sector size fixes it.
 */
function fileAlignmentBytes(path: string, reportedBytes: number | undefined): number {
  if (reportedBytes === 0) throw new DeviceError(`${path}: the file system does not support O_DIRECT on this file`, "EINVAL");
  return reportedBytes ?? 512;
}

/** The requested sector size if the device can do it, else the smallest one it can. */
function chooseSectorSize(path: string, neededBytes: number, requested: SectorSize | undefined): SectorSize {
  if (neededBytes > 4096) throw new DeviceError(`${path} needs ${neededBytes}-byte aligned I/O; fitha supports 512 and 4096-byte sectors`, "EINVAL");
  if (requested !== undefined && requested < neededBytes) {
    throw new DeviceError(`${path} needs ${neededBytes}-byte aligned I/O; ${requested}-byte sectors cannot be used on it`, "EINVAL");
  }
  return requested ?? (neededBytes <= 512 ? 512 : 4096);
}

function runBatch(ops: readonly IoOp[]): ArrayBuffer[] {
  if (fd === undefined) throw new DeviceError("no device open", "EBADF");
  const span = bufferFor(Math.max(...ops.map((op) => (op.kind === "read" ? op.length : op.data.byteLength))));
  const reads: ArrayBuffer[] = [];
  for (const op of ops) {
    if (op.kind === "read") {
      transfer(fd, op.kind, span, op.length, op.offset);
      reads.push(span.bytes.slice(0, op.length).buffer);
    } else {
      span.bytes.set(op.data);
      transfer(fd, op.kind, span, op.data.byteLength, op.offset);
    }
  }
  return reads;
}

/** The buffer, grown (to a power of two) when this batch has a larger operation than any before. */
function bufferFor(lengthBytes: number): libc.AlignedBuffer {
  if (buffer === undefined || buffer.sizeBytes < lengthBytes) {
    const grown = libc.AlignedBuffer.allocate(Math.max(bufferAlignmentBytes, 2 ** Math.ceil(Math.log2(lengthBytes))), bufferAlignmentBytes);
    buffer?.free();
    buffer = grown;
  }
  return buffer;
}

/** One whole pread or pwrite; a partial one (end of file, a full file system) is an error: records are all or nothing. */
function transfer(openFd: number, kind: IoOp["kind"], span: libc.AlignedBuffer, lengthBytes: number, offset: number): void {
  const what = `${kind} of ${lengthBytes} bytes at offset ${offset}`;
  for (let tries = 1; ; tries++) {
    let doneBytes: number;
    try {
      doneBytes = kind === "read" ? libc.pread(openFd, span, lengthBytes, offset) : libc.pwrite(openFd, span, lengthBytes, offset);
    } catch (error) {
      if (error instanceof libc.ErrnoError) {
        if (error.code === "EINTR" && tries < maxEintrAttempts) continue;
        throw new DeviceError(`${what}: ${error.message}`, error.code);
      }
      throw error;
    }
    if (doneBytes !== lengthBytes) throw new DeviceError(`${what}: short ${kind} (${doneBytes} bytes)`, undefined);
    return;
  }
}

/**
 * Closes the fd and frees the buffer. A close error is not reported: with O_DSYNC every write was
 * already on stable storage when pwrite returned, so close has nothing left to lose.
 */
function release(): void {
  if (fd !== undefined) {
    try {
      libc.close(fd);
    } catch {
      // See above: nothing to report.
    }
    fd = undefined;
  }
  buffer?.free();
  buffer = undefined;
}
