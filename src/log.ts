/**
 * Logging for daemons and commands, on consola. Everything goes to stderr so that stdout carries
 * only a command's result (its `--json` document, say). Two formats: `human` (consola's reporter,
 * coloured on a terminal) and `json` (one object per line with time, level, tag, msg and the
 * structured fields, for journald and log shippers).
 */
import { createConsola, type ConsolaInstance, type ConsolaReporter, type LogObject } from "consola";
import type { LogFormat, LogLevel } from "./config/fitha-config.ts";

/** Structured context of a log line; in the json format its keys become top-level fields. */
export type LogFields = Readonly<Record<string, unknown>>;

export interface Logger {
  error(message: string, fields?: LogFields): void;
  warn(message: string, fields?: LogFields): void;
  info(message: string, fields?: LogFields): void;
  debug(message: string, fields?: LogFields): void;
  trace(message: string, fields?: LogFields): void;
}

/** consola's numeric levels for our names. */
const consolaLevel: Record<LogLevel, number> = { error: 0, warn: 1, info: 3, debug: 4, trace: 5 };

export interface LogSettings {
  level: LogLevel;
  format: LogFormat;
  /** Where lines go; stderr unless a test captures them. */
  stream?: NodeJS.WritableStream;
}

let root: ConsolaInstance = createRoot({ level: "info", format: "human" });
/** Tagged children are created lazily per configuration, because consola copies options into them. */
const tagged = new Map<string, ConsolaInstance>();

/** Applies the settings to every logger, including those handed out before. */
export function configureLogging(settings: LogSettings): void {
  root = createRoot(settings);
  tagged.clear();
}

/** A logger whose lines carry `tag` (the component: "lockd", "config", ...). */
export function logger(tag: string): Logger {
  const instance = (): ConsolaInstance => {
    let child = tagged.get(tag);
    if (child === undefined) {
      child = root.withTag(tag);
      tagged.set(tag, child);
    }
    return child;
  };
  const at =
    (level: LogLevel) =>
    (message: string, fields?: LogFields): void => {
      if (fields === undefined) instance()[level](message);
      else instance()[level](message, fields);
    };
  return { error: at("error"), warn: at("warn"), info: at("info"), debug: at("debug"), trace: at("trace") };
}

function createRoot(settings: LogSettings): ConsolaInstance {
  const stream = (settings.stream ?? process.stderr) as NodeJS.WriteStream;
  return createConsola({
    level: consolaLevel[settings.level],
    stdout: stream,
    stderr: stream,
    // Every line keeps its own timestamp: an operator reading journald after an incident needs
    // each repetition, not "(repeated 5 times)".
    throttle: 0,
    ...(settings.format === "json" ? { reporters: [jsonReporter(stream)] } : {}),
  });
}

const levelName = (level: number): LogLevel =>
  (Object.entries(consolaLevel).find(([, n]) => n === level)?.[0] as LogLevel | undefined) ?? "info";

function jsonReporter(stream: NodeJS.WritableStream): ConsolaReporter {
  return {
    log(entry: LogObject) {
      const [message, fields] = entry.args as [unknown, LogFields | undefined];
      const line: Record<string, unknown> = {
        time: entry.date.toISOString(),
        level: levelName(entry.level),
        ...(entry.tag ? { tag: entry.tag } : {}),
        msg: String(message),
      };
      // A field named like a fixed key must not hide what the line is.
      for (const [key, value] of Object.entries(fields ?? {})) if (!(key in line)) line[key] = value;
      stream.write(`${JSON.stringify(line, jsonSafe)}\n`);
    },
  };
}

/** Errors and bigints have no JSON form of their own; a log line must never fail to print. */
function jsonSafe(_key: string, value: unknown): unknown {
  if (value instanceof Error) return { name: value.name, message: value.message };
  if (typeof value === "bigint") return value.toString();
  return value;
}
