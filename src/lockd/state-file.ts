/**
 * lockd's persisted state (`--state-dir`/state.json): who this host is in the lockspace and which
 * VM leases it holds, so that a restarted lockd resumes the same incarnation and keeps its VMs
 * (fencing protection, DESIGN §4.1 rule 5) instead of losing the lockspace as sanlock does.
 *
 * Written atomically (temp file, fsync, rename, fsync of the directory): after a crash the file
 * is the old state or the new one, never a mix. A file that cannot be read or fails validation
 * is an error naming it — lockd then starts without re-adoption, which is the safe side.
 */
import { mkdir, open, readFile, rename } from "node:fs/promises";
import { join } from "node:path";
import type { Incarnation } from "../lease/delta-lease.ts";

/** lockd's and the watchdog's --state-dir when none is given. */
export const defaultStateDir = "/var/lib/fitha/lockd";

/** 2 added validUntilMs (read by the watchdog). */
export const stateFormatVersion = 2;

export interface HeldLease {
  readonly slot: number;
  readonly resource: string;
  readonly lver: number;
}

export interface LockdState {
  readonly version: typeof stateFormatVersion;
  /** /proc/sys/kernel/random/boot_id when written: CLOCK_BOOTTIME readings only compare within one boot. */
  readonly bootId: string;
  /** The lockd process that wrote it; a successor checks it is gone before resuming. */
  readonly pid: number;
  readonly leaseFile: string;
  readonly lockspaceId: string;
  readonly incarnation: Incarnation;
  /**
   * CLOCK_BOOTTIME at which the host lease stops being valid unless renewed (renewal-fail, or the
   * end of a no-fence grace). The watchdog (src/lockd/watchdog.ts) stops the VMs of `leases` once
   * it passes: this file is how lockd feeds it.
   */
  readonly validUntilMs: number;
  readonly leases: readonly HeldLease[];
}

export class StateFileError extends Error {
  constructor(file: string, reason: string) {
    super(`${file}: ${reason}`);
    this.name = "StateFileError";
  }
}

/** Where a lockd's state lives: a file in production, memory in tests and the simulator. */
export interface StateStore {
  /** For messages: the file, or "memory". */
  readonly name: string;
  read(): Promise<LockdState | undefined>;
  write(state: LockdState): Promise<void>;
}

export function fileStateStore(stateDir: string): StateStore {
  return { name: stateFile(stateDir), read: () => readState(stateDir), write: (state) => writeState(stateDir, state) };
}

export function stateFile(stateDir: string): string {
  return join(stateDir, "state.json");
}

export async function writeState(stateDir: string, state: LockdState): Promise<void> {
  await mkdir(stateDir, { recursive: true, mode: 0o700 });
  const target = stateFile(stateDir);
  const temporary = `${target}.tmp`;
  const file = await open(temporary, "w", 0o600);
  try {
    await file.writeFile(`${JSON.stringify(state, null, 2)}\n`);
    await file.sync();
  } finally {
    await file.close();
  }
  await rename(temporary, target);
  // The rename itself must reach the disk before we rely on it.
  const directory = await open(stateDir, "r");
  try {
    await directory.sync();
  } finally {
    await directory.close();
  }
}

/** The persisted state, or undefined when there is none. */
export async function readState(stateDir: string): Promise<LockdState | undefined> {
  const file = stateFile(stateDir);
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw new StateFileError(file, `cannot read (${(error as NodeJS.ErrnoException).code ?? String(error)})`);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    throw new StateFileError(file, "not valid JSON");
  }
  return checkState(file, raw);
}

function checkState(file: string, raw: unknown): LockdState {
  const fail = (what: string): never => {
    throw new StateFileError(file, what);
  };
  const object = (value: unknown, what: string): Record<string, unknown> =>
    typeof value === "object" && value !== null && !Array.isArray(value) ? (value as Record<string, unknown>) : fail(`${what} is not an object`);
  const integer = (value: unknown, what: string): number => (Number.isSafeInteger(value) && (value as number) >= 0 ? (value as number) : fail(`${what} is not a non-negative integer`));
  const number = (value: unknown, what: string): number => (typeof value === "number" && Number.isFinite(value) ? value : fail(`${what} is not a number`));
  const string = (value: unknown, what: string): string => (typeof value === "string" && value !== "" ? value : fail(`${what} is not a non-empty string`));

  const state = object(raw, "the state");
  if (state["version"] !== stateFormatVersion) fail(`version ${JSON.stringify(state["version"])}, expected ${stateFormatVersion}`);
  const incarnation = object(state["incarnation"], "incarnation");
  const timestamps = incarnation["recordTimestampsMs"];
  if (!Array.isArray(timestamps) || timestamps.length === 0) fail("incarnation.recordTimestampsMs is not a non-empty list");
  const leases = state["leases"];
  if (!Array.isArray(leases)) fail("leases is not a list");
  return {
    version: stateFormatVersion,
    bootId: string(state["bootId"], "bootId"),
    pid: integer(state["pid"], "pid"),
    leaseFile: string(state["leaseFile"], "leaseFile"),
    lockspaceId: string(state["lockspaceId"], "lockspaceId"),
    incarnation: {
      hostId: integer(incarnation["hostId"], "incarnation.hostId"),
      hostName: string(incarnation["hostName"], "incarnation.hostName"),
      installId: string(incarnation["installId"], "incarnation.installId"),
      ioTimeoutMs: integer(incarnation["ioTimeoutMs"], "incarnation.ioTimeoutMs"),
      generation: integer(incarnation["generation"], "incarnation.generation"),
      recordTimestampsMs: (timestamps as unknown[]).map((t, i) => integer(t, `incarnation.recordTimestampsMs[${i}]`)),
      lastRenewalStartMs: number(incarnation["lastRenewalStartMs"], "incarnation.lastRenewalStartMs"),
    },
    validUntilMs: number(state["validUntilMs"], "validUntilMs"),
    leases: (leases as unknown[]).map((entry, i) => {
      const lease = object(entry, `leases[${i}]`);
      return { slot: integer(lease["slot"], `leases[${i}].slot`), resource: string(lease["resource"], `leases[${i}].resource`), lver: integer(lease["lver"], `leases[${i}].lver`) };
    }),
  };
}
