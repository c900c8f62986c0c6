/**
 * Independent asynchronous work with a bound on how much runs at once: etcd batches concurrent
 * writes into one raft entry and one fsync, so a thousand independent writes done 64 at a time
 * take a fraction of the time of one after the other, without flooding the client.
 */

/**
 * Runs `work` for every item, at most `limit` at once, and resolves when all have settled. A
 * failure does not stop the others; the first one is rethrown once all have settled.
 */
export async function forEachConcurrently<T>(items: Iterable<T>, limit: number, work: (item: T) => Promise<void>): Promise<void> {
  if (!(Number.isSafeInteger(limit) && limit >= 1)) throw new RangeError(`forEachConcurrently: limit ${limit}`);
  const iterator = items[Symbol.iterator]();
  const failures: unknown[] = [];
  const worker = async () => {
    for (let next = iterator.next(); next.done !== true; next = iterator.next()) {
      try {
        await work(next.value);
      } catch (error) {
        failures.push(error);
      }
    }
  };
  await Promise.all(Array.from({ length: limit }, worker));
  if (failures.length > 0) throw failures[0];
}
