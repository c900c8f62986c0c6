/**
 * Reading typed records: every value is decoded with its codec (records.ts), and a value that
 * does not decode is returned as a DecodeError next to the good ones, never thrown. The caller
 * skips it and reports it (events.ts: badValueEvent), so one bad write by anyone cannot stop a
 * daemon that reads the prefix.
 */
import { decodeJson, DecodeError, type Codec } from "./codec.ts";
import type { Kv, KvEntry, RangeOptions } from "./kv.ts";

export type Decoded<T> =
  | { readonly record: T; readonly key: string; readonly modRevision: bigint }
  | { readonly bad: DecodeError };

/** Decodes one entry (a read's or a watch's), its key named in the DecodeError. */
export function decodeEntry<T>(entry: KvEntry, codec: Codec<T>): Decoded<T> {
  try {
    return { record: decodeJson(codec, entry.value, entry.key), key: entry.key, modRevision: entry.modRevision };
  } catch (error) {
    if (error instanceof DecodeError) return { bad: error };
    throw error;
  }
}

/** The record under `key`, or why its value is bad; undefined if there is no such key. */
export async function readRecord<T>(kv: Kv, key: string, codec: Codec<T>): Promise<Decoded<T> | undefined> {
  const entry = await kv.get(key);
  return entry === undefined ? undefined : decodeEntry(entry, codec);
}

export interface RecordList<T> {
  /** In key order. */
  readonly records: readonly { readonly key: string; readonly record: T; readonly modRevision: bigint }[];
  readonly bad: readonly DecodeError[];
  /** The revision the list was read at. */
  readonly revision: bigint;
  /** True when `limit` left keys out: the next page starts after the last key read. */
  readonly more: boolean;
  /** The last key read (good or bad), for the next page's startAfter. */
  readonly lastKey: string | undefined;
}

/** The records under `prefix`, the bad values apart. */
export async function listRecords<T>(kv: Kv, prefix: string, codec: Codec<T>, options: RangeOptions = {}): Promise<RecordList<T>> {
  const range = await kv.getPrefix(prefix, options);
  const records: { key: string; record: T; modRevision: bigint }[] = [];
  const bad: DecodeError[] = [];
  for (const entry of range.entries) {
    const decoded = decodeEntry(entry, codec);
    if ("bad" in decoded) bad.push(decoded.bad);
    else records.push(decoded);
  }
  return { records, bad, revision: range.revision, more: range.more, lastKey: range.entries.at(-1)?.key };
}
