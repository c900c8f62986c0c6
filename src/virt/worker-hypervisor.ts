/**
 * The Hypervisor for daemons that must keep time (lockd renewing its lease): LibvirtHypervisor
 * run in a Worker thread (libvirt-worker.ts), so that a hung libvirtd blocks that thread, never
 * the caller's event loop and its timers, and every call bounded by a deadline.
 *
 * Calls go to the worker one at a time, in the order they were made (its thread makes one libvirt
 * call at a time anyway). They wait here rather than in the worker's queue, so a call whose
 * deadline passes before it is sent is never sent, and a call that times out is the one the worker
 * is stuck in. A call's deadline counts from when it was made, its wait included.
 *
 * A call whose deadline passes in the worker leaves that thread blocked inside libvirt, where it
 * cannot be interrupted: the worker is abandoned (logged as a warning; it closes its connection
 * and ends if libvirt ever returns) and later calls go to a new worker with a connection of its
 * own. An abandoned worker may hold a thread and a connection for ever, so only maxReplacements
 * are started in a row (without a call answered in between); when the last one is abandoned too,
 * every call fails at once, naming why, until the caller closes this hypervisor and opens another.
 *
 * A call that timed out may still take effect: libvirtd may yet carry out a destroy it received.
 * Callers look at the domain again rather than assume either way.
 */
import { logger } from "../log.ts";
import { domainIdentity } from "./domain-xml.ts";
import { HypervisorError, type DomainInfo, type Hypervisor, type HypervisorOperation, type NodeInfo } from "./hypervisor.ts";
import type { CallResults, HypervisorCall, HypervisorErrorFields, WorkerReply, WorkerRequest } from "./libvirt-worker.ts";

const log = logger("libvirt");

export interface WorkerHypervisorOptions {
  /** Deadline of each call, from when it is made (its wait behind earlier calls included); default 30 s. */
  readonly callTimeoutMs?: number;
  /** Deadline for a worker to start and connect, at open and for each replacement; default callTimeoutMs. */
  readonly openTimeoutMs?: number;
  /** Replacement workers started in a row, without a call answered in between, before giving up; default 4. */
  readonly maxReplacements?: number;
}

const defaultCallTimeoutMs = 30_000;
const defaultMaxReplacements = 4;

const operations: Record<HypervisorCall["method"], HypervisorOperation> = {
  listDomains: "list",
  lookup: "lookup",
  define: "define",
  start: "start",
  destroy: "destroy",
  undefine: "undefine",
  xml: "xml",
  nodeInfo: "node-info",
};

/** What became of a request: the worker's reply, or the reason the worker ended before replying. */
type Outcome = WorkerReply | { readonly type: "ended"; readonly reason: string };

/** One worker thread and, once opened, its libvirt connection. One request at a time. */
class LibvirtWorker {
  readonly #worker: Worker;
  #waiting: ((outcome: Outcome) => void) | undefined;
  /** Requests posted that the worker has not answered yet. */
  #unanswered = 0;
  #endedBecause: string | undefined;

  constructor() {
    // Next to this file when run from source; in dist/fitha, scripts/build puts it next to the
    // main program (--entry-naming), which is what import.meta.url names in a compiled binary.
    this.#worker = new Worker(new URL("./libvirt-worker.ts", import.meta.url).href);
    this.#worker.onmessage = (event: MessageEvent<WorkerReply>) => this.#onReply(event.data);
    this.#worker.onerror = (event) => this.terminate(`the libvirt worker failed: ${event.message}`);
    // An idle worker must not keep the process alive; request() refs it while a reply is due.
    this.#worker.unref();
  }

  /** Why it is no longer used (it died, was abandoned or closed), or undefined while it is. */
  get endedBecause(): string | undefined {
    return this.#endedBecause;
  }

  /** Settles with the reply, or once the worker has ended; no deadline here: the caller abandons the worker when its own passes. */
  request(request: WorkerRequest): Promise<Outcome> {
    if (this.#endedBecause !== undefined) return Promise.resolve({ type: "ended", reason: this.#endedBecause });
    return new Promise((resolve) => {
      this.#waiting = resolve;
      this.#worker.ref();
      this.#post(request);
    });
  }

  /**
   * Stops using a worker that did not answer in time: a request still waiting settles as ended
   * now. The worker is asked to close its connection, which it does if libvirt ever returns, and
   * is terminated once it has (a thread blocked in libvirt cannot be ended sooner).
   */
  abandon(reason: string): void {
    if (!this.#end(reason)) return;
    this.#post({ type: "close" });
  }

  /** Ends the worker now; for one that holds no connection, or died. Idempotent. */
  terminate(reason: string): void {
    this.#end(reason);
    this.#worker.terminate();
  }

  /** Whether it was still in use. */
  #end(reason: string): boolean {
    if (this.#endedBecause !== undefined) return false;
    this.#endedBecause = reason;
    this.#worker.unref();
    this.#settle({ type: "ended", reason });
    return true;
  }

  #post(request: WorkerRequest): void {
    this.#unanswered++;
    this.#worker.postMessage(request);
  }

  #onReply(reply: WorkerReply): void {
    this.#unanswered--;
    if (this.#endedBecause === undefined) {
      this.#worker.unref();
      this.#settle(reply);
    } else if (this.#unanswered === 0) {
      // Abandoned, and now done with libvirt: its connection is closed.
      this.#worker.terminate();
    }
  }

  #settle(outcome: Outcome): void {
    const waiting = this.#waiting;
    this.#waiting = undefined;
    waiting?.(outcome);
  }
}

interface QueuedCall {
  readonly call: HypervisorCall;
  readonly operation: HypervisorOperation;
  readonly domain: string | undefined;
  readonly resolve: (value: CallResults[keyof CallResults]) => void;
  readonly reject: (error: Error) => void;
  timer: ReturnType<typeof setTimeout> | undefined;
  settled: boolean;
  /** The worker it was sent to: abandoned if the deadline passes before it answers. */
  sentTo: LibvirtWorker | undefined;
}

export class WorkerHypervisor implements Hypervisor {
  readonly #callTimeoutMs: number;
  readonly #openTimeoutMs: number;
  readonly #maxReplacements: number;
  /** The connected worker; undefined after one was abandoned (the next call connects another), and once closed. */
  #worker: LibvirtWorker | undefined;
  /** Calls not yet sent, oldest first (some may have passed their deadline: they are skipped). */
  #queue: QueuedCall[] = [];
  #pumping = false;
  #onIdle: (() => void) | undefined;
  /** Workers abandoned since a worker last answered a call. */
  #abandonedInARow = 0;
  /** Set once too many workers were abandoned in a row: every call fails with it. */
  #gaveUp: string | undefined;
  #closing: Promise<void> | undefined;

  private constructor(
    readonly uri: string,
    options: WorkerHypervisorOptions,
  ) {
    this.#callTimeoutMs = options.callTimeoutMs ?? defaultCallTimeoutMs;
    this.#openTimeoutMs = options.openTimeoutMs ?? this.#callTimeoutMs;
    this.#maxReplacements = options.maxReplacements ?? defaultMaxReplacements;
    for (const [name, ms] of [
      ["call", this.#callTimeoutMs],
      ["open", this.#openTimeoutMs],
    ] as const) {
      if (!(Number.isFinite(ms) && ms > 0)) throw new RangeError(`${name} deadline ${ms} ms`);
    }
    if (!(Number.isSafeInteger(this.#maxReplacements) && this.#maxReplacements >= 0)) throw new RangeError(`maxReplacements ${this.#maxReplacements}`);
  }

  /** Starts a worker and connects it to `uri`; rejects with HypervisorError (also after openTimeoutMs). */
  static async open(uri: string, options: WorkerHypervisorOptions = {}): Promise<WorkerHypervisor> {
    const hypervisor = new WorkerHypervisor(uri, options);
    hypervisor.#worker = await hypervisor.#connect();
    return hypervisor;
  }

  listDomains(): Promise<DomainInfo[]> {
    return this.#call({ method: "listDomains" });
  }

  lookup(nameOrUuid: string): Promise<DomainInfo | undefined> {
    return this.#call({ method: "lookup", nameOrUuid });
  }

  define(xml: string): Promise<DomainInfo> {
    return this.#call({ method: "define", xml });
  }

  start(nameOrUuid: string): Promise<void> {
    return this.#call({ method: "start", nameOrUuid });
  }

  destroy(nameOrUuid: string): Promise<void> {
    return this.#call({ method: "destroy", nameOrUuid });
  }

  undefine(nameOrUuid: string): Promise<void> {
    return this.#call({ method: "undefine", nameOrUuid });
  }

  xml(nameOrUuid: string): Promise<string> {
    return this.#call({ method: "xml", nameOrUuid });
  }

  nodeInfo(): Promise<NodeInfo> {
    return this.#call({ method: "nodeInfo" });
  }

  /**
   * Refuses new calls, lets those already made finish (each bounded by its deadline), then closes
   * the connection (bounded by callTimeoutMs) and ends the worker. Idempotent.
   */
  close(): Promise<void> {
    this.#closing ??= this.#shutdown();
    return this.#closing;
  }

  #call<M extends HypervisorCall["method"]>(call: HypervisorCall & { readonly method: M }): Promise<CallResults[M]> {
    const operation = operations[call.method];
    const domain = "nameOrUuid" in call ? call.nameOrUuid : "xml" in call ? domainIdentity(call.xml).name : undefined;
    if (this.#closing !== undefined) return Promise.reject(new HypervisorError(this.uri, operation, domain, "failed", "the connection is closed"));
    if (this.#gaveUp !== undefined) return Promise.reject(new HypervisorError(this.uri, operation, domain, "unanswered", this.#gaveUp));
    return new Promise((resolve, reject) => {
      const queued: QueuedCall = {
        call,
        operation,
        domain,
        // The worker answers this call with the result of this method (libvirt-worker.ts).
        resolve: resolve as (value: CallResults[keyof CallResults]) => void,
        reject,
        timer: undefined,
        settled: false,
        sentTo: undefined,
      };
      queued.timer = setTimeout(() => {
        const reason = `timed out after ${this.#callTimeoutMs} ms`;
        this.#fail(queued, new HypervisorError(this.uri, operation, domain, "unanswered", reason));
        queued.sentTo?.abandon(reason);
      }, this.#callTimeoutMs);
      this.#queue.push(queued);
      if (!this.#pumping) void this.#pump();
    });
  }

  /** Sends the queued calls one by one; runs while there are any. Every wait in it is bounded. */
  async #pump(): Promise<void> {
    this.#pumping = true;
    try {
      for (let next = this.#queue.shift(); next !== undefined; next = this.#queue.shift()) {
        if (!next.settled) await this.#send(next);
      }
    } finally {
      this.#pumping = false;
      this.#onIdle?.();
    }
  }

  async #send(queued: QueuedCall): Promise<void> {
    const idle = this.#worker;
    // It died while idle: nothing was lost with it, and the call can go to a replacement.
    if (idle?.endedBecause !== undefined) this.#abandon(idle, "while idle", idle.endedBecause);
    if (this.#gaveUp !== undefined) {
      this.#fail(queued, new HypervisorError(this.uri, queued.operation, queued.domain, "unanswered", this.#gaveUp));
      return;
    }
    try {
      this.#worker ??= await this.#connect();
    } catch (error) {
      this.#fail(queued, error);
      return;
    }
    // Its deadline passed while a worker was connecting: it was never sent.
    if (queued.settled) return;
    const worker = this.#worker;
    queued.sentTo = worker;
    const outcome = await worker.request({ type: "call", call: queued.call });
    if (outcome.type === "ended") {
      this.#abandon(worker, `during ${queued.operation}`, outcome.reason);
      this.#fail(queued, new HypervisorError(this.uri, queued.operation, queued.domain, "failed", outcome.reason));
      return;
    }
    this.#abandonedInARow = 0;
    if (outcome.type === "done") this.#succeed(queued, outcome.value);
    else this.#fail(queued, outcome.type === "failed" ? hypervisorError(outcome.error) : outcome.error);
  }

  /** A new worker, connected; throws HypervisorError if it cannot connect within openTimeoutMs. */
  async #connect(): Promise<LibvirtWorker> {
    const worker = new LibvirtWorker();
    const timer = setTimeout(() => worker.abandon(`timed out after ${this.#openTimeoutMs} ms`), this.#openTimeoutMs);
    const outcome = await worker.request({ type: "open", uri: this.uri });
    clearTimeout(timer);
    switch (outcome.type) {
      case "done":
        return worker;
      case "ended":
        this.#abandon(worker, "during connect", outcome.reason);
        throw new HypervisorError(this.uri, "connect", undefined, "failed", outcome.reason);
      case "failed":
        // libvirt answered (no libvirtd there, say): the worker is not stuck, only of no use.
        worker.terminate("could not connect");
        throw hypervisorError(outcome.error);
      case "threw":
        worker.terminate("could not connect");
        throw outcome.error;
    }
  }

  /**
   * Forgets a worker that did not answer in time or died, and gives up once more than
   * maxReplacements were abandoned in a row: the calls still queued fail at once.
   */
  #abandon(worker: LibvirtWorker, when: string, reason: string): void {
    worker.abandon(reason);
    if (this.#worker === worker) this.#worker = undefined;
    this.#abandonedInARow++;
    const fields = { uri: this.uri, when, reason, inARow: this.#abandonedInARow };
    if (this.#abandonedInARow <= this.#maxReplacements) {
      log.warn("libvirt worker abandoned; a new one connects for the next call", fields);
      return;
    }
    this.#gaveUp = `gave up after ${this.#abandonedInARow} libvirt workers in a row were abandoned (the last ${when}: ${reason})`;
    log.error("libvirt worker abandoned, and no more are started: every call fails until the hypervisor is reopened", fields);
    for (const queued of this.#queue.splice(0)) {
      this.#fail(queued, new HypervisorError(this.uri, queued.operation, queued.domain, "unanswered", this.#gaveUp));
    }
  }

  #succeed(queued: QueuedCall, value: CallResults[keyof CallResults]): void {
    if (this.#settle(queued)) queued.resolve(value);
  }

  #fail(queued: QueuedCall, error: unknown): void {
    if (this.#settle(queued)) queued.reject(error instanceof Error ? error : new Error(String(error)));
  }

  /** Whether `queued` was still waiting; a late outcome (after its deadline) is dropped. */
  #settle(queued: QueuedCall): boolean {
    if (queued.settled) return false;
    queued.settled = true;
    clearTimeout(queued.timer);
    return true;
  }

  async #shutdown(): Promise<void> {
    if (this.#pumping) await new Promise<void>((resolve) => (this.#onIdle = resolve));
    const worker = this.#worker;
    this.#worker = undefined;
    if (worker === undefined) return;
    const timer = setTimeout(() => worker.abandon(`timed out after ${this.#callTimeoutMs} ms`), this.#callTimeoutMs);
    const outcome = await worker.request({ type: "close" });
    clearTimeout(timer);
    worker.terminate("closed");
    switch (outcome.type) {
      case "done":
        return;
      case "ended":
        throw new HypervisorError(this.uri, "close", undefined, "failed", outcome.reason);
      case "failed":
        throw hypervisorError(outcome.error);
      case "threw":
        throw outcome.error;
    }
  }
}

function hypervisorError({ uri, operation, domain, kind, detail }: HypervisorErrorFields): HypervisorError {
  return new HypervisorError(uri, operation, domain, kind, detail);
}
