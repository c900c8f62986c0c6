/**
 * What `fitha doctor` looks at on this host, each look bounded by a deadline so that a hung etcd,
 * storage or libvirtd costs doctor a few seconds, never its answer: blocking I/O runs in the
 * Workers the daemons use (WorkerHypervisor; the lease file's DirectDevice in a process of its
 * own, see leaseChecksInChild), and whatever is still stuck when doctor has its verdicts is left
 * behind (the CLI exits explicitly). verdicts.ts judges the facts.
 */
import { readdir, readFile, readlink } from "node:fs/promises";
import { basename, resolve } from "node:path";
import { clockBoottimeMs, wallClockSync } from "../../ffi/libc.ts";
import { planes, type FithaConfig } from "../config/fitha-config.ts";
import { ConfigError, loadConfig } from "../config/load.ts";
import { withDeadline } from "../deadline.ts";
import { errorMessage, FithaError } from "../errors.ts";
import { requestLockd } from "../lockd/client.ts";
import { bootId, lockdAlive } from "../lockd/host-identity.ts";
import { defaultStateDir, readState, type LockdState } from "../lockd/state-file.ts";
import { connectPlane, probeCluster, type EtcdSettings } from "../store/cluster.ts";
import { inspectQemuHook } from "../virt/qemu-hook-install.ts";
import { WorkerHypervisor } from "../virt/worker-hypervisor.ts";
import { check, type Check, type DoctorReport } from "./check.ts";
import { leaseStepTimeoutMs } from "./lease-facts.ts";
import type { ClockFacts, ConfigFacts, HookFacts, HostIdentity, LibvirtFacts, LockdFacts, LockdStatusFacts, PlaneFacts, WatchdogFacts, WatchdogProcess } from "./verdicts.ts";

/** Deadline of each look (they run at once, so doctor takes about this long at worst). */
export const lookTimeoutMs = 3_000;

export async function readConfigFacts(file: string): Promise<{ facts: ConfigFacts; config: FithaConfig | undefined }> {
  try {
    return { facts: { file, ok: true }, config: await loadConfig(file) };
  } catch (error) {
    if (error instanceof ConfigError) return { facts: { file, ok: false, unreadable: false, problems: error.problems.map((p) => `${p.key}: ${p.message}`) }, config: undefined };
    if (error instanceof FithaError) return { facts: { file, ok: false, unreadable: true, problems: [error.message] }, config: undefined };
    throw error;
  }
}

/** Each plane's cluster, probed at once as `fitha status` does, with the configured timeouts capped at doctor's. */
export async function probePlanes(config: FithaConfig): Promise<PlaneFacts[]> {
  const etcd: EtcdSettings = { ...config.etcd, dial_timeout_ms: Math.min(config.etcd.dial_timeout_ms, lookTimeoutMs / 2), request_timeout_ms: Math.min(config.etcd.request_timeout_ms, lookTimeoutMs / 2) };
  return await Promise.all(
    planes.map(async (plane): Promise<PlaneFacts> => {
      const endpoints = config.etcd[plane].endpoints;
      let client: ReturnType<typeof connectPlane>;
      try {
        client = connectPlane(etcd, plane);
      } catch (error) {
        // Unreadable TLS material or password file: a FithaError naming the key.
        if (!(error instanceof FithaError)) throw error;
        return { plane, endpoints, probe: { reachable: false, error: error.message } };
      }
      try {
        const probe = await withDeadline(probeCluster(client, etcd, plane), lookTimeoutMs, `etcd of the ${plane} plane`).catch((error: unknown) => ({ reachable: false as const, error: errorMessage(error) }));
        return { plane, endpoints, probe };
      } finally {
        client.close();
      }
    }),
  );
}

/**
 * The lease file named on the command line, else the one in lockd's state; the host id likewise,
 * else the one the agent handed over for lockd (a host checked before lockd first ran).
 */
export interface LeaseTarget {
  readonly path: string | undefined;
  readonly hostId: number | undefined;
}

export function leaseTarget(flags: { leaseFile: string | undefined; hostId: number | undefined }, state: LockdState | undefined, handedOverHostId: number | undefined): LeaseTarget {
  const path = flags.leaseFile ?? state?.leaseFile;
  // lockd's host id is an id in its own lease file only.
  const stateHostId = state !== undefined && path === state.leaseFile ? state.incarnation.hostId : undefined;
  return { path, hostId: flags.hostId ?? stateHostId ?? handedOverHostId };
}

/** How long doctor waits for `fitha lease check`: its three steps, and the start of the program. */
const leaseCheckTimeoutMs = 3 * leaseStepTimeoutMs + 1_000;

/**
 * doctor's lease-file and lockspace checks, made by `fitha lease check` in a process of its own.
 * The device's Worker bounds how long doctor waits for hung storage, but not its exit: the kernel
 * lets a process end only once all its threads have, and a thread in uninterruptible I/O ends
 * when that I/O does — perhaps never (multipath queueing with no path). So the I/O happens in a
 * child that doctor abandons (SIGKILL, not waited for) when it does not answer in time; it ends
 * when the storage lets it.
 */
export async function leaseChecksInChild(path: string, host: HostIdentity): Promise<Check[]> {
  const command = [...thisProgram(), "lease", "check", "--path", path, "--host", host.hostName, ...(host.hostId === undefined ? [] : ["--host-id", String(host.hostId)]), "--json"];
  const child = Bun.spawn(command, { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  const stderr = new Response(child.stderr).text();
  const failed = (detail: string, fix: string): Check[] => [check("lease-file", "fail", detail, fix, { path }), check("lockspace", "skipped", "the lease file cannot be read")];
  let report: DoctorReport | undefined;
  try {
    report = await withDeadline(readReport(child.stdout), leaseCheckTimeoutMs, `fitha lease check --path ${path}`);
  } catch (error) {
    return failed(`${errorMessage(error)}; its I/O hangs (pid ${child.pid} is left to end when that I/O does)`, "the shared storage does not answer: check its path from this host (`multipath -ll`, `dmesg`)");
  } finally {
    // It answered (and exits, maybe held by a hung read), or it is abandoned: nothing more is wanted from it.
    child.kill("SIGKILL");
    child.unref();
  }
  const checks = ["lease-file", "lockspace"].map((name) => report?.checks.find((c) => c.name === name));
  if (checks.every((c) => c !== undefined)) return checks;
  // It ended without a report (a bug, or it could not start): its stderr says why.
  const why = await withDeadline(stderr, 1_000, "its stderr").catch(() => "");
  return failed(`fitha lease check gave no report: ${why.trim() || "no output"}`, `run it by hand to see why: \`fitha lease check --path ${path}\``);
}

/**
 * The report `fitha lease check --json` prints, taken as soon as it is complete: the process may
 * not end for a long time after printing it (one of its reads still hangs). Undefined if the output
 * ends without one.
 */
async function readReport(stream: ReadableStream<Uint8Array>): Promise<DoctorReport | undefined> {
  const decoder = new TextDecoder();
  let text = "";
  for await (const chunk of stream) {
    text += decoder.decode(chunk, { stream: true });
    if (text.length > maxReportChars) return undefined;
    // printJson ends the document with "}\n"; a "}\n" inside it only ends a line that does not parse.
    if (text.endsWith("}\n")) {
      try {
        return JSON.parse(text) as DoctorReport;
      } catch {
        // not complete yet
      }
    }
  }
  return undefined;
}

/** Two checks with a corrupt record's message each: a few KiB; anything far larger is not the report. */
const maxReportChars = 1_000_000;

/** The command line that runs this fitha: the binary itself, or bun with the entry file when run from source. */
function thisProgram(): string[] {
  // A compiled binary's entry lives in its embedded file system.
  return Bun.main.startsWith("/$bunfs/") ? [process.execPath] : [process.execPath, Bun.main];
}

/** Connects to libvirt in a Worker (as lockd does) and asks for the node info, both bounded. */
export async function probeLibvirt(uri: string): Promise<LibvirtFacts> {
  const startedAt = performance.now();
  let hypervisor: WorkerHypervisor | undefined;
  try {
    hypervisor = await WorkerHypervisor.open(uri, { callTimeoutMs: lookTimeoutMs, openTimeoutMs: lookTimeoutMs, maxReplacements: 0 });
    const node = await hypervisor.nodeInfo();
    const connectMs = performance.now() - startedAt;
    await hypervisor.close();
    return { uri, ok: true, connectMs, cpus: node.cpus, memoryKiB: node.memoryKiB };
  } catch (error) {
    // A hypervisor that failed is not waited for: its worker may be stuck inside libvirt.
    void hypervisor?.close().catch(() => undefined);
    return { uri, ok: false, error: errorMessage(error) };
  }
}

export async function inspectHook(hooksDir: string, thisBinary: string): Promise<HookFacts> {
  try {
    return { hooksDir, thisBinary, hook: await inspectQemuHook(hooksDir) };
  } catch (error) {
    if (!(error instanceof FithaError)) throw error;
    return { hooksDir, thisBinary, hook: { state: "error", error: error.message } };
  }
}

/** lockd's status over its socket, as `fitha lease status` asks for it. */
export async function probeLockd(socket: string): Promise<LockdFacts> {
  try {
    const reply = await requestLockd(socket, { op: "status" }, lookTimeoutMs);
    if (!reply.ok) return { socket, ok: false, error: `lockd at ${socket} refused the status request: ${reply.message}` };
    return { socket, ok: true, status: reply["status"] as LockdStatusFacts };
  } catch (error) {
    if (!(error instanceof FithaError)) throw error;
    return { socket, ok: false, error: error.message };
  }
}

/** lockd's state file in `stateDir`: undefined when there is none, the error when it cannot be read. */
export async function readLockdState(stateDir: string): Promise<LockdState | { error: string } | undefined> {
  try {
    return await readState(stateDir);
  } catch (error) {
    return { error: errorMessage(error) };
  }
}

/** The watchdog processes and lockd's state they guard; bounded: reading /proc/PID/cmdline waits while that process's memory map is locked (a process stuck in a page fault on hung storage). */
export async function watchdogFacts(stateDir: string, state: LockdState | { error: string } | undefined, hypervisor: string): Promise<WatchdogFacts | { error: string }> {
  const look = async (): Promise<WatchdogFacts> => {
    const processes = await findWatchdogs();
    if (state === undefined || "error" in state) return { stateDir, processes, lockdState: state, hypervisor };
    const [running, thisBootId] = await Promise.all([lockdAlive(state.pid), bootId()]);
    return {
      stateDir,
      processes,
      hypervisor,
      lockdState: { pid: state.pid, running, thisBoot: state.bootId === thisBootId, leases: state.leases.length, validForMs: state.validUntilMs - clockBoottimeMs() },
    };
  };
  return await withDeadline(look(), lookTimeoutMs, "looking for the watchdog in /proc").catch((error: unknown) => ({ error: errorMessage(error) }));
}

/**
 * Every `fitha watchdog` process of this machine, from /proc: a command line whose word after
 * the fitha program (the binary, or src/cli/main.ts when run from source) is "watchdog". The
 * watchdog has no pid file or socket; its command line is what names it and its --state-dir.
 */
async function findWatchdogs(): Promise<WatchdogProcess[]> {
  const pids = (await readdir("/proc")).filter((entry) => /^\d+$/.test(entry) && Number(entry) !== process.pid);
  const found: WatchdogProcess[] = [];
  // In batches: a host runs thousands of processes, and reading all their command lines at once
  // could exhaust the file descriptors (then a watchdog would be missed).
  for (let first = 0; first < pids.length; first += procReadBatch) {
    const batch = await Promise.all(pids.slice(first, first + procReadBatch).map(watchdogProcess));
    for (const watchdog of batch) if (watchdog !== undefined) found.push(watchdog);
  }
  return found;
}

const procReadBatch = 64;

async function watchdogProcess(pid: string): Promise<WatchdogProcess | undefined> {
  // A process may end between readdir and these reads: then it is simply not there.
  const commandLine = await readFile(`/proc/${pid}/cmdline`, "utf8").catch(() => "");
  const argv = commandLine.split("\0");
  const at = argv.findIndex((word, i) => word === "watchdog" && i > 0 && isFithaProgram(argv[i - 1]!));
  if (at < 0) return undefined;
  const cwd = await readlink(`/proc/${pid}/cwd`).catch(() => "/");
  return { pid: Number(pid), stateDir: resolve(cwd, optionValue(argv.slice(at + 1), "--state-dir") ?? defaultStateDir) };
}

function isFithaProgram(word: string): boolean {
  return basename(word).startsWith("fitha") || word.endsWith("/cli/main.ts");
}

/** `--name V` or `--name=V` among `args` (before any `--`). */
function optionValue(args: readonly string[], name: string): string | undefined {
  for (let i = 0; i < args.length && args[i] !== "--"; i++) {
    if (args[i] === name) return args[i + 1];
    if (args[i]!.startsWith(`${name}=`)) return args[i]!.slice(name.length + 1);
  }
  return undefined;
}

/** Two CLOCK_BOOTTIME readings a little apart, and /proc/uptime (the same clock) after them. */
export async function readClock(): Promise<ClockFacts | { error: string }> {
  try {
    const first = clockBoottimeMs();
    await Bun.sleep(20);
    const second = clockBoottimeMs();
    const uptime = await readFile("/proc/uptime", "utf8");
    const after = clockBoottimeMs();
    const seconds = Number(uptime.split(" ")[0]);
    if (!Number.isFinite(seconds)) return { error: `/proc/uptime holds ${JSON.stringify(uptime.trim())}` };
    return { boottimeMs: [first, second], uptimeMs: seconds * 1000, boottimeAfterUptimeMs: after };
  } catch (error) {
    return { error: errorMessage(error) };
  }
}

export function readTimeSync(): { synchronized: boolean; maxErrorMs: number } | { error: string } {
  try {
    return wallClockSync();
  } catch (error) {
    return { error: errorMessage(error) };
  }
}
