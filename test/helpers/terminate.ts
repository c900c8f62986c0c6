/** Ends a child process: SIGTERM, then SIGKILL if it has not exited within `graceMs`. Resolves once it has exited. */
export async function terminate(child: Bun.Subprocess, graceMs: number): Promise<void> {
  child.kill("SIGTERM");
  const exited = await Promise.race([child.exited.then(() => true), Bun.sleep(graceMs).then(() => false)]);
  if (!exited) {
    child.kill("SIGKILL");
    await child.exited;
  }
}
