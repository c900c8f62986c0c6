/** One event as `fitha events` and `fitha status` print it: a JSON object or one line of text. */
import type { EventRecord } from "../../../store/records.ts";

/**
 * JSON shape of one event (stable):
 * { "sequence": "001769860800000-k3j9x0aa", "time": "2026-01-31T12:00:00.000Z",
 *   "host": string|null, "kind": "plane-down"|..., "reason": string, "by": "agent@compute-1"|... }
 */
export interface EventJson {
  sequence: string;
  time: string;
  host: string | null;
  kind: EventRecord["kind"];
  reason: string;
  by: string;
}

export function eventToJson(event: { readonly sequence: string; readonly record: EventRecord }): EventJson {
  const { time, host, kind, reason, by } = event.record;
  return { sequence: event.sequence, time, host, kind, reason, by };
}

/**
 * "TIME  HOST  KIND  REASON  (by BY)", with fixed minimum widths rather than a table's: `--follow`
 * prints lines one by one and they must line up with those listed before.
 */
export function formatEvent(event: EventJson): string {
  // The longest kind ("self-defense-entered") is 20 characters; most host names fit in 16.
  return `${event.time}  ${(event.host ?? "-").padEnd(16)}  ${event.kind.padEnd(20)}  ${event.reason}  (by ${event.by})`;
}
