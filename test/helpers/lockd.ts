/**
 * Real `fitha lockd` processes on a real lease file in a temp dir, with a short I/O timeout and
 * libvirt's in-process test driver as the hypervisor they would fence. Every lockd started here
 * is killed by `killStartedLockds()`, which test files call in an afterEach.
 */
import { join } from "node:path";
import { daemonCommand, runFitha } from "./fitha.ts";
import type { TempDir } from "./tmp.ts";

/** lockd's I/O timeout T in these tests: renewal every 1 s, fail at 4 s. */
export const testIoTimeoutS = 0.5;
const startTimeoutMs = 15_000;
const started = new Set<Bun.Subprocess>();

export async function killStartedLockds(): Promise<void> {
  for (const child of started) {
    child.kill("SIGKILL");
    await child.exited;
  }
  started.clear();
}

export interface LockdHost {
  socket: string;
  stateDir: string;
  /** fitha's arguments that run this host's lockd. */
  args: string[];
}

/**
 * Host `id` ("host-ID") of the lockspace in `dir` (or `options.leaseFile`), with its own socket
 * and state dir, fencing through `options.hypervisor` (default libvirt's in-process test driver).
 * Metrics only on `options.metricsAddress` (127.0.0.1:0 for a free port): lockds of one machine
 * would all want the default port.
 */
export function lockdHost(dir: TempDir, id: number, options: { hypervisor?: string; leaseFile?: string; metricsAddress?: string } = {}): LockdHost {
  const socket = join(dir.path, `run-${id}`, "lockd.sock");
  const stateDir = join(dir.path, `state-${id}`);
  return {
    socket,
    stateDir,
    args: ["lockd", "--lease-file", options.leaseFile ?? join(dir.path, "leases"), "--host-id", String(id), "--host", `host-${id}`, "--socket", socket, "--state-dir", stateDir, "--hypervisor", options.hypervisor ?? "test:///default", "--io-timeout", String(testIoTimeoutS), "--metrics-address", options.metricsAddress ?? "", "--log-format", "json"],
  };
}

/** A lockspace in `dir`/leases (or at `path`): 8 host ids, 8 slots (or `slots`), for I/O timeouts up to 1 s, K = 2 s. */
export async function formatLeaseFile(dir: TempDir, options: { slots?: number; path?: string } = {}): Promise<void> {
  const path = options.path ?? join(dir.path, "leases");
  const result = await runFitha(["lease", "format", "--path", path, "--hosts", "8", "--slots", String(options.slots ?? 8), "--max-io-timeout-ms", "1000", "--kill-budget-ms", "2000"]);
  if (result.exitCode !== 0) throw new Error(`fitha lease format: exit ${result.exitCode}: ${result.stderr}`);
}

/**
 * Starts lockd and waits (bounded) until it answers on its socket. Its log goes to a pipe (read
 * it after the test) or, for long runs that would fill the pipe, to `options.logFile`;
 * `options.env` adds to its environment (e.g. systemd's NOTIFY_SOCKET).
 */
export async function startLockd(h: LockdHost, options?: { env?: Record<string, string> }): Promise<Bun.Subprocess<"ignore", "ignore", "pipe">>;
export async function startLockd(h: LockdHost, options: { logFile: string; env?: Record<string, string> }): Promise<Bun.Subprocess>;
export async function startLockd(h: LockdHost, options: { logFile?: string; env?: Record<string, string> } = {}): Promise<Bun.Subprocess> {
  const stderr = options.logFile === undefined ? "pipe" : Bun.file(options.logFile);
  const child = Bun.spawn(daemonCommand(h.args), { stdin: "ignore", stdout: "ignore", stderr, env: { PATH: "/usr/bin:/bin", ...options.env } });
  started.add(child);
  const deadline = Date.now() + startTimeoutMs;
  for (;;) {
    const status = await runFitha(["lease", "status", "--socket", h.socket, "--json"]);
    if (status.exitCode === 0) return child;
    if (child.exitCode !== null) throw new Error(`lockd exited ${child.exitCode}: ${options.logFile === undefined ? await new Response(child.stderr as ReadableStream).text() : `see ${options.logFile}`}`);
    if (Date.now() > deadline) throw new Error(`lockd did not answer on ${h.socket}: ${status.stderr}`);
    await Bun.sleep(50);
  }
}
