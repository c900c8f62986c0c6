/**
 * The few libc calls fitha needs that Bun does not offer: O_DIRECT file I/O into aligned memory,
 * block device geometry, CLOCK_BOOTTIME, peer credentials, and unix datagram sockets (systemd's
 * notify protocol). Thin wrappers over bun:ffi that turn C conventions
 * (-1 and errno, out-parameters, raw pointers) into numbers, objects and thrown ErrnoErrors.
 *
 * Linux x86_64 with glibc only (Debian's libc.so.6). The calls that block (pread, pwrite, and open
 * on a hung storage) block the calling thread: call them from a Worker (src/lease/direct-device-worker.ts).
 * errno is per thread, and these wrappers read it right after the failing call on the same thread.
 */
import { dlopen, read, toArrayBuffer, type Library, type Pointer } from "bun:ffi";
import { constants } from "node:os";
import { systemLibraryPath } from "./system-library.ts";

/*
 * Constants of Linux x86_64, from the kernel's uapi headers as Debian ships them:
 * asm-generic/fcntl.h (O_*; x86_64 uses the generic values), linux/stat.h (S_IF*, STATX_*),
 * linux/fcntl.h (AT_EMPTY_PATH), linux/time.h (CLOCK_BOOTTIME), linux/timex.h (struct timex,
 * TIME_ERROR), linux/fs.h (BLK* ioctls:
 * BLKSSZGET = _IO(0x12, 104), BLKGETSIZE64 = _IOR(0x12, 114, size_t)).
 */
export const O_RDWR = 0o2;
export const O_CREAT = 0o100;
/** Each write returns only once its data is on stable storage (no separate fsync). */
export const O_DSYNC = 0o10000;
/** Bypass the page cache: I/O goes to the device, in units of its logical sector size. */
export const O_DIRECT = 0o40000;
export const O_CLOEXEC = 0o2000000;

export const S_IFMT = 0o170000;
export const S_IFREG = 0o100000;
export const S_IFBLK = 0o60000;

const AT_EMPTY_PATH = 0x1000;
const STATX_MODE = 0x2;
const STATX_SIZE = 0x200;
const STATX_DIOALIGN = 0x2000;
const CLOCK_BOOTTIME = 7;
/** asm-generic/socket.h: SOL_SOCKET, SO_PEERCRED; struct ucred is { pid_t pid; uid_t uid; gid_t gid; }. */
const SOL_SOCKET = 1;
const SO_PEERCRED = 17;
const ucredBytes = 12;
/**
 * linux/socket.h, linux/net.h, linux/un.h: AF_UNIX, SOCK_DGRAM, SOCK_CLOEXEC (= O_CLOEXEC),
 * MSG_DONTWAIT, MSG_NOSIGNAL; struct sockaddr_un is { sa_family_t sun_family (u16); char sun_path[108]; }.
 */
const AF_UNIX = 1;
const SOCK_DGRAM = 2;
const SOCK_CLOEXEC = 0o2000000;
const MSG_DONTWAIT = 0x40;
const MSG_NOSIGNAL = 0x4000;
const sunPathBytes = 108;
const BLKSSZGET = 0x1268;
const BLKGETSIZE64 = 0x80081272;

const symbols = {
  open: { args: ["ptr", "i32", "u32"], returns: "i32" },
  close: { args: ["i32"], returns: "i32" },
  pread: { args: ["i32", "ptr", "u64", "i64"], returns: "i64" },
  pwrite: { args: ["i32", "ptr", "u64", "i64"], returns: "i64" },
  statx: { args: ["i32", "ptr", "i32", "u32", "ptr"], returns: "i32" },
  // ioctl is variadic: on x86_64 its third argument travels in a register like a fixed one, and
  // the vector-register count variadic callers pass in %al only decides whether it saves xmm registers.
  ioctl: { args: ["i32", "u64", "ptr"], returns: "i32" },
  posix_memalign: { args: ["ptr", "u64", "u64"], returns: "i32" },
  free: { args: ["ptr"], returns: "void" },
  __errno_location: { args: [], returns: "ptr" },
  strerror: { args: ["i32"], returns: "cstring" },
  clock_gettime: { args: ["i32", "ptr"], returns: "i32" },
  getsockopt: { args: ["i32", "i32", "i32", "ptr", "ptr"], returns: "i32" },
  adjtimex: { args: ["ptr"], returns: "i32" },
  socket: { args: ["i32", "i32", "i32"], returns: "i32" },
  sendto: { args: ["i32", "ptr", "u64", "i32", "ptr", "u32"], returns: "i64" },
} as const;

let library: Library<typeof symbols> | undefined;

/** dlopen on first use, not at import: commands that never do O_DIRECT I/O never load it. */
function libc() {
  library ??= dlopen(systemLibraryPath("libc.so.6", "libc6"), symbols);
  return library.symbols;
}

/** errno number → name ("EIO"), from the runtime's own table for this platform. */
const errnoNames = new Map<number, string>();
for (const [name, number] of Object.entries(constants.errno)) {
  // Aliases share a number (EAGAIN/EWOULDBLOCK); the first listed is the usual name.
  if (!errnoNames.has(number)) errnoNames.set(number, name);
}

/** A libc call that failed, with its errno: `open /x: No such file or directory (ENOENT)`. */
export class ErrnoError extends Error {
  /** errno name, e.g. "EIO"; "E" + the number when this platform's table does not know it. */
  readonly code: string;

  constructor(
    readonly syscall: string,
    readonly errno: number,
    /** What was being operated on, e.g. the path; empty when nothing useful. */
    subject = "",
  ) {
    const code = errnoNames.get(errno) ?? `E${errno}`;
    super(`${syscall}${subject === "" ? "" : ` ${subject}`}: ${libc().strerror(errno) ?? "unknown error"} (${code})`);
    this.name = "ErrnoError";
    this.code = code;
  }
}

/** The calling thread's errno; read it right after the call that failed. */
function errno(): number {
  const location = libc().__errno_location();
  if (location === null) throw new Error("__errno_location returned NULL");
  return read.i32(location);
}

/** A NUL-terminated copy of `text` for C; refuses embedded NULs, which would cut the string short. */
function cString(text: string): Buffer {
  if (text.includes("\0")) throw new RangeError(`path contains a NUL byte: ${JSON.stringify(text)}`);
  return Buffer.from(`${text}\0`, "utf8");
}

/** open(2); returns the fd. */
export function open(path: string, flags: number, mode = 0o600): number {
  const fd = libc().open(cString(path), flags, mode);
  if (fd < 0) throw new ErrnoError("open", errno(), path);
  return fd;
}

export function close(fd: number): void {
  if (libc().close(fd) !== 0) throw new ErrnoError("close", errno());
}

/**
 * Memory from posix_memalign, for O_DIRECT (which needs buffers aligned like the device's
 * sectors). `bytes` views the native memory itself; `free()` releases it (once), after which
 * `bytes` and `pointer` throw. Keep no other reference to the view: it would outlive the memory.
 */
export class AlignedBuffer {
  #pointer: Pointer | undefined;
  #bytes: Uint8Array | undefined;

  private constructor(
    pointer: Pointer,
    readonly sizeBytes: number,
  ) {
    this.#pointer = pointer;
    this.#bytes = new Uint8Array(toArrayBuffer(pointer, 0, sizeBytes));
  }

  static allocate(sizeBytes: number, alignmentBytes: number): AlignedBuffer {
    if (!(Number.isSafeInteger(sizeBytes) && sizeBytes > 0)) throw new RangeError(`aligned buffer of ${sizeBytes} bytes`);
    const out = new BigUint64Array(1);
    // posix_memalign returns the error number instead of setting errno.
    const error = libc().posix_memalign(out, alignmentBytes, sizeBytes);
    if (error !== 0) throw new ErrnoError("posix_memalign", error, `${sizeBytes} bytes`);
    return new AlignedBuffer(Number(out[0]) as Pointer, sizeBytes);
  }

  get pointer(): Pointer {
    if (this.#pointer === undefined) throw new Error("aligned buffer used after free");
    return this.#pointer;
  }

  get bytes(): Uint8Array {
    if (this.#bytes === undefined) throw new Error("aligned buffer used after free");
    return this.#bytes;
  }

  /** Idempotent. */
  free(): void {
    if (this.#pointer === undefined) return;
    libc().free(this.#pointer);
    this.#pointer = undefined;
    this.#bytes = undefined;
  }
}

function checkSpan(buffer: AlignedBuffer, lengthBytes: number): void {
  if (!(Number.isSafeInteger(lengthBytes) && lengthBytes >= 0 && lengthBytes <= buffer.sizeBytes)) {
    throw new RangeError(`${lengthBytes} bytes do not fit a ${buffer.sizeBytes}-byte buffer`);
  }
}

/** pread(2) into the start of `buffer`; returns the bytes read (fewer at end of file). */
export function pread(fd: number, buffer: AlignedBuffer, lengthBytes: number, offset: number): number {
  checkSpan(buffer, lengthBytes);
  const count = libc().pread(fd, buffer.pointer, lengthBytes, offset);
  if (count < 0n) throw new ErrnoError("pread", errno());
  return Number(count);
}

/** pwrite(2) from the start of `buffer`; returns the bytes written. */
export function pwrite(fd: number, buffer: AlignedBuffer, lengthBytes: number, offset: number): number {
  checkSpan(buffer, lengthBytes);
  const count = libc().pwrite(fd, buffer.pointer, lengthBytes, offset);
  if (count < 0n) throw new ErrnoError("pwrite", errno());
  return Number(count);
}

export interface FileStatus {
  /** st_mode: file type (S_IFMT bits) and permissions. */
  readonly mode: number;
  readonly sizeBytes: number;
  /**
   * The offset/length alignment O_DIRECT needs on this file (STATX_DIOALIGN, Linux 6.1+), or
   * undefined when the file system does not say (older kernels, NFS, FUSE…). 0 means the file
   * system does not support O_DIRECT on this file at all.
   */
  readonly directIoAlignBytes: number | undefined;
}

/**
 * fstat through statx(2) on the open fd (AT_EMPTY_PATH), which also reports the O_DIRECT
 * alignment. Offsets are those of struct statx in linux/stat.h.
 */
export function fstatx(fd: number): FileStatus {
  const buffer = new Uint8Array(256);
  const mask = STATX_MODE | STATX_SIZE | STATX_DIOALIGN;
  if (libc().statx(fd, cString(""), AT_EMPTY_PATH, mask, buffer) !== 0) throw new ErrnoError("statx", errno());
  const view = new DataView(buffer.buffer);
  const reported = view.getUint32(0x00, true);
  return {
    mode: view.getUint16(0x1c, true),
    sizeBytes: Number(view.getBigUint64(0x28, true)),
    directIoAlignBytes: (reported & STATX_DIOALIGN) === 0 ? undefined : view.getUint32(0x9c, true),
  };
}

/** A block device's size in bytes (ioctl BLKGETSIZE64). */
export function blockDeviceSizeBytes(fd: number): number {
  const out = new BigUint64Array(1);
  if (libc().ioctl(fd, BLKGETSIZE64, out) !== 0) throw new ErrnoError("ioctl BLKGETSIZE64", errno());
  return Number(out[0]);
}

/** A block device's logical sector size (ioctl BLKSSZGET): the unit O_DIRECT I/O must align to. */
export function blockDeviceSectorBytes(fd: number): number {
  const out = new Int32Array(1);
  if (libc().ioctl(fd, BLKSSZGET, out) !== 0) throw new ErrnoError("ioctl BLKSSZGET", errno());
  return out[0]!;
}

const timespec = new BigInt64Array(2);

/**
 * Milliseconds (fractional) on CLOCK_BOOTTIME: monotonic like CLOCK_MONOTONIC, but it keeps
 * counting while the machine is suspended, so a lease deadline cannot pass unnoticed in a suspend.
 */
export function clockBoottimeMs(): number {
  if (libc().clock_gettime(CLOCK_BOOTTIME, timespec) !== 0) throw new ErrnoError("clock_gettime", errno(), "CLOCK_BOOTTIME");
  return Number(timespec[0]!) * 1000 + Number(timespec[1]!) / 1e6;
}

/** adjtimex's result when the kernel considers the wall clock unsynchronized (STA_UNSYNC). */
const TIME_ERROR = 5;
/** sizeof(struct timex) on x86_64 is 208; modes (0: change nothing) is its first field. */
const timexBytes = 208;

export interface WallClockSync {
  /** Whether an NTP daemon has told the kernel the wall clock is synchronized. */
  readonly synchronized: boolean;
  /** The kernel's maximum error estimate of the wall clock (timex.maxerror, µs → ms). */
  readonly maxErrorMs: number;
}

/** The kernel's NTP state (adjtimex(2) with modes 0: reads, changes nothing, needs no privilege). */
export function wallClockSync(): WallClockSync {
  const timex = new BigInt64Array(timexBytes / 8);
  const state = libc().adjtimex(timex);
  if (state < 0) throw new ErrnoError("adjtimex", errno());
  // struct timex: unsigned modes + padding @0, long offset @8, long freq @16, long maxerror @24.
  return { synchronized: state !== TIME_ERROR, maxErrorMs: Number(timex[3]!) / 1000 };
}

export interface PeerCredentials {
  readonly pid: number;
  readonly uid: number;
  readonly gid: number;
}

/**
 * The credentials of the process at the other end of a connected unix socket, as the kernel
 * recorded them at connect(2) (SO_PEERCRED): not something the peer can claim.
 */
export function peerCredentials(fd: number): PeerCredentials {
  const ucred = new Int32Array(ucredBytes / 4);
  const length = new Uint32Array([ucredBytes]);
  if (libc().getsockopt(fd, SOL_SOCKET, SO_PEERCRED, ucred, length) !== 0) throw new ErrnoError("getsockopt", errno(), "SO_PEERCRED");
  if (length[0] !== ucredBytes) throw new Error(`SO_PEERCRED returned ${length[0]} bytes, expected ${ucredBytes}`);
  return { pid: ucred[0]!, uid: ucred[1]! >>> 0, gid: ucred[2]! >>> 0 };
}

/** A new unix datagram socket (close-on-exec: not inherited by the processes fitha spawns). */
export function unixDatagramSocket(): number {
  const fd = libc().socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw new ErrnoError("socket", errno(), "AF_UNIX SOCK_DGRAM");
  return fd;
}

/**
 * struct sockaddr_un for `address`: a file system path, or an abstract address written with a
 * leading "@" (Linux: sun_path starts with a NUL byte, and the length counts only the name's
 * bytes, no terminator). Returns the struct and the length to pass with it.
 */
function unixAddress(address: string): { sockaddr: Uint8Array; length: number } {
  const abstract = address.startsWith("@");
  const name = Buffer.from(abstract ? address.slice(1) : address, "utf8");
  if (name.length === 0) throw new RangeError("an empty unix socket address");
  if (!abstract && name.includes(0)) throw new RangeError(`unix socket path contains a NUL byte: ${JSON.stringify(address)}`);
  // A path needs room for its terminating NUL; an abstract name has the leading NUL instead.
  if (name.length + 1 > sunPathBytes) throw new RangeError(`unix socket address longer than ${sunPathBytes - 1} bytes: ${address}`);
  const sockaddr = new Uint8Array(2 + sunPathBytes);
  new DataView(sockaddr.buffer).setUint16(0, AF_UNIX, true);
  sockaddr.set(name, abstract ? 3 : 2);
  return { sockaddr, length: 2 + 1 + name.length };
}

/**
 * sendto(2) of one datagram to the unix socket at `address` (a path, or "@name" for an abstract
 * address), without blocking: a receiver whose queue is full fails it with EAGAIN rather than
 * stalling the caller's thread (a daemon's event loop). Returns the bytes sent.
 */
export function sendUnixDatagram(fd: number, address: string, message: Uint8Array): number {
  const { sockaddr, length } = unixAddress(address);
  // bun:ffi passes an empty typed array as a null pointer; a zero-length datagram is legal but useless here.
  if (message.length === 0) throw new RangeError("an empty datagram");
  const count = libc().sendto(fd, message, message.length, MSG_DONTWAIT | MSG_NOSIGNAL, sockaddr, length);
  if (count < 0n) throw new ErrnoError("sendto", errno(), address);
  return Number(count);
}
