/**
 * The real SectorDevice: O_DIRECT|O_DSYNC I/O on a file or block device (the shared lease file or
 * LUN), so every read sees the storage itself, not a page cache, and every write is on stable
 * storage when it completes.
 *
 * The syscalls block, and on failing storage they can block for minutes (or for ever, in D
 * state). They run in a Worker thread, one per device (direct-device-worker.ts), so the caller's
 * event loop keeps running: its deadline timers fire, the daemon keeps talking to etcd, and a
 * lease that cannot be renewed is noticed in time. The device times batches out itself.
 */
import { checkBatch, IoError, IoTimeoutError, type IoOp, type SectorDevice, type SectorSize } from "./sector-device.ts";
import type { WorkerReply, WorkerRequest } from "./direct-device-worker.ts";

export interface DirectDeviceOptions {
  /** Sector size to use; by default the smallest the device allows. A smaller one than it needs is refused. */
  readonly sectorSize?: SectorSize;
  /** Deadline for opening (open can hang on failing storage too); default 10 s. */
  readonly timeoutMs?: number;
}

const defaultOpenTimeoutMs = 10_000;
/**
 * How long close() waits for the worker to close the fd and free its buffer. It answers at once
 * unless a syscall of a timed-out batch is still stuck; after this long it is terminated anyway.
 */
const closeWaitMs = 3_000;

interface PendingBatch {
  readonly resolve: (reads: Uint8Array[]) => void;
  readonly reject: (error: IoError) => void;
  readonly timer: ReturnType<typeof setTimeout>;
}

export class DirectDevice implements SectorDevice {
  readonly #worker: Worker;
  /** Batches whose caller is still waiting, by id; a reply for an id not here is late and dropped. */
  readonly #pending = new Map<number, PendingBatch>();
  #nextId = 1;
  #closing: Promise<void> | undefined;
  /** Set when the worker thread died: every later batch fails at once with this. */
  #broken: IoError | undefined;
  #onDrained: (() => void) | undefined;
  #onClosed: (() => void) | undefined;

  private constructor(
    readonly name: string,
    readonly sectorSize: SectorSize,
    readonly sizeBytes: number,
    /**
     * The alignment O_DIRECT I/O needs here: a block device's logical sector size (BLKSSZGET), a
     * file's file system O_DIRECT alignment (statx STATX_DIOALIGN; 512 when not reported).
     */
    readonly alignmentBytes: number,
    readonly blockDevice: boolean,
    worker: Worker,
  ) {
    this.#worker = worker;
    worker.onmessage = (event: MessageEvent<WorkerReply>) => this.#onReply(event.data);
    worker.onerror = (event) => this.#onWorkerDied(event.message);
    // An idle device must not keep the process alive; io() refs the worker while a caller waits.
    worker.unref();
  }

  /** Opens `path` (a regular file or a block device) for O_DIRECT I/O; rejects with IoError. */
  static async open(path: string, options: DirectDeviceOptions = {}): Promise<DirectDevice> {
    const openTimeoutMs = options.timeoutMs ?? defaultOpenTimeoutMs;
    if (!(Number.isFinite(openTimeoutMs) && openTimeoutMs > 0)) throw new RangeError(`open deadline ${openTimeoutMs} ms`);
    // Next to this file when run from source; in dist/fitha, scripts/build puts it next to the
    // main program (--entry-naming), which is what import.meta.url names in a compiled binary.
    const worker = new Worker(new URL("./direct-device-worker.ts", import.meta.url).href);
    try {
      const opened = await firstReply(worker, { type: "open", path, sectorSize: options.sectorSize }, openTimeoutMs, path);
      if (opened.type === "open-failed") throw new IoError(opened.message, opened.code);
      if (opened.type !== "opened") throw new IoError(`${path}: unexpected reply ${opened.type} from the I/O worker`);
      return new DirectDevice(path, opened.sectorSize, opened.sizeBytes, opened.alignmentBytes, opened.blockDevice, worker);
    } catch (error) {
      worker.terminate();
      throw error;
    }
  }

  async io(ops: readonly IoOp[], timeoutMs: number): Promise<Uint8Array[]> {
    if (this.#closing !== undefined) throw new IoError(`${this.name}: device is closed`);
    if (this.#broken !== undefined) throw this.#broken;
    checkBatch(this, ops, timeoutMs);
    const id = this.#nextId++;
    const { request, transfer } = ioRequest(id, ops);
    return new Promise((resolve, reject) => {
      // The deadline counts from submission, including time queued behind earlier batches.
      const timer = setTimeout(() => this.#settle(id, new IoTimeoutError(this.name, timeoutMs)), timeoutMs);
      this.#pending.set(id, { resolve, reject, timer });
      this.#worker.ref();
      this.#worker.postMessage(request, transfer);
    });
  }

  /** Waits for pending batches (each bounded by its deadline), then closes the fd and ends the worker. */
  close(): Promise<void> {
    this.#closing ??= this.#shutdown();
    return this.#closing;
  }

  async #shutdown(): Promise<void> {
    if (this.#pending.size > 0) await new Promise<void>((resolve) => (this.#onDrained = resolve));
    if (this.#broken === undefined) {
      this.#worker.ref();
      let timer: ReturnType<typeof setTimeout> | undefined;
      await new Promise<void>((resolve) => {
        this.#onClosed = resolve;
        timer = setTimeout(resolve, closeWaitMs);
        this.#worker.postMessage({ type: "close" } satisfies WorkerRequest);
      });
      clearTimeout(timer);
    }
    // If the worker is still inside a syscall that hangs, its fd and buffer stay with it until the
    // syscall returns: freeing memory the kernel may still transfer into would be far worse.
    this.#worker.terminate();
  }

  #onReply(reply: WorkerReply): void {
    switch (reply.type) {
      case "done":
        this.#settle(reply.id, reply.reads.map((data) => new Uint8Array(data)));
        break;
      case "failed":
        this.#settle(reply.id, new IoError(`${this.name}: ${reply.message}`, reply.code));
        break;
      case "closed":
        this.#onClosed?.();
        break;
    }
  }

  /** Answers the caller of batch `id`, unless it was answered already (timed out): then the outcome is dropped. */
  #settle(id: number, outcome: Uint8Array[] | IoError): void {
    const batch = this.#pending.get(id);
    if (batch === undefined) return;
    this.#pending.delete(id);
    clearTimeout(batch.timer);
    if (outcome instanceof IoError) batch.reject(outcome);
    else batch.resolve(outcome);
    if (this.#pending.size === 0) {
      this.#worker.unref();
      this.#onDrained?.();
    }
  }

  #onWorkerDied(message: string): void {
    this.#broken = new IoError(`${this.name}: the I/O worker failed: ${message}`);
    for (const id of [...this.#pending.keys()]) this.#settle(id, this.#broken);
    this.#onClosed?.();
  }
}

/**
 * The request for a batch. Written data is copied once into buffers that are then moved to the
 * worker: the caller keeps its own arrays untouched, and only the bytes of each view travel.
 */
function ioRequest(id: number, ops: readonly IoOp[]): { request: WorkerRequest; transfer: ArrayBuffer[] } {
  const transfer: ArrayBuffer[] = [];
  const copied = ops.map((op): IoOp => {
    if (op.kind === "read") return { kind: "read", offset: op.offset, length: op.length };
    const data = op.data.slice();
    transfer.push(data.buffer);
    return { kind: "write", offset: op.offset, data };
  });
  return { request: { type: "io", id, ops: copied }, transfer };
}

/** Sends `request` to a new worker and waits, bounded, for its answer (or its failure to start). */
function firstReply(worker: Worker, request: WorkerRequest, timeoutMs: number, path: string): Promise<WorkerReply> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new IoTimeoutError(path, timeoutMs)), timeoutMs);
    worker.onmessage = (event: MessageEvent<WorkerReply>) => {
      clearTimeout(timer);
      resolve(event.data);
    };
    worker.onerror = (event) => {
      clearTimeout(timer);
      reject(new IoError(`${path}: the I/O worker failed to start: ${event.message}`));
    };
    worker.postMessage(request);
  });
}
