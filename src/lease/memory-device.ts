/**
 * In-memory sector storage for tests and the simulator. One `MemoryStorage` is the shared disk;
 * each host reaches it through its own `MemoryDevice`, whose faults (delay, error, hang, torn
 * writes) are that host's alone — like a per-host path to a SAN — or, set on every device, a
 * global storage fault. Time passes on the injected Clock, so the simulator controls it. Like
 * DirectDevice (one worker thread per device), a device runs its batches one at a time, in order.
 */
import type { Clock } from "../core/clock.ts";
import { checkBatch, IoError, IoTimeoutError, type IoOp, type SectorDevice, type SectorSize } from "./sector-device.ts";

export class MemoryStorage {
  readonly bytes: Uint8Array;
  constructor(
    readonly sizeBytes: number,
    readonly sectorSize: SectorSize,
  ) {
    if (sizeBytes % sectorSize !== 0 || sizeBytes <= 0) throw new RangeError(`storage size ${sizeBytes} for ${sectorSize}-byte sectors`);
    this.bytes = new Uint8Array(sizeBytes);
  }
}

/**
 * What the device does to the operations it is given:
 * - delay: each operation takes `ms` (and lands even if the caller timed out: an in-doubt write);
 * - error: each operation fails with errno `code` before touching storage;
 * - hang: operations block until the fault is cleared, then run;
 * - tear: a multi-sector write stores only its first half of sectors, then fails.
 */
export type Fault = { kind: "delay"; ms: number } | { kind: "error"; code: string } | { kind: "hang" } | { kind: "tear" };

export interface FaultRule {
  readonly fault: Fault;
  readonly ops: "read" | "write" | "all";
  /** Only operations at this byte offset (one record), or all. */
  readonly offset?: number;
}

export interface IoStats {
  reads: number;
  writes: number;
  bytesRead: number;
  bytesWritten: number;
}

export class MemoryDevice implements SectorDevice {
  readonly sectorSize: SectorSize;
  readonly sizeBytes: number;
  readonly stats: IoStats = { reads: 0, writes: 0, bytesRead: 0, bytesWritten: 0 };
  #rule: FaultRule | undefined;
  /** Wakes operations blocked by a hang when the fault changes. */
  #unhang: Array<() => void> = [];
  #closed = false;
  /** The process using it died (see processDied). */
  #orphaned = false;
  /** The last batch handed to the device: batches run one after another, as in DirectDevice's worker thread. */
  #tail: Promise<unknown> = Promise.resolve();

  constructor(
    readonly storage: MemoryStorage,
    readonly clock: Clock,
    readonly name = "memory",
  ) {
    this.sectorSize = storage.sectorSize;
    this.sizeBytes = storage.sizeBytes;
  }

  /** Injects `fault` for operations of kind `ops` (all by default), at `offset` only if given; undefined heals. */
  setFault(fault: Fault | undefined, ops: FaultRule["ops"] = "all", offset?: number): void {
    this.#rule = fault === undefined ? undefined : { fault, ops, ...(offset === undefined ? {} : { offset }) };
    for (const wake of this.#unhang.splice(0)) wake();
  }

  async io(ops: readonly IoOp[], timeoutMs: number): Promise<Uint8Array[]> {
    if (this.#closed) throw new IoError(`${this.name}: device is closed`);
    checkBatch(this, ops, timeoutMs);
    // In order, after every earlier batch, even one whose caller timed out: a stuck syscall holds
    // up the device's worker, and what comes after it sees what it wrote.
    const work = this.#tail.then(() => {
      if (this.#orphaned) throw new IoError(`${this.name}: the process that asked for this I/O is gone`);
      return this.#run(ops);
    });
    // The work goes on after a timeout, as a stuck syscall would: its writes may land later.
    this.#tail = work.catch(() => {});
    const expired = this.clock.sleep(timeoutMs).then(() => {
      throw new IoTimeoutError(this.name, timeoutMs);
    });
    expired.catch(() => {});
    return Promise.race([work, expired]);
  }

  async close(): Promise<void> {
    this.#closed = true;
  }

  /**
   * The process using the device died (SIGKILL, power loss): batches it queued and the device has
   * not started never run — they died with its worker thread — while the one under way, a syscall
   * in the kernel, still completes. (The simulator found a killed lockd's queue of renewals behind
   * slow storage landing for many minutes, over the next incarnation's host lease.)
   */
  processDied(): void {
    this.#closed = true;
    this.#orphaned = true;
  }

  async #run(ops: readonly IoOp[]): Promise<Uint8Array[]> {
    const reads: Uint8Array[] = [];
    for (const op of ops) {
      const fault = await this.#faultFor(op);
      if (op.kind === "read") {
        reads.push(this.storage.bytes.slice(op.offset, op.offset + op.length));
        this.stats.reads++;
        this.stats.bytesRead += op.length;
      } else if (fault?.kind === "tear" && op.data.length > this.sectorSize) {
        const keptBytes = Math.floor(op.data.length / this.sectorSize / 2) * this.sectorSize;
        this.storage.bytes.set(op.data.subarray(0, keptBytes), op.offset);
        throw new IoError(`${this.name}: torn write at ${op.offset} (${keptBytes} of ${op.data.length} bytes written)`, "EIO");
      } else {
        this.storage.bytes.set(op.data, op.offset);
        this.stats.writes++;
        this.stats.bytesWritten += op.data.length;
      }
    }
    return reads;
  }

  /** Applies delay/hang/error for `op` and returns the fault in force when it proceeds. */
  async #faultFor(op: IoOp): Promise<Fault | undefined> {
    for (;;) {
      const rule = this.#rule;
      if (rule === undefined || (rule.ops !== "all" && rule.ops !== op.kind) || (rule.offset !== undefined && rule.offset !== op.offset)) return undefined;
      const { fault } = rule;
      if (fault.kind === "error") throw new IoError(`${this.name}: ${op.kind} at ${op.offset} failed (${fault.code})`, fault.code);
      if (fault.kind === "delay") {
        await this.clock.sleep(fault.ms);
        return fault;
      }
      if (fault.kind === "tear") return fault;
      await new Promise<void>((wake) => this.#unhang.push(wake));
    }
  }
}
