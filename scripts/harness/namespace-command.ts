/**
 * Processes inside a harness namespace. `setpriv --pdeathsig KILL` first, so that the kernel kills
 * them if the harness dies before its teardown; then `ip netns exec`, which enters the namespace
 * and execs the command in place: the child's pid is the command's own (signals reach it).
 */
export interface SpawnOutput {
  /** A file descriptor (the child gets its own copy), a file, or Bun's "ignore"/"pipe". */
  readonly stdout?: "ignore" | "pipe" | number | ReturnType<typeof Bun.file>;
  readonly stderr?: "ignore" | "pipe" | number | ReturnType<typeof Bun.file>;
  readonly env?: Record<string, string>;
}

export const pathEnv = { PATH: "/usr/sbin:/usr/bin:/sbin:/bin" };

export function inNamespace(netns: string, command: readonly string[], output: SpawnOutput = {}): Bun.Subprocess {
  return Bun.spawn(["setpriv", "--pdeathsig", "KILL", "--", "ip", "netns", "exec", netns, ...command], {
    stdin: "ignore",
    stdout: output.stdout ?? "ignore",
    stderr: output.stderr ?? "ignore",
    env: output.env ?? pathEnv,
  });
}

export interface CommandResult {
  readonly exitCode: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs `command` in `netns` to its end (killed after `timeoutMs`) and returns its output. */
export async function runInNamespace(netns: string, command: readonly string[], timeoutMs = 30_000, env?: Record<string, string>): Promise<CommandResult> {
  const child = inNamespace(netns, command, { stdout: "pipe", stderr: "pipe", ...(env === undefined ? {} : { env }) });
  const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
  try {
    const [stdout, stderr, exitCode] = await Promise.all([new Response(child.stdout as ReadableStream).text(), new Response(child.stderr as ReadableStream).text(), child.exited]);
    if (child.signalCode === "SIGKILL") throw new Error(`${command.join(" ")} in ${netns}: killed after ${timeoutMs} ms\n${stderr}`);
    return { exitCode, stdout, stderr };
  } finally {
    clearTimeout(timer);
  }
}
