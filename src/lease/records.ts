/**
 * The four on-disk records (format version 1), one per sector, little endian, each ending in a
 * CRC32C of everything before it. Byte maps are in src/lease/README.md.
 *
 * Decoding is strict: an all-zero sector is "empty" (never written); anything else must carry
 * the magic, a known version, the expected kind, consistent fields and a matching checksum, or
 * it is a CorruptionError. Corruption is reported, never repaired or overwritten silently.
 */
import { crc32c } from "./crc32c.ts";
import type { SectorSize } from "./sector-device.ts";

/** "FITH" read as a little-endian u32. */
export const recordMagic = 0x48544946;
export const formatVersion = 1;
const kindCode = { header: 1, delta: 2, leader: 3, ballot: 4 } as const;
type Kind = keyof typeof kindCode;

/** Text fields hold at most this many UTF-8 bytes (zero padded). */
export const maxNameBytes = 64;
const idBytes = 16;

export class CorruptionError extends Error {
  constructor(
    readonly where: string,
    reason: string,
  ) {
    super(`${where}: corrupt lease record: ${reason}`);
    this.name = "CorruptionError";
  }
}

export interface HeaderRecord {
  readonly kind: "header";
  readonly sectorSize: SectorSize;
  readonly hosts: number;
  readonly slots: number;
  /** The largest io timeout a host may join with: bounds host-dead for superseded generations. */
  readonly maxIoTimeoutMs: number;
  readonly killBudgetMs: number;
  /** Random at format time, 32 hex digits: tells two lockspaces apart. */
  readonly lockspaceId: string;
  readonly name: string;
}

export type HostState = "held" | "released";

export interface DeltaRecord {
  readonly kind: "delta";
  readonly hostId: number;
  /** Incremented by each join; (host id, generation) names one incarnation of a lockd. */
  readonly generation: number;
  /** The holder's monotonic clock at its last renewal; only compared for change by others. */
  readonly timestampMs: number;
  readonly ioTimeoutMs: number;
  /** Persisted id of the installation (32 hex digits): who may fast-rejoin this host id. */
  readonly installId: string;
  readonly hostName: string;
  readonly state: HostState;
}

export interface LeaderRecord {
  readonly kind: "leader";
  readonly slot: number;
  /** Lease version: the Disk Paxos instance that decided this owner; +1 per acquisition. */
  readonly lver: number;
  readonly ownerHostId: number;
  readonly ownerGeneration: number;
  readonly state: HostState;
  /** What the lease protects: the VM's UUID (or name). */
  readonly resource: string;
}

export interface BallotRecord {
  readonly kind: "ballot";
  readonly slot: number;
  readonly hostId: number;
  /** The instance (lease version) these ballot numbers belong to. */
  readonly lver: number;
  readonly mbal: number;
  readonly bal: number;
  /** The value proposed/accepted: the next owner (host id, generation). */
  readonly inpHostId: number;
  readonly inpGeneration: number;
}

export type LeaseRecord = HeaderRecord | DeltaRecord | LeaderRecord | BallotRecord;

// Field offsets after the common prefix (magic u32 @0, kind u16 @4, version u16 @6).
const body = 8;

export function encodeRecord(record: LeaseRecord, sectorSize: SectorSize): Uint8Array {
  const bytes = new Uint8Array(sectorSize);
  const view = new DataView(bytes.buffer);
  view.setUint32(0, recordMagic, true);
  view.setUint16(4, kindCode[record.kind], true);
  view.setUint16(6, formatVersion, true);
  const u32 = (at: number, value: number) => view.setUint32(body + at, checkU32(value), true);
  const u64 = (at: number, value: number) => view.setBigUint64(body + at, BigInt(checkU64(value)), true);
  const state = (value: HostState) => (value === "held" ? 1 : 2);
  switch (record.kind) {
    case "header":
      u32(0, record.sectorSize);
      u32(4, record.hosts);
      u32(8, record.slots);
      u32(12, record.maxIoTimeoutMs);
      u32(16, record.killBudgetMs);
      writeId(bytes, body + 24, record.lockspaceId);
      writeText(bytes, body + 40, record.name);
      break;
    case "delta":
      u32(0, record.hostId);
      u32(4, record.ioTimeoutMs);
      u64(8, record.generation);
      u64(16, record.timestampMs);
      u32(24, state(record.state));
      writeId(bytes, body + 32, record.installId);
      writeText(bytes, body + 48, record.hostName);
      break;
    case "leader":
      u32(0, record.slot);
      u32(4, record.ownerHostId);
      u64(8, record.ownerGeneration);
      u64(16, record.lver);
      u32(24, state(record.state));
      writeText(bytes, body + 32, record.resource);
      break;
    case "ballot":
      u32(0, record.slot);
      u32(4, record.hostId);
      u64(8, record.lver);
      u64(16, record.mbal);
      u64(24, record.bal);
      u32(32, record.inpHostId);
      u64(40, record.inpGeneration);
      break;
  }
  view.setUint32(sectorSize - 4, crc32c(bytes.subarray(0, sectorSize - 4)), true);
  return bytes;
}

/** Decodes one sector expected to hold a record of `kind`; `where` names it in errors. */
export function decodeRecord<K extends Kind>(bytes: Uint8Array, kind: K, where: string): Extract<LeaseRecord, { kind: K }> | "empty" {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const corrupt = (reason: string) => new CorruptionError(where, reason);
  if (view.getUint32(0, true) !== recordMagic) {
    if (allZero(bytes)) return "empty";
    throw corrupt("bad magic number");
  }
  const stored = view.getUint32(bytes.length - 4, true);
  const computed = crc32c(bytes.subarray(0, bytes.length - 4));
  if (stored !== computed) throw corrupt(`checksum mismatch (stored ${hex(stored)}, computed ${hex(computed)})`);
  const version = view.getUint16(6, true);
  if (version !== formatVersion) throw corrupt(`format version ${version}, this fitha reads version ${formatVersion}`);
  const code = view.getUint16(4, true);
  if (code !== kindCode[kind]) throw corrupt(`expected a ${kind} record, found kind ${code}`);
  const u32 = (at: number) => view.getUint32(body + at, true);
  const u64 = (at: number) => {
    const value = view.getBigUint64(body + at, true);
    if (value > BigInt(Number.MAX_SAFE_INTEGER)) throw corrupt(`64-bit field at byte ${body + at} out of range`);
    return Number(value);
  };
  const state = (at: number): HostState => {
    const value = u32(at);
    if (value !== 1 && value !== 2) throw corrupt(`state ${value}`);
    return value === 1 ? "held" : "released";
  };
  const text = (at: number) => readText(bytes, body + at, corrupt);
  let record: LeaseRecord;
  switch (kind) {
    case "header": {
      const sectorSize = u32(0);
      if (sectorSize !== 512 && sectorSize !== 4096) throw corrupt(`sector size ${sectorSize}`);
      record = { kind: "header", sectorSize, hosts: u32(4), slots: u32(8), maxIoTimeoutMs: u32(12), killBudgetMs: u32(16), lockspaceId: readId(bytes, body + 24), name: text(40) };
      break;
    }
    case "delta":
      record = { kind: "delta", hostId: u32(0), ioTimeoutMs: u32(4), generation: u64(8), timestampMs: u64(16), state: state(24), installId: readId(bytes, body + 32), hostName: text(48) };
      break;
    case "leader":
      record = { kind: "leader", slot: u32(0), ownerHostId: u32(4), ownerGeneration: u64(8), lver: u64(16), state: state(24), resource: text(32) };
      break;
    default:
      record = { kind: "ballot", slot: u32(0), hostId: u32(4), lver: u64(8), mbal: u64(16), bal: u64(24), inpHostId: u32(32), inpGeneration: u64(40) };
  }
  return record as Extract<LeaseRecord, { kind: K }>;
}

/** Word at a time: most sectors read are empty ballot blocks of hosts that never took part. */
function allZero(bytes: Uint8Array): boolean {
  if (bytes.byteOffset % 4 === 0 && bytes.length % 4 === 0) {
    const words = new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.length / 4);
    for (let i = 0; i < words.length; i++) if (words[i] !== 0) return false;
    return true;
  }
  for (let i = 0; i < bytes.length; i++) if (bytes[i] !== 0) return false;
  return true;
}

function checkU32(value: number): number {
  if (!(Number.isInteger(value) && value >= 0 && value <= 0xffffffff)) throw new RangeError(`${value} does not fit 32 bits`);
  return value;
}

function checkU64(value: number): number {
  if (!(Number.isSafeInteger(value) && value >= 0)) throw new RangeError(`${value} is not a safe unsigned integer`);
  return value;
}

const textEncoder = new TextEncoder();
const textDecoder = new TextDecoder("utf-8", { fatal: true });

function writeText(bytes: Uint8Array, at: number, text: string): void {
  const encoded = textEncoder.encode(text);
  if (encoded.length > maxNameBytes) throw new RangeError(`"${text}" is longer than ${maxNameBytes} bytes`);
  if (encoded.includes(0)) throw new RangeError(`"${text}" contains a NUL character`);
  bytes.set(encoded, at);
}

function readText(bytes: Uint8Array, at: number, corrupt: (reason: string) => Error): string {
  const field = bytes.subarray(at, at + maxNameBytes);
  const end = field.indexOf(0);
  try {
    return textDecoder.decode(end < 0 ? field : field.subarray(0, end));
  } catch {
    throw corrupt("text field is not UTF-8");
  }
}

function writeId(bytes: Uint8Array, at: number, id: string): void {
  if (!/^[0-9a-f]{32}$/.test(id)) throw new RangeError(`id "${id}" is not 32 lowercase hex digits`);
  bytes.set(Uint8Array.from(id.match(/../g)!, (pair) => Number.parseInt(pair, 16)), at);
}

/** Two hex digits for each byte value: every delta record read decodes an id (renewals, the simulator). */
const hexOfByte = Array.from({ length: 256 }, (_, b) => b.toString(16).padStart(2, "0"));

function readId(bytes: Uint8Array, at: number): string {
  let id = "";
  for (let i = at; i < at + idBytes; i++) id += hexOfByte[bytes[i]!]!;
  return id;
}

const hex = (value: number) => `0x${value.toString(16).padStart(8, "0")}`;

/** A fresh random 128-bit id as 32 hex digits. */
export function randomId(): string {
  return readId(crypto.getRandomValues(new Uint8Array(idBytes)), 0);
}
