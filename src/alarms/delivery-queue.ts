/**
 * Delivers alarm notices through a transport (the webhook) one at a time, in order, with retries:
 * a receiver that is down for a while gets every alarm once it is back, and a flood of alarms
 * cannot grow memory without bound.
 *
 * Bounds: at most `queueLimit` notices wait; when the queue is full new notices are dropped and
 * counted (the oldest are kept: in a cascade the first alarm usually names the cause), and once
 * there is room again an `alarms-dropped` notice says how many were lost. Each notice is tried at
 * most `maxAttempts` times, the waits doubling from `firstRetryMs` up to `maxRetryMs`; then it is
 * given up (logged) and the next one goes. Every attempt is bounded by the transport's timeout.
 */
import type { Clock } from "../core/clock.ts";
import { errorMessage } from "../errors.ts";
import { logger } from "../log.ts";
import type { AlarmNotice } from "./catalogue.ts";

const log = logger("alarms");

export interface AlarmTransport {
  /** Where the alarms go, for logs (no secrets: no user info, no query). */
  readonly name: string;
  /** Resolves once the receiver accepted the notice; rejects (bounded by its own timeout) otherwise. */
  send(notice: AlarmNotice): Promise<void>;
}

export interface DeliveryQueueOptions {
  readonly transport: AlarmTransport;
  readonly clock: Clock;
  readonly queueLimit: number;
  readonly maxAttempts: number;
  readonly firstRetryMs: number;
  readonly maxRetryMs: number;
  /** A notice is done with: delivered, or given up after maxAttempts. Not called for dropped ones. */
  readonly onSettled?: (notice: AlarmNotice, outcome: "delivered" | "given-up") => void;
  /** A notice was dropped: the queue was full. */
  readonly onDropped?: (notice: AlarmNotice) => void;
}

/** About 2 minutes of trying (1 + 2 + 4 + ... + 60 s) before a notice is given up. */
export const defaultDeliveryPolicy = { maxAttempts: 8, firstRetryMs: 1_000, maxRetryMs: 60_000 } as const;

export class DeliveryQueue {
  readonly #queue: AlarmNotice[] = [];
  #dropped = 0;
  #stopping = false;
  readonly #stopped = Promise.withResolvers<void>();
  /** Wakes the loop idling on an empty queue (set only while it idles). */
  #wake: (() => void) | undefined;
  readonly done: Promise<void>;
  /** Totals since this queue started (one term), for its tests; metrics count through onSettled/onDropped, across terms. */
  readonly counts = { delivered: 0, givenUp: 0, dropped: 0, failedAttempts: 0 };

  constructor(readonly options: DeliveryQueueOptions) {
    if (!(Number.isSafeInteger(options.queueLimit) && options.queueLimit >= 1)) throw new RangeError(`alarm queue limit ${options.queueLimit}`);
    if (!(Number.isSafeInteger(options.maxAttempts) && options.maxAttempts >= 1)) throw new RangeError(`alarm delivery attempts ${options.maxAttempts}`);
    if (!(options.firstRetryMs > 0 && options.maxRetryMs >= options.firstRetryMs)) throw new RangeError(`alarm retry waits ${options.firstRetryMs}..${options.maxRetryMs} ms`);
    this.done = this.#run();
  }

  /** Notices waiting, not counting the one being sent. */
  get depth(): number {
    return this.#queue.length;
  }

  enqueue(notice: AlarmNotice): void {
    if (this.#stopping) return;
    if (this.#queue.length >= this.options.queueLimit) {
      if (this.#dropped === 0) log.error("alarm queue full: dropping new alarms until there is room", { limit: this.options.queueLimit, to: this.options.transport.name });
      this.#dropped++;
      this.counts.dropped++;
      this.options.onDropped?.(notice);
      return;
    }
    this.#queue.push(notice);
    this.#wake?.();
  }

  /** Stops at once: what is queued is not sent (a new leader sends it again from the log). */
  async stop(): Promise<void> {
    this.#stopping = true;
    this.#stopped.resolve();
    this.#wake?.();
    await this.done;
  }

  async #run(): Promise<void> {
    while (!this.#stopping) {
      const notice = this.#queue.shift();
      if (notice === undefined) {
        await new Promise<void>((wake) => (this.#wake = wake));
        this.#wake = undefined;
        continue;
      }
      await this.#deliver(notice);
      if (this.#dropped > 0 && this.#queue.length < this.options.queueLimit) this.#queue.push(this.#droppedNotice());
    }
  }

  async #deliver(notice: AlarmNotice): Promise<void> {
    const { transport, clock, maxAttempts, firstRetryMs, maxRetryMs } = this.options;
    let waitMs = firstRetryMs;
    for (let attempt = 1; attempt <= maxAttempts && !this.#stopping; attempt++) {
      try {
        await transport.send(notice);
        this.counts.delivered++;
        log.info("alarm delivered", { alarm: notice.alarm, status: notice.status, host: notice.host, to: transport.name, attempt });
        this.options.onSettled?.(notice, "delivered");
        return;
      } catch (error) {
        this.counts.failedAttempts++;
        const last = attempt === maxAttempts;
        log.warn(last ? "alarm not delivered: giving up" : "alarm not delivered: will retry", { alarm: notice.alarm, to: transport.name, attempt, of: maxAttempts, error: errorMessage(error), ...(last ? {} : { retry_in_ms: waitMs }) });
        if (last) break;
        await Promise.race([clock.sleep(waitMs), this.#stopped.promise]);
        waitMs = Math.min(maxRetryMs, waitMs * 2);
      }
    }
    if (this.#stopping) return;
    this.counts.givenUp++;
    log.error("alarm given up", { alarm: notice.alarm, status: notice.status, host: notice.host, reason: notice.reason, event: notice.event?.sequence ?? null });
    this.options.onSettled?.(notice, "given-up");
  }

  /** Says how many alarms the full queue cost. */
  #droppedNotice(): AlarmNotice {
    const count = this.#dropped;
    this.#dropped = 0;
    return {
      alarm: "alarms-dropped",
      status: "firing",
      severity: "warning",
      host: null,
      reason: `${count} alarm(s) were dropped: the queue of alarms for ${this.options.transport.name} was full (limit ${this.options.queueLimit})`,
      action: "Read the event log for what they were (`fitha events --limit 1000`); check why the receiver was slow or down.",
      event: null,
    };
  }
}
