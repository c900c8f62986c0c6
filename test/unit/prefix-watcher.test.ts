/**
 * PrefixWatcher on MemoryKv and virtual time: every revision exactly once and in order across
 * cut links and compactions, its states, its backoff and its bounds. The same against a real
 * etcd (cut connections, compaction) is in test/integration/prefix-watcher.test.ts.
 */
import { describe, expect, test } from "bun:test";
import { VirtualClock } from "../../src/core/clock.ts";
import { KvError, type KvChange, type KvEntry } from "../../src/store/kv.ts";
import { MemoryCluster } from "../../src/store/memory-kv.ts";
import { PrefixWatcher, type PrefixWatcherOptions, type RetryPolicy } from "../../src/store/watcher.ts";

const prefix = "/fitha/hosts/";
const retry: RetryPolicy = { initialDelayMs: 100, maxDelayMs: 400, giveUpAfterMs: 60_000 };

/** A listener that rebuilds the prefix and records what it was handed. */
function mirror() {
  const state = new Map<string, string>();
  const revisions: bigint[] = [];
  const snapshots: bigint[] = [];
  const failures: Error[] = [];
  const listener = {
    onSnapshot(entries: readonly KvEntry[], revision: bigint) {
      state.clear();
      for (const entry of entries) state.set(entry.key, entry.value);
      snapshots.push(revision);
    },
    onRevision(revision: bigint, changes: readonly KvChange[]) {
      revisions.push(revision);
      for (const change of changes) {
        if (change.type === "put") state.set(change.key, change.value);
        else state.delete(change.key);
      }
    },
    onFailed(error: Error) {
      failures.push(error);
    },
  };
  return { state, revisions, snapshots, failures, listener };
}

function setup(options: Omit<PrefixWatcherOptions, "retry"> = {}) {
  const clock = new VirtualClock();
  const cluster = new MemoryCluster(clock);
  const link = cluster.connect();
  const writer = cluster.connect();
  const seen = mirror();
  const start = () => new PrefixWatcher(link, prefix, seen.listener, clock, { retry, random: () => 1, ...options });
  const truth = () => new Map(cluster.range(prefix).entries.map((e) => [e.key, e.value]));
  return { clock, cluster, link, writer, seen, start, truth };
}

describe("PrefixWatcher", () => {
  test("starts with a snapshot, then hands over every later revision under the prefix once, in order", async () => {
    const { clock, cluster, writer, seen, start, truth } = setup();
    await writer.put(`${prefix}a`, "1");
    await writer.put(`${prefix}b`, "2");
    const watcher = start();
    await clock.advance(0);
    expect(seen.snapshots).toEqual([cluster.revision]);
    expect(watcher.state.kind).toBe("connected");
    const written = [await writer.put(`${prefix}c`, "3"), await writer.put("/fitha/mode", "elsewhere"), await writer.put(`${prefix}a`, "4")];
    await writer.deleteRange(`${prefix}a`, `${prefix}c`); // two keys, one revision
    const expected = [written[0]!, written[2]!, cluster.revision];
    await clock.advance(0);
    expect(seen.revisions).toEqual(expected);
    expect(watcher.lastRevision).toBe(cluster.revision);
    expect(seen.state).toEqual(truth());
    await watcher.stop();
    expect(watcher.state.kind).toBe("stopped");
  });

  test("resumes after a given revision without a snapshot", async () => {
    const { clock, writer, seen, start } = setup();
    const old = await writer.put(`${prefix}a`, "1");
    const later = await writer.put(`${prefix}b`, "2");
    const watcher = start();
    await watcher.stop();
    const resumed = new PrefixWatcher(writer, prefix, seen.listener, clock, { afterRevision: old, retry });
    await clock.advance(0);
    expect(seen.revisions).toEqual([later]);
    expect(seen.snapshots).toHaveLength(1); // the first watcher's only
    await resumed.stop();
  });

  test("a cut link: retrying since the cut, then the writes made meanwhile, none missed or repeated", async () => {
    const { clock, link, writer, seen, start, truth } = setup();
    const watcher = start();
    await clock.advance(0);
    await writer.put(`${prefix}a`, "before");
    await clock.advance(0);
    const cutAtMs = clock.nowMs();
    link.cut("refuse");
    await clock.advance(0);
    expect(watcher.state).toMatchObject({ kind: "retrying", sinceMs: cutAtMs, attempts: 1 });
    const written: bigint[] = [];
    for (let i = 0; i < 5; i++) {
      written.push(await writer.put(`${prefix}k${i}`, String(i)));
      await clock.advance(150);
    }
    written.push(await writer.put(`${prefix}a`, "during"));
    // Retries back off 100, 200, 400, 400... ms (random = 1: the full delay): still the same run.
    expect(watcher.state).toMatchObject({ kind: "retrying", sinceMs: cutAtMs });
    expect((watcher.state as { attempts: number }).attempts).toBeGreaterThanOrEqual(3);
    link.heal();
    await clock.advance(400);
    expect(watcher.state.kind).toBe("connected");
    expect(seen.revisions.slice(-written.length)).toEqual(written);
    expect(new Set(seen.revisions).size).toBe(seen.revisions.length);
    expect(seen.snapshots).toHaveLength(1);
    expect(seen.state).toEqual(truth());
    await watcher.stop();
  });

  test("backoff doubles from the initial delay up to the maximum", async () => {
    const { clock, link, start } = setup();
    link.cut("refuse");
    const watcher = start();
    // Failures at 0, 100, 300, 700, 1100 ms: waits of 100, 200, 400 and then 400 again.
    await clock.advance(1_000);
    expect(watcher.state).toMatchObject({ kind: "retrying", attempts: 4 });
    await clock.advance(100);
    expect(watcher.state).toMatchObject({ kind: "retrying", attempts: 5 });
    await watcher.stop();
  });

  test("history compacted while cut off: one snapshot of the current state, then revisions again", async () => {
    const { clock, cluster, link, writer, seen, start, truth } = setup();
    await writer.put(`${prefix}gone`, "will be deleted");
    const watcher = start();
    await clock.advance(0);
    link.cut("refuse");
    await writer.delete(`${prefix}gone`);
    await writer.put(`${prefix}new`, "1");
    cluster.compact(cluster.revision);
    link.heal();
    await clock.advance(500);
    expect(seen.snapshots).toEqual([seen.snapshots[0]!, cluster.revision]);
    expect(seen.state).toEqual(truth());
    const after = await writer.put(`${prefix}new`, "2");
    await clock.advance(0);
    expect(seen.revisions.at(-1)).toBe(after);
    expect(seen.state).toEqual(truth());
    expect(watcher.state.kind).toBe("connected");
    await watcher.stop();
  });

  test("a watch lagging beyond the kept history resyncs too", async () => {
    const clock = new VirtualClock();
    const cluster = new MemoryCluster(clock, { historyRevisions: 3 });
    const link = cluster.connect();
    const seen = mirror();
    for (let i = 0; i < 5; i++) await link.put(`${prefix}a`, String(i));
    const watcher = new PrefixWatcher(link, prefix, seen.listener, clock, { afterRevision: 1n, retry });
    await clock.advance(0);
    expect(seen.snapshots).toEqual([cluster.revision]);
    expect(seen.state.get(`${prefix}a`)).toBe("4");
    await watcher.stop();
  });

  test("gives up after giveUpAfterMs of failures: onFailed, state failed", async () => {
    const { clock, link, seen } = setup();
    link.cut("refuse");
    const watcher = new PrefixWatcher(link, prefix, seen.listener, clock, { retry: { ...retry, giveUpAfterMs: 2_000 } });
    await clock.advance(2_500);
    await watcher.done;
    expect(watcher.state.kind).toBe("failed");
    expect(seen.failures).toHaveLength(1);
    expect(seen.failures[0]).toBeInstanceOf(KvError);
    expect(seen.failures[0]!.message).toMatch(/^etcd of the management plane: cannot read keys under "\/fitha\/hosts\/": unreachable \(.*giving up\)$/);
  });

  test("a listener that throws fails the watcher; nothing more is delivered", async () => {
    const { clock, writer, seen, start } = setup();
    const watcher = start();
    await clock.advance(0);
    const onRevision = seen.listener.onRevision;
    seen.listener.onRevision = () => {
      throw new Error("bug in the listener");
    };
    await writer.put(`${prefix}a`, "1");
    await clock.advance(0);
    await watcher.done;
    seen.listener.onRevision = onRevision;
    await writer.put(`${prefix}b`, "2");
    await clock.advance(1_000);
    expect(watcher.state).toMatchObject({ kind: "failed", error: "bug in the listener" });
    expect(seen.failures.map((e) => e.message)).toEqual(["bug in the listener"]);
    expect(seen.revisions).toEqual([]);
  });

  test("stop() while waiting to retry returns without waiting out the delay", async () => {
    const { clock, link, start } = setup();
    link.cut("refuse");
    const watcher = start();
    await clock.advance(0);
    expect(watcher.state.kind).toBe("retrying");
    let stopped = false;
    const stopping = watcher.stop().then(() => (stopped = true));
    await clock.advance(0);
    expect(stopped).toBe(true);
    await stopping;
    expect(watcher.state.kind).toBe("stopped");
  });
});
