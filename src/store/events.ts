/**
 * The event log under P/events/: what happened, for operators (`fitha events`) and post-mortems.
 * Each event's key ends in a sequence made of its time (zero-padded milliseconds since the
 * epoch, so that key order is time order) and a random suffix (so that two writers in the same
 * millisecond never collide, with createIfAbsent to make sure). Events of one millisecond are
 * in no particular order; events of different hosts are ordered by their wall clocks.
 *
 * Retention: trimEvents keeps the newest `keep` events (10,000 by default) and deletes the
 * oldest in bounded batches; the active controller calls it from time to time.
 */
import { FithaError } from "../errors.ts";
import type { DecodeError } from "./codec.ts";
import type { Keys } from "./keys.ts";
import type { Kv } from "./kv.ts";
import { eventRecord, type EventRecord } from "./records.ts";
import { listRecords } from "./typed.ts";

/** Digits of the millisecond part: enough for every time Date can hold, so the order never wraps. */
const timeDigits = 15;
const suffixLength = 8;
const suffixAlphabet = "0123456789abcdefghijklmnopqrstuvwxyz";
/** A collision needs the same millisecond and the same 8 random characters: retrying twice is plenty. */
const maxAppendAttempts = 3;

export const defaultEventRetention = 10_000;

/** A sequence for an event at `timeMs` (ms since the epoch). */
export function eventSequence(timeMs: number, random: () => number = Math.random): string {
  let suffix = "";
  for (let i = 0; i < suffixLength; i++) suffix += suffixAlphabet[Math.floor(random() * suffixAlphabet.length)];
  return `${timePart(timeMs)}-${suffix}`;
}

/** Sorts before every sequence of an event at `timeMs` or later, and after every earlier one. */
export function sequenceBefore(timeMs: number): string {
  return `${timePart(timeMs)}-`;
}

function timePart(timeMs: number): string {
  if (!(Number.isSafeInteger(timeMs) && timeMs >= 0)) throw new RangeError(`event time ${timeMs} ms`);
  return String(timeMs).padStart(timeDigits, "0");
}

/** Appends `event` (checked against its codec first: a bad record is a bug here, not a surprise for readers); returns its sequence. */
export async function appendEvent(kv: Kv, keys: Keys, event: EventRecord, random: () => number = Math.random): Promise<string> {
  const timeMs = Date.parse(event.time);
  eventRecord(JSON.parse(JSON.stringify(event)), "the event to append");
  const value = JSON.stringify(event);
  for (let attempt = 1; attempt <= maxAppendAttempts; attempt++) {
    const sequence = eventSequence(timeMs, random);
    if (await kv.createIfAbsent(keys.event(sequence), value)) return sequence;
  }
  throw new FithaError(`${kv.name}: cannot append an event at ${event.time}: ${maxAppendAttempts} sequences in a row were taken`);
}

export interface EventList {
  /** Oldest first. */
  readonly events: readonly { readonly sequence: string; readonly record: EventRecord }[];
  /** Values under P/events/ that are no EventRecord (skipped; the caller may report them). */
  readonly bad: readonly DecodeError[];
  /** True when `limit` left newer events out: ask again with since = the last sequence read. */
  readonly more: boolean;
  /** The last sequence read (good or bad): the `since` of the next page. */
  readonly lastSequence: string | undefined;
}

export interface ListEventsOptions {
  readonly limit: number;
  /** Only events after this sequence (exclusive); sequenceBefore(ms) gives "from this time on". */
  readonly since?: string;
}

/** Events oldest first. */
export async function listEvents(kv: Kv, keys: Keys, options: ListEventsOptions): Promise<EventList> {
  if (!(Number.isSafeInteger(options.limit) && options.limit > 0)) throw new RangeError(`event list limit ${options.limit}`);
  const list = await listRecords(kv, keys.eventsPrefix, eventRecord, { limit: options.limit, ...(options.since === undefined ? {} : { startAfter: keys.event(options.since) }) });
  const sequenceOf = (key: string) => key.slice(keys.eventsPrefix.length);
  return {
    events: list.records.map(({ key, record }) => ({ sequence: sequenceOf(key), record })),
    bad: list.bad,
    more: list.more,
    lastSequence: list.lastKey === undefined ? undefined : sequenceOf(list.lastKey),
  };
}

export interface RetentionOptions {
  /** Events kept: the newest. */
  readonly keep?: number;
  /** Events deleted per request (one range delete). */
  readonly batchSize?: number;
  /** Requests per call at most; what is left over goes on the next call. */
  readonly maxBatches?: number;
}

/** Deletes the oldest events beyond `keep`, at most batchSize × maxBatches of them; returns how many. */
export async function trimEvents(kv: Kv, keys: Keys, options: RetentionOptions = {}): Promise<number> {
  const { keep = defaultEventRetention, batchSize = 1_000, maxBatches = 10 } = options;
  let deleted = 0;
  for (let batch = 0; batch < maxBatches; batch++) {
    const oldest = await kv.getPrefix(keys.eventsPrefix, { limit: batchSize });
    const doomed = oldest.entries.slice(0, Math.max(0, oldest.count - keep));
    const last = doomed.at(-1);
    if (last === undefined) break;
    // One range delete up to and including the last doomed key (key + NUL is the next key).
    deleted += await kv.deleteRange(doomed[0]!.key, `${last.key}\0`);
  }
  return deleted;
}

/** The event that reports a value that did not decode (typed.ts), to append with appendEvent. */
export function badValueEvent(error: DecodeError, by: string, time: Date): EventRecord {
  // EventRecord.reason holds at most 4096 characters.
  const reason = `bad value under ${error.source}: ${error.problems.join("; ")}`;
  return { time: time.toISOString(), kind: "bad-value", host: null, reason: reason.length > 4096 ? `${reason.slice(0, 4093)}...` : reason, by };
}
