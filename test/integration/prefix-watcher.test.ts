/**
 * PrefixWatcher against a real etcd: the watcher's connection is cut mid-stream while another
 * client writes, etcd itself is frozen (SIGSTOP) mid-stream, and the history is compacted while
 * the watcher is away. Every revision must arrive exactly once, in order, or be covered by a
 * snapshot. Unit tests of the same on MemoryKv: test/unit/prefix-watcher.test.ts.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { Etcd3 } from "etcd3";
import { monotonicClock } from "../../src/core/clock.ts";
import { EtcdKv } from "../../src/store/etcd-kv.ts";
import type { KvChange, KvEntry } from "../../src/store/kv.ts";
import { PrefixWatcher, type WatcherState } from "../../src/store/watcher.ts";
import { startEtcd, type LocalEtcd } from "../helpers/etcd.ts";
import { etcdSettings } from "../helpers/etcd-settings.ts";
import { startLinkProxy, type LinkProxy } from "../helpers/link-proxy.ts";
import { eventually } from "../helpers/eventually.ts";

const retry = { initialDelayMs: 100, maxDelayMs: 1_000, giveUpAfterMs: 60_000 };

let etcd: LocalEtcd | undefined;
beforeAll(async () => {
  etcd = await startEtcd({ name: "prefix-watcher" });
});
afterAll(async () => {
  await etcd?.stop();
});

/** A listener that rebuilds the prefix and records what it was handed. */
function mirror() {
  const state = new Map<string, string>();
  const revisions: bigint[] = [];
  const snapshots: bigint[] = [];
  const failures: Error[] = [];
  return {
    state,
    revisions,
    snapshots,
    failures,
    listener: {
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
      onFailed: (error: Error) => void failures.push(error),
    },
  };
}

interface Setup extends AsyncDisposable {
  readonly prefix: string;
  readonly proxy: LinkProxy;
  readonly writer: EtcdKv;
  readonly watcher: PrefixWatcher;
  readonly seen: ReturnType<typeof mirror>;
  /** The prefix as etcd has it now. */
  truth(): Promise<Map<string, string>>;
}

let runs = 0;
async function setup(): Promise<Setup> {
  const prefix = `/watcher/${++runs}/`;
  const proxy = await startLinkProxy(etcd!.endpoint);
  const link = EtcdKv.connect(etcdSettings({ endpoint: proxy.endpoint }), "management");
  const writer = EtcdKv.connect(etcdSettings({ endpoint: etcd!.endpoint }), "management");
  const seen = mirror();
  const watcher = new PrefixWatcher(link, prefix, seen.listener, monotonicClock, { retry });
  await eventually("first connection", () => watcher.state.kind === "connected", 10_000);
  return {
    prefix,
    proxy,
    writer,
    watcher,
    seen,
    truth: async () => new Map((await writer.getPrefix(prefix)).entries.map((e) => [e.key, e.value])),
    [Symbol.asyncDispose]: async () => {
      await watcher.stop();
      link.close();
      writer.close();
      await proxy.close();
    },
  };
}

/** Writes under the prefix (puts and deletes over a few keys), returning each write's revision. */
async function write(writer: EtcdKv, prefix: string, count: number, label: string): Promise<bigint[]> {
  const revisions: bigint[] = [];
  for (let i = 0; i < count; i++) {
    const key = `${prefix}k${i % 7}`;
    if (i % 5 === 4 && (await writer.get(key)) !== undefined) revisions.push(await deleted(writer, key));
    else revisions.push(await writer.put(key, `${label}-${i}`));
  }
  return revisions;
}

async function deleted(writer: EtcdKv, key: string): Promise<bigint> {
  await writer.delete(key);
  return (await writer.getPrefix(key)).revision;
}

test("the watcher's connection cut mid-stream: writes made meanwhile arrive once it is back, none missed or repeated", async () => {
  await using s = await setup();
  const states: WatcherState["kind"][] = [];
  const sampler = setInterval(() => states.at(-1) !== s.watcher.state.kind && states.push(s.watcher.state.kind), 5);
  try {
    const written = await write(s.writer, s.prefix, 20, "before");
    s.proxy.cut("reset");
    await eventually("retrying", () => s.watcher.state.kind === "retrying", 5_000);
    written.push(...(await write(s.writer, s.prefix, 20, "cut")));
    s.proxy.restore();
    written.push(...(await write(s.writer, s.prefix, 20, "after")));
    // etcd3's circuit breaker may refuse calls for 5 s after the failures.
    await eventually("every write", () => s.watcher.lastRevision === written.at(-1), 15_000);
    expect(s.seen.revisions).toEqual(written);
    expect(s.seen.snapshots).toHaveLength(1);
    expect(s.seen.state).toEqual(await s.truth());
    expect(states).toContain("retrying");
    expect(s.watcher.state.kind).toBe("connected");
  } finally {
    clearInterval(sampler);
  }
});

test("etcd frozen mid-stream (SIGSTOP), with writes pending: every revision once, in order, after SIGCONT", async () => {
  await using s = await setup();
  const written = await write(s.writer, s.prefix, 10, "before");
  process.kill(etcd!.pid, "SIGSTOP");
  let writes: Promise<bigint[]>;
  try {
    writes = write(s.writer, s.prefix, 3, "frozen");
    await Bun.sleep(1_000);
  } finally {
    process.kill(etcd!.pid, "SIGCONT");
  }
  written.push(...(await writes), ...(await write(s.writer, s.prefix, 10, "after")));
  await eventually("every write", () => s.watcher.lastRevision === written.at(-1), 15_000);
  expect(s.seen.revisions).toEqual(written);
  expect(s.seen.state).toEqual(await s.truth());
});

test("history compacted while the watcher was cut off: one snapshot of the current state, then revisions again", async () => {
  await using s = await setup();
  await write(s.writer, s.prefix, 10, "before");
  await eventually("first writes", () => s.seen.revisions.length === 10, 10_000);
  s.proxy.cut("reset");
  await eventually("retrying", () => s.watcher.state.kind === "retrying", 5_000);
  const cutOff = await write(s.writer, s.prefix, 10, "cut");
  const admin = new Etcd3({ hosts: etcd!.endpoint });
  try {
    await admin.kv.compact({ revision: cutOff.at(-1)!.toString(), physical: true });
  } finally {
    admin.close();
  }
  s.proxy.restore();
  await eventually("the snapshot", () => s.seen.snapshots.length === 2, 15_000);
  expect(s.seen.snapshots[1]).toBeGreaterThanOrEqual(cutOff.at(-1)!);
  expect(s.seen.revisions).toHaveLength(10);
  expect(s.seen.state).toEqual(await s.truth());
  const after = await write(s.writer, s.prefix, 5, "after");
  await eventually("later writes", () => s.watcher.lastRevision === after.at(-1), 10_000);
  expect(s.seen.revisions.slice(10)).toEqual(after);
  expect(s.seen.state).toEqual(await s.truth());
});
