/**
 * The leader's alarm relay: follows the event log (P/events/) and sends the alarm of every event
 * the catalogue names (catalogue.ts) through the delivery queue (the webhook). Only the leading
 * controller relays, so that a receiver gets each alarm once from a cluster, not once per
 * controller; it runs for one term and is dropped with it.
 *
 * Across failovers: after each alarm delivered (or given up) the relay records that event's
 * sequence at P/alarms/cursor; a new leader starts from there, so alarms raised while no
 * controller led (or queued in a leader that died) are still sent, and at least once. With no
 * cursor at all (a new cluster) it starts from now rather than flood a receiver with history.
 *
 * Events are sent in the order of the log's revisions (the order they were written in), one at a
 * time. The catch-up from the cursor reads at most the log's retention (10,000 events).
 */
import { errorMessage } from "../errors.ts";
import { logger } from "../log.ts";
import { defaultEventRetention, listEvents, sequenceBefore } from "../store/events.ts";
import { alarmCursorRecord, eventRecord, type EventRecord } from "../store/records.ts";
import { decodeEntry, readRecord } from "../store/typed.ts";
import { PrefixWatcher } from "../store/watcher.ts";
import type { LeaderContext } from "../controller/leader-context.ts";
import { alarmOf } from "./catalogue.ts";
import { DeliveryQueue, defaultDeliveryPolicy, type AlarmTransport } from "./delivery-queue.ts";

const log = logger("alarms");

/** Catch-up reads in pages of this many events (the whole retention in 20 reads). */
const catchUpPageSize = 500;
const maxCatchUpPages = Math.ceil(defaultEventRetention / catchUpPageSize);
/** Waits between attempts to read where to start, while etcd does not answer. */
const startRetryMs = { first: 500, max: 10_000 } as const;

/** The leader's context; the cursor is left to the next leader once `leading()` is false. */
export interface AlarmRelayEnvironment extends LeaderContext {
  readonly transport: AlarmTransport;
  readonly queueLimit: number;
  /** Counts each alarm's fate (the controller's metrics); none: not counted. */
  readonly onOutcome?: (outcome: "delivered" | "given-up" | "dropped") => void;
}

export class AlarmRelay {
  readonly #queue: DeliveryQueue;
  /** Sequences already turned into alarms this term, oldest first, at most the log's retention. */
  readonly #handled = new Set<string>();
  /** Where this term started: older events are not alarmed again (a snapshot after a compaction holds them all). */
  #startAfter = "";
  #watcher: PrefixWatcher | undefined;
  #stopping = false;
  readonly #stopped = Promise.withResolvers<void>();
  #cursorWrite: Promise<void> = Promise.resolve();
  /** "Now" for a cluster without a cursor: taken at once, so that the term's own first events (its election) are after it. */
  readonly #createdAtMs: number;
  readonly started: Promise<void>;

  constructor(readonly env: AlarmRelayEnvironment) {
    this.#createdAtMs = env.now().getTime();
    this.#queue = new DeliveryQueue({
      transport: env.transport,
      clock: env.clock,
      queueLimit: env.queueLimit,
      ...defaultDeliveryPolicy,
      onSettled: (notice, outcome) => {
        env.onOutcome?.(outcome);
        if (notice.event !== null) this.#advanceCursor(notice.event.sequence);
      },
      onDropped: () => env.onOutcome?.("dropped"),
    });
    this.started = this.#start();
  }

  /** The delivery queue's depth and totals (for metrics and tests). */
  get queue(): DeliveryQueue {
    return this.#queue;
  }

  async stop(): Promise<void> {
    this.#stopping = true;
    this.#stopped.resolve();
    await this.started;
    await this.#watcher?.stop();
    await this.#queue.stop();
    await this.#cursorWrite;
  }

  /** Reads the cursor, catches up from it, then watches; retried (bounded waits) until it works or the term ends. */
  async #start(): Promise<void> {
    let waitMs: number = startRetryMs.first;
    while (!this.#stopping) {
      try {
        const afterRevision = await this.#catchUp();
        if (this.#stopping) return;
        this.#watch(afterRevision);
        return;
      } catch (error) {
        log.warn("cannot read the event log yet: alarms wait", { error: errorMessage(error), retry_in_ms: waitMs });
        await Promise.race([this.env.clock.sleep(waitMs), this.#stopped.promise]);
        waitMs = Math.min(startRetryMs.max, waitMs * 2);
      }
    }
  }

  /** Alarms the events after the cursor (or none, without one); returns the revision the log was read at. */
  async #catchUp(): Promise<bigint> {
    const { kv, keys } = this.env;
    const cursor = await readRecord(kv, keys.alarmCursor, alarmCursorRecord);
    if (cursor !== undefined && "bad" in cursor) log.error("bad alarm cursor ignored: alarms start from now", { reason: cursor.bad.message });
    const fromCursor = cursor !== undefined && "record" in cursor;
    this.#startAfter = fromCursor ? cursor.record.sequence : sequenceBefore(this.#createdAtMs);
    let since = this.#startAfter;
    let revision: bigint | undefined;
    for (let page = 1; page <= maxCatchUpPages; page++) {
      const list = await listEvents(kv, keys, { limit: catchUpPageSize, since });
      revision ??= list.revision;
      for (const { sequence, record } of list.events) this.#handle(sequence, record);
      if (!list.more || list.lastSequence === undefined) break;
      since = list.lastSequence;
      if (page === maxCatchUpPages) log.warn("alarm catch-up stopped at the log's retention: older events are not alarmed", { pages: page });
    }
    log.info("alarm relay started", { from: fromCursor ? `after event ${this.#startAfter}` : "now (no cursor yet)", to: this.env.transport.name, queued: this.#queue.depth });
    // Pages after the first were read at later revisions; events between are seen twice at most,
    // and #handled keeps them from being alarmed twice.
    return revision ?? 0n;
  }

  #watch(afterRevision: bigint): void {
    const { kv, keys, clock } = this.env;
    const sequenceOf = (key: string) => key.slice(keys.eventsPrefix.length);
    this.#watcher = new PrefixWatcher(
      kv,
      keys.eventsPrefix,
      {
        // Only after a compaction past the watch's revision: everything in the log, of which the
        // events of this term not yet handled are new.
        onSnapshot: (entries) => {
          for (const entry of entries) {
            const sequence = sequenceOf(entry.key);
            if (sequence <= this.#startAfter) continue;
            const decoded = decodeEntry(entry, eventRecord);
            if ("record" in decoded) this.#handle(sequence, decoded.record);
          }
        },
        onRevision: (_revision, changes) => {
          for (const change of changes) {
            if (change.type !== "put") continue;
            const decoded = decodeEntry(change, eventRecord);
            if ("record" in decoded) this.#handle(sequenceOf(change.key), decoded.record);
          }
        },
        onFailed: (error) => log.error("the event log watch stopped: no more alarms this term", { error: error.message }),
      },
      clock,
      { afterRevision },
    );
  }

  #handle(sequence: string, event: EventRecord): void {
    if (this.#handled.has(sequence)) return;
    this.#handled.add(sequence);
    if (this.#handled.size > defaultEventRetention) this.#handled.delete(this.#handled.values().next().value!);
    const notice = alarmOf(sequence, event);
    if (notice !== undefined) this.#queue.enqueue(notice);
  }

  /** Serialised, so that a slow write never lands after a newer one. */
  #advanceCursor(sequence: string): void {
    this.#cursorWrite = this.#cursorWrite.then(async () => {
      if (!this.env.leading()) return;
      const record = { sequence, at: this.env.now().toISOString(), by: `controller@${this.env.name}` };
      await this.env.kv.put(this.env.keys.alarmCursor, JSON.stringify(record)).catch((error: unknown) =>
        log.warn("could not record the alarm cursor: a new leader may send some alarms again", { error: errorMessage(error) }),
      );
    });
  }
}
