/**
 * `fitha events`: the event log (P/events/, src/store/events.ts), newest last; `--follow` goes on
 * printing events as they are appended until SIGINT or SIGTERM.
 */
import { defineCommand } from "citty";
import { monotonicClock } from "../../core/clock.ts";
import { ExitCode, FithaError, UsageError } from "../../errors.ts";
import { logger } from "../../log.ts";
import type { DecodeError } from "../../store/codec.ts";
import { defaultEventRetention, listRecentEvents } from "../../store/events.ts";
import { eventKinds, eventRecord, type EventKind, type EventRecord } from "../../store/records.ts";
import { decodeEntry } from "../../store/typed.ts";
import { PrefixWatcher } from "../../store/watcher.ts";
import { configArg, jsonArg, logArgs } from "../args.ts";
import { stopSignal } from "../daemon.ts";
import { printJson, printLines } from "../output.ts";
import { eventToJson, formatEvent, type EventJson } from "./common/event-output.ts";
import { hostArgument } from "./common/host-argument.ts";
import { withManagement, type Management } from "./common/management.ts";

const log = logger("events");

const defaultLimit = 20;

/**
 * JSON shape (`--json`), oldest first:
 * { "events": [ { "sequence", "time", "host": string|null, "kind", "reason", "by" } ],
 *   "bad_values": [ "/fitha/events/...: kind: expected one of ..." ] }
 * With `--follow`: one event object per line instead (the last N first, then each new one).
 */
export const eventsCommand = defineCommand({
  meta: { description: "Show the event log, newest last; --follow goes on printing new events" },
  args: {
    limit: { type: "string", valueHint: "N", description: `The last N events (default ${defaultLimit}, at most ${defaultEventRetention})` },
    host: { type: "string", valueHint: "NAME", description: "Only events about this host" },
    // A string, not an enum: the 16 kinds would swamp --help; checked below.
    kind: { type: "string", valueHint: "KIND", description: "Only events of this kind (plane-down, maintenance-on, ...)" },
    follow: { type: "boolean", description: "Go on printing events as they are appended, until SIGINT or SIGTERM" },
    ...configArg,
    ...jsonArg,
    ...logArgs,
  },
  async run({ args }) {
    const limit = limitArgument(args.limit);
    const host = args.host === undefined ? undefined : hostArgument(args.host, "events");
    const kind = args.kind === undefined ? undefined : kindArgument(args.kind);
    const match = (event: EventRecord) => (host === undefined || event.host === host) && (kind === undefined || event.kind === kind);
    return withManagement(args, async (management) => {
      const recent = await listRecentEvents(management.kv, management.keys, { limit, nowMs: Date.now(), match });
      reportBad(recent.bad);
      const events = recent.events.map(eventToJson);
      if (!args.follow) {
        if (args.json) printJson({ events, bad_values: recent.bad.map((bad) => bad.message) });
        else printLines(...events.map(formatEvent));
        return ExitCode.ok;
      }
      const print = (event: EventJson) => printLines(args.json ? JSON.stringify(event) : formatEvent(event));
      events.forEach(print);
      return follow(management, recent.revision, new Set(events.map((e) => e.sequence)), match, print);
    });
  },
});

function limitArgument(text: string | undefined): number {
  if (text === undefined) return defaultLimit;
  const limit = /^[0-9]+$/.test(text) ? Number(text) : Number.NaN;
  if (!(limit >= 1 && limit <= defaultEventRetention)) throw new UsageError(`events: --limit must be a whole number from 1 to ${defaultEventRetention}, not "${text}"`);
  return limit;
}

function kindArgument(text: string): EventKind {
  const kind = eventKinds.find((k) => k === text);
  if (kind === undefined) throw new UsageError(`events: --kind must be one of ${eventKinds.join(", ")}, not "${text}"`);
  return kind;
}

function reportBad(bad: readonly DecodeError[]): void {
  for (const error of bad) log.warn(`skipped a bad value: ${error.message}`);
}

/**
 * Prints every event appended after `afterRevision` that `match` accepts, until SIGINT or SIGTERM
 * (exit 0) or until the watch gives up (an error: exit 1). The listing and the watch may overlap
 * (an event appended while the listing paged): `printed` holds what the listing printed.
 */
async function follow(management: Management, afterRevision: bigint, printed: ReadonlySet<string>, match: (event: EventRecord) => boolean, print: (event: EventJson) => void): Promise<ExitCode> {
  const { kv, keys } = management;
  const failed = Promise.withResolvers<Error>();
  const watcher = new PrefixWatcher(
    kv,
    keys.eventsPrefix,
    {
      // Only after a compaction past the watch's revision (a long disconnect): what it held was
      // printed or missed; the watch goes on from here.
      onSnapshot: () => log.warn("events may have been missed: etcd compacted its history while the watch was disconnected"),
      onRevision: (_revision, changes) => {
        for (const change of changes) {
          if (change.type !== "put") continue;
          const sequence = change.key.slice(keys.eventsPrefix.length);
          if (printed.has(sequence)) continue;
          const decoded = decodeEntry(change, eventRecord);
          if ("bad" in decoded) reportBad([decoded.bad]);
          else if (match(decoded.record)) print(eventToJson({ sequence, record: decoded.record }));
        }
      },
      onFailed: (error) => failed.resolve(error),
    },
    monotonicClock,
    { afterRevision },
  );
  const ended = await Promise.race([stopSignal().then(() => "stopped" as const), failed.promise]);
  await watcher.stop();
  if (ended === "stopped") return ExitCode.ok;
  throw new FithaError(`events --follow: the watch of ${keys.eventsPrefix} stopped: ${ended.message}`);
}
