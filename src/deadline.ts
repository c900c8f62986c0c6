import { FithaError } from "./errors.ts";

/**
 * Settles like `work`, or rejects with a FithaError naming `what` once `timeoutMs` has passed,
 * whichever comes first. The work itself goes on (a promise cannot be cancelled): callers that
 * own a resource behind it (a connection) must close it after a timeout.
 */
export async function withDeadline<T>(work: Promise<T>, timeoutMs: number, what: string): Promise<T> {
  if (!(Number.isFinite(timeoutMs) && timeoutMs > 0)) throw new RangeError(`deadline of ${what}: ${timeoutMs} ms`);
  let timer: ReturnType<typeof setTimeout> | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new FithaError(`${what}: no answer within ${timeoutMs} ms`)), timeoutMs);
  });
  try {
    return await Promise.race([work, expired]);
  } finally {
    clearTimeout(timer);
  }
}
