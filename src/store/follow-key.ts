/**
 * Following one key's decoded value (a setting, the strategy, a maintenance switch): `onValue`
 * gets the value at start and after every change, undefined once the key is absent or deleted.
 * A value that does not decode is logged and skipped: what was in force stays.
 */
import type { Clock } from "../core/clock.ts";
import { errorMessage } from "../errors.ts";
import { logger } from "../log.ts";
import type { Codec } from "./codec.ts";
import type { Kv, KvEntry } from "./kv.ts";
import { decodeEntry } from "./typed.ts";
import { PrefixWatcher } from "./watcher.ts";

const log = logger("store");

export function followKey<T>(kv: Kv, key: string, codec: Codec<T>, clock: Clock, onValue: (value: T | undefined) => void): PrefixWatcher {
  const apply = (entry: KvEntry | undefined) => {
    if (entry === undefined) return onValue(undefined);
    const decoded = decodeEntry(entry, codec);
    if ("record" in decoded) onValue(decoded.record);
    else log.error("bad value ignored; what was in force stays", { key, reason: decoded.bad.message });
  };
  // The key as a prefix also matches longer keys: only the key itself counts.
  return new PrefixWatcher(
    kv,
    key,
    {
      onSnapshot: (entries) => apply(entries.find((e) => e.key === key)),
      onRevision: (_revision, changes) => {
        for (const change of changes) if (change.key === key) apply(change.type === "put" ? change : undefined);
      },
      onFailed: (error) => log.error("stopped following a key; its last value stays in force", { key, error: errorMessage(error) }),
    },
    clock,
  );
}
