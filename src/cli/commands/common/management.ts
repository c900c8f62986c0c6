/**
 * What the operator commands (strategy, maintenance, config get|set, events, status) share: a
 * connection to the management cluster, which holds all of fitha's state; reading a single-key
 * setting with its default; and saying who did something, in records and events.
 */
import { readFileSync } from "node:fs";
import { hostname } from "node:os";
import type { FithaConfig } from "../../../config/fitha-config.ts";
import { FithaError } from "../../../errors.ts";
import type { Codec } from "../../../store/codec.ts";
import { EtcdKv } from "../../../store/etcd-kv.ts";
import { appendEvent } from "../../../store/events.ts";
import { keys, type Keys } from "../../../store/keys.ts";
import { KvError, type Kv } from "../../../store/kv.ts";
import type { EventKind } from "../../../store/records.ts";
import { readRecord } from "../../../store/typed.ts";
import { loadCommandConfig } from "../../command-config.ts";

export interface Management {
  /** Every call bounded by etcd.request_timeout_ms (EtcdKv). */
  readonly kv: Kv;
  readonly keys: Keys;
}

/** A client for the management cluster of a loaded configuration; close `kv` when done. */
export function connectManagement(config: FithaConfig): Management {
  return { kv: EtcdKv.connect(config.etcd, "management"), keys: keys(config.etcd.prefix) };
}

/** Loads fitha.toml (`--config`), runs `work` on the management cluster, and closes the connection. */
export async function withManagement<T>(flags: Parameters<typeof loadCommandConfig>[0], work: (management: Management) => Promise<T>): Promise<T> {
  const { config } = await loadCommandConfig(flags);
  const management = connectManagement(config);
  try {
    return await work(management);
  } finally {
    management.kv.close();
  }
}

/** A stored value that does not decode: exit 1, naming the key and every problem. */
export class BadValueError extends FithaError {
  constructor(
    readonly key: string,
    readonly problems: readonly string[],
  ) {
    super(`${key} holds a bad value (the daemons ignore it and keep what they had): ${problems.join("; ")}`);
    this.name = "BadValueError";
  }
}

/** A value stored under one key, or the default when there is none. */
export interface InForce<T> {
  readonly value: T;
  /** False: nothing is stored, the default is in force. */
  readonly stored: boolean;
  /** The key's last write, for a compare-and-swap; 0n when absent. */
  readonly modRevision: bigint;
}

/**
 * The value in force under `key`: the stored one, or `fallback` when nothing is stored. A stored
 * value that does not decode is an error naming the key and every problem: the daemons ignore it
 * and keep what they had, so no command may pretend to know what is in force.
 */
export async function readInForce<T>(kv: Kv, key: string, codec: Codec<T>, fallback: T): Promise<InForce<T>> {
  const decoded = await readRecord(kv, key, codec);
  if (decoded === undefined) return { value: fallback, stored: false, modRevision: 0n };
  if ("bad" in decoded) throw new BadValueError(key, decoded.bad.problems);
  return { value: decoded.record, stored: true, modRevision: decoded.modRevision };
}

/**
 * Records and events say who did it: "user@host" (252 characters at most, so that "cli@" + it
 * fits the codecs' 256). The user is the one behind sudo if any ("root" would not say who),
 * else the name of the process's uid in /etc/passwd (Bun's os.userInfo() only reads $USER),
 * else $USER or $LOGNAME (users from a directory service), else "uidN".
 */
export function operatorName(): string {
  const uid = process.getuid?.() ?? -1;
  const { SUDO_USER, USER, LOGNAME } = process.env;
  const user = (uid === 0 ? SUDO_USER : undefined) || passwdName(uid) || USER || LOGNAME || `uid${uid}`;
  return `${user}@${hostname()}`.slice(0, 252);
}

function passwdName(uid: number): string | undefined {
  try {
    // name:password:uid:...
    return readFileSync("/etc/passwd", "utf8").split("\n").map((line) => line.split(":")).find((fields) => fields[2] === String(uid))?.[0];
  } catch {
    return undefined;
  }
}

/**
 * Appends the event of an operator's change that `done` describes ("maintenance is on"): the
 * change is already made, so a failure here says so rather than suggesting nothing happened.
 */
export async function recordOperatorEvent(management: Management, kind: EventKind, host: string | null, reason: string, done: string): Promise<void> {
  const event = { time: new Date().toISOString(), kind, host, reason: reason.slice(0, 4096), by: `cli@${operatorName()}` };
  try {
    await appendEvent(management.kv, management.keys, event);
  } catch (error) {
    if (!(error instanceof KvError)) throw error;
    throw new FithaError(`${done}, but its ${kind} event could not be appended: ${error.message}`);
  }
}
