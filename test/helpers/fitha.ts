/** Running the built binary (dist/fitha) the way an operator or systemd would. */
import { existsSync } from "node:fs";
import { resolve } from "node:path";

export const repoRoot = resolve(import.meta.dir, "../..");
export const fithaBinary = resolve(repoRoot, "dist/fitha");

/**
 * The command line of a fitha daemon a test starts (lockd, watchdog, agent, controller): the
 * kernel kills it when the test process dies (setpriv --pdeathsig), so no daemon outlives a test
 * run that was killed before its cleanup ran. setpriv execs fitha: the pid is fitha's.
 */
export function daemonCommand(args: readonly string[]): string[] {
  return ["setpriv", "--pdeathsig", "KILL", "--", fithaBinary, ...args];
}

export interface RunResult {
  readonly exitCode: number;
  readonly stdout: string;
  readonly stderr: string;
}

export interface RunOptions {
  /** The complete environment: tests are hermetic, so FITHA_CONFIG and the like never leak in. */
  env?: Record<string, string>;
  cwd?: string;
  timeoutMs?: number;
  binary?: string;
  /** Written to the command's stdin (default: none, as from /dev/null). */
  stdin?: string;
}

export async function runFitha(args: readonly string[], options: RunOptions = {}): Promise<RunResult> {
  const binary = options.binary ?? fithaBinary;
  if (!existsSync(binary)) throw new Error(`${binary} is missing: run scripts/build first`);
  const timeoutMs = options.timeoutMs ?? 30_000;
  const child = Bun.spawn([binary, ...args], {
    cwd: options.cwd ?? repoRoot,
    env: options.env ?? { PATH: "/usr/sbin:/usr/bin:/sbin:/bin" },
    stdin: options.stdin === undefined ? "ignore" : new Blob([options.stdin]),
    stdout: "pipe",
    stderr: "pipe",
  });
  const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
  try {
    const [stdout, stderr, exitCode] = await Promise.all([
      new Response(child.stdout).text(),
      new Response(child.stderr).text(),
      child.exited,
    ]);
    if (child.signalCode === "SIGKILL") throw new Error(`fitha ${args.join(" ")}: killed after ${timeoutMs} ms\n${stderr}`);
    return { exitCode, stdout, stderr };
  } finally {
    clearTimeout(timer);
  }
}
