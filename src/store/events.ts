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

/**
 * `event` as a write under a fresh sequence, to go in another write's transaction (Kv's also-writes):
 * recorded exactly when that write is. A put, not a create: the random suffix makes a taken
 * sequence as unlikely as appendEvent's retries assume.
 */
export function eventWrite(keys: Keys, event: EventRecord, random: () => number = Math.random): { readonly key: string; readonly value: string } {
  eventRecord(JSON.parse(JSON.stringify(event)), "the event to append");
  return { key: keys.event(eventSequence(Date.parse(event.time), random)), value: JSON.stringify(event) };
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
  /** The revision the page was read at. */
  readonly revision: bigint;
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
    revision: list.revision,
  };
}

/** The time part of a sequence (ms since the epoch); undefined for a key fitha did not write. */
function sequenceTimeMs(sequence: string): number | undefined {
  const match = /^([0-9]{15})-/.exec(sequence);
  return match === null ? undefined : Number(match[1]);
}

export interface RecentEventsOptions {
  /** At most this many events: the newest that `match` accepts. */
  readonly limit: number;
  /** The time (ms since the epoch) the look back starts from: now. */
  readonly nowMs: number;
  readonly match?: (event: EventRecord) => boolean;
  /** Events per read (tests make it small). */
  readonly pageSize?: number;
}

export interface RecentEvents {
  /** Oldest first. */
  readonly events: EventList["events"];
  readonly bad: readonly DecodeError[];
  /** The revision of the first read: an event written later has a higher one (a watch from revision + 1 misses none). */
  readonly revision: bigint;
}

/** The first look back covers this much; each further one twice the one before. */
const firstLookBackMs = 60 * 60_000;

/**
 * The newest `limit` events that `match` accepts, oldest first, without reading the whole log:
 * etcd ranges go oldest first only, so it reads windows of time backwards from `nowMs` (an hour,
 * then two more, then four more, ...), each oldest first in pages, until it has `limit` events
 * or has covered the oldest event. Every event is read once (plus at most one page that runs
 * into the next window), and the windows double, so the reads are bounded by the log's size
 * (trimEvents keeps it bounded) and its time span, whatever `match` accepts.
 */
export async function listRecentEvents(kv: Kv, keys: Keys, options: RecentEventsOptions): Promise<RecentEvents> {
  const { limit, nowMs, match = () => true, pageSize = 500 } = options;
  if (!(Number.isSafeInteger(limit) && limit > 0)) throw new RangeError(`recent events limit ${limit}`);
  const oldest = await listEvents(kv, keys, { limit: 1 });
  if (oldest.lastSequence === undefined) return { events: [], bad: [], revision: oldest.revision };
  // A key fitha did not write has no time: look back to the epoch then (still bounded by the doubling).
  const oldestMs = sequenceTimeMs(oldest.lastSequence) ?? 0;
  /** Newest window first; each oldest first. */
  const windows: EventList["events"][] = [];
  const bad: DecodeError[] = [];
  let found = 0;
  /** Where the previous (newer) window began: this one ends just before it. None for the first. */
  let end: string | undefined;
  for (let lookBackMs = firstLookBackMs; found < limit; lookBackMs *= 2) {
    const startMs = Math.max(0, nowMs - lookBackMs);
    const windowEnd = end;
    const inWindow = (sequence: string) => windowEnd === undefined || sequence < windowEnd;
    const window: EventList["events"][number][] = [];
    let since = sequenceBefore(startMs);
    for (;;) {
      const page = await listEvents(kv, keys, { limit: pageSize, since });
      window.push(...page.events.filter((e) => inWindow(e.sequence) && match(e.record)));
      bad.push(...page.bad.filter((error) => inWindow(error.source.slice(keys.eventsPrefix.length))));
      if (!page.more || page.lastSequence === undefined || !inWindow(page.lastSequence)) break;
      since = page.lastSequence;
    }
    windows.push(window);
    found += window.length;
    if (startMs <= oldestMs) break;
    end = sequenceBefore(startMs);
  }
  return { events: windows.reverse().flat().slice(-limit), bad, revision: oldest.revision };
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
