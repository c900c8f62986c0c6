/**
 * The last resort of fencing: killing a VM's qemu process directly, for when the hypervisor
 * cannot stop it (libvirtd hung or gone). libvirt's qemu driver keeps a status file per running
 * domain in its run directory (/run/libvirt/qemu/NAME.xml): the domain's XML inside a
 * <domstatus pid='…'> element. From it the VM's process is found by the VM's UUID or name.
 *
 * A pid is only a number, and it may have been reused since libvirt wrote the file: a process is
 * killed only if its command line carries the VM's UUID (libvirt starts qemu with `-uuid UUID`).
 * A process stuck in the kernel (D state) does not die of SIGKILL; that is reported, and only a
 * reset of the host (a hardware watchdog) can end it.
 */
import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { domainIdentity } from "./domain-xml.ts";

export const defaultQemuRunDir = "/run/libvirt/qemu";
/** Status files read at most (one per running domain), and the largest one read. */
const maxStatusFiles = 10_000;
const maxStatusFileBytes = 4 * 1024 * 1024;
/** How long a killed process is given to be gone, checked every pollMs. */
const exitWaitMs = 5_000;
const pollMs = 20;

export type KillOutcome =
  | { readonly outcome: "killed"; readonly pid: number }
  /** No running process of that VM (no status file naming it, or its process is gone). */
  | { readonly outcome: "none" }
  /** A process was found but could not be ended: why. */
  | { readonly outcome: "failed"; readonly reason: string };

/** Kills the process of a VM named by UUID or name. */
export interface VmProcessKiller {
  kill(vm: string): Promise<KillOutcome>;
}

/** The killer over libvirt's qemu run directory (`runDir`, default /run/libvirt/qemu). */
export function qemuProcessKiller(runDir = defaultQemuRunDir): VmProcessKiller {
  return { kill: (vm) => killVmProcess(runDir, vm) };
}

async function killVmProcess(runDir: string, vm: string): Promise<KillOutcome> {
  const found = await findVmProcess(runDir, vm);
  if (found === undefined) return { outcome: "none" };
  const { pid, uuid } = found;
  const cmdline = await readFile(`/proc/${pid}/cmdline`, "utf8").catch(() => undefined);
  if (cmdline === undefined) return { outcome: "none" };
  // NUL-separated arguments; the UUID must be one of them, not merely a substring of one.
  if (!cmdline.split("\0").some((arg) => arg.toLowerCase() === uuid)) {
    return { outcome: "failed", reason: `pid ${pid} from ${runDir} does not carry the VM's UUID ${uuid} in its command line (a reused pid?); not killed` };
  }
  try {
    process.kill(pid, "SIGKILL");
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ESRCH") return { outcome: "none" };
    return { outcome: "failed", reason: `kill ${pid}: ${(error as Error).message}` };
  }
  const deadline = Date.now() + exitWaitMs;
  while (Date.now() < deadline) {
    if (!(await runs(pid))) return { outcome: "killed", pid };
    await Bun.sleep(pollMs);
  }
  return { outcome: "failed", reason: `pid ${pid} still exists ${exitWaitMs} ms after SIGKILL (stuck in the kernel?)` };
}

/** Whether `pid` is a process that has not exited (a zombie has: it only waits to be reaped). */
async function runs(pid: number): Promise<boolean> {
  const stat = await readFile(`/proc/${pid}/stat`, "utf8").catch(() => undefined);
  if (stat === undefined) return false;
  // "pid (comm) S …": the state follows the last ")" (comm may contain anything).
  const state = stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
  return state !== "Z" && state !== "X";
}

/** The pid and UUID from the status file of the VM named `vm` (UUID or name), if it runs. */
async function findVmProcess(runDir: string, vm: string): Promise<{ pid: number; uuid: string } | undefined> {
  let names: string[];
  try {
    names = (await readdir(runDir)).filter((name) => name.endsWith(".xml")).slice(0, maxStatusFiles);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw error;
  }
  const wanted = vm.toLowerCase();
  for (const name of names) {
    const file = join(runDir, name);
    const xml = await readFile(file, "utf8").catch(() => "");
    if (xml.length === 0 || xml.length > maxStatusFileBytes) continue;
    const pid = /<domstatus\b[^>]*\bpid=['"](\d+)['"]/.exec(xml)?.[1];
    const domain = xml.indexOf("<domain");
    if (pid === undefined || domain < 0) continue;
    const identity = domainIdentity(xml.slice(domain));
    if (identity.uuid === undefined) continue;
    const uuid = identity.uuid.toLowerCase();
    if (uuid === wanted || identity.name === vm) return { pid: Number(pid), uuid };
  }
  return undefined;
}
