/**
 * Waits until `condition` holds (sync or async), checking every `pollMs`, for at most
 * `timeoutMs`; then fails naming `what`. The one bounded wait tests use for things that happen
 * in other processes or on real time.
 */
export async function eventually(what: string, condition: () => boolean | Promise<boolean>, timeoutMs: number, pollMs = 20): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!(await condition())) {
    if (performance.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await Bun.sleep(pollMs);
  }
}
