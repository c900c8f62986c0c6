/**
 * lockd's socket directory and state directory must be its own: whoever can write to them can
 * replace the socket (and answer the qemu hook's lease requests in lockd's name: a VM started
 * without its lease) or the state file (and make a restarted lockd resume leases it does not
 * hold, or make the watchdog stop the wrong VMs). So lockd refuses to start when either is owned
 * by another user or writable by its group or others, and says how to fix it.
 *
 * Only the directory itself is checked, not its ancestors: /run and /var/lib belong to the
 * system, and a directory that does not exist yet is created by lockd with mode 0700.
 */
import { stat } from "node:fs/promises";
import { ExitCode, FithaError } from "../errors.ts";

/** Why a directory with this owner and mode is not private to `ownUid`, or undefined if it is. */
export function privateDirProblem(ownerUid: number, mode: number, ownUid: number): string | undefined {
  const owners = ownUid === 0 ? "root" : `root or uid ${ownUid}`;
  if (ownerUid !== 0 && ownerUid !== ownUid) return `is owned by uid ${ownerUid}, not ${owners}`;
  if ((mode & 0o022) === 0) return undefined;
  const writers = [(mode & 0o020) !== 0 ? "its group" : "", (mode & 0o002) !== 0 ? "others" : ""].filter((w) => w !== "");
  return `has mode ${(mode & 0o7777).toString(8).padStart(4, "0")}: writable by ${writers.join(" and ")}`;
}

/**
 * Throws (exit 2: a configuration problem, which restarting does not fix) when `path` exists and
 * is not a directory private to this process's user. `role` says what it is for, in the message.
 */
export async function checkPrivateDir(path: string, role: string, ownUid = process.geteuid?.() ?? 0): Promise<void> {
  const info = await stat(path).catch((error: NodeJS.ErrnoException) => {
    if (error.code === "ENOENT") return undefined;
    throw new FithaError(`lockd: ${role} ${path}: cannot inspect it (${error.code ?? error.message})`, ExitCode.usage);
  });
  if (info === undefined) return;
  if (!info.isDirectory()) throw new FithaError(`lockd: ${role} ${path} is not a directory`, ExitCode.usage);
  const problem = privateDirProblem(info.uid, info.mode, ownUid);
  if (problem === undefined) return;
  const owner = ownUid === 0 ? "root" : String(ownUid);
  throw new FithaError(
    `lockd: ${role} ${path} ${problem}; another user could replace what lockd keeps there. Fix: chown ${owner} ${path} && chmod go-w ${path}`,
    ExitCode.usage,
  );
}
