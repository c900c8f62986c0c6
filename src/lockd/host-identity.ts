/** Facts about this machine and installation that lockd's safety rules depend on. */
import { mkdir, open, readFile } from "node:fs/promises";
import { join } from "node:path";
import { clockBoottimeMs } from "../../ffi/libc.ts";
import type { Clock } from "../core/clock.ts";
import { randomId } from "../lease/records.ts";

/**
 * CLOCK_BOOTTIME: monotonic, keeps counting through suspend, and the same for every process of
 * one boot, so a renewal time persisted by one lockd is meaningful to its successor.
 */
export const boottimeClock: Clock = {
  nowMs: clockBoottimeMs,
  sleep: (ms) => new Promise((resolve) => setTimeout(resolve, Math.max(0, ms))),
};

/** Changes at every boot: persisted CLOCK_BOOTTIME readings are only comparable within one. */
export async function bootId(): Promise<string> {
  return (await readFile("/proc/sys/kernel/random/boot_id", "utf8")).trim();
}

/**
 * The persisted id of this installation (DESIGN §4.1 rule 4: not the host name, which can be
 * reused by another machine). Created once in the state dir.
 */
export async function installId(stateDir: string): Promise<string> {
  const file = join(stateDir, "install-id");
  try {
    const id = (await readFile(file, "utf8")).trim();
    if (/^[0-9a-f]{32}$/.test(id)) return id;
    throw new Error(`${file} does not hold a 32-digit hex id; remove it only if no lockd of this installation runs`);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "ENOENT") throw error;
  }
  await mkdir(stateDir, { recursive: true, mode: 0o700 });
  const id = randomId();
  // "wx": if two lockds race to create it, one fails instead of both using different ids.
  const handle = await open(file, "wx", 0o600);
  try {
    await handle.writeFile(`${id}\n`);
    await handle.sync();
  } finally {
    await handle.close();
  }
  return id;
}

/**
 * Whether a lockd still runs as `pid`. A zombie (killed, not yet reaped) is gone; so is a pid
 * the kernel has since given to a program that is not fitha's lockd.
 */
export async function lockdAlive(pid: number): Promise<boolean> {
  let stat: string;
  let commandLine: string;
  try {
    [stat, commandLine] = await Promise.all([readFile(`/proc/${pid}/stat`, "utf8"), readFile(`/proc/${pid}/cmdline`, "utf8")]);
  } catch {
    return false;
  }
  // The state letter follows the command name in parentheses, which may itself contain spaces.
  const state = stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
  return state !== "Z" && state !== "X" && commandLine.split("\0").includes("lockd");
}
