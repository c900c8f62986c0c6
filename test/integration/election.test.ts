/**
 * Controller election against a real etcd: a leader process SIGKILLed (a standby leads within
 * 2 TTL), a leader whose link to etcd is cut (it stops leading before anyone else can lead), and
 * etcd frozen for longer than the TTL. Unit tests on virtual time: test/unit/election.test.ts.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { monotonicClock } from "../../src/core/clock.ts";
import { Election, leaderRecord } from "../../src/store/election.ts";
import { EtcdKv } from "../../src/store/etcd-kv.ts";
import { readRecord } from "../../src/store/typed.ts";
import { startEtcd, type LocalEtcd } from "../helpers/etcd.ts";
import { etcdSettings } from "../helpers/etcd-settings.ts";
import { startLinkProxy } from "../helpers/link-proxy.ts";
import { eventually } from "../helpers/eventually.ts";

/** etcd grants 2 s at least; 3 s leaves room for a loaded machine within the 2 TTL bound. */
const ttlMs = 3_000;
const marginMs = 1_000;

let etcd: LocalEtcd | undefined;
beforeAll(async () => {
  etcd = await startEtcd({ name: "election" });
});
afterAll(async () => {
  await etcd?.stop();
});

let runs = 0;
const freshKey = () => `/election-test/${++runs}/controller/election`;

/** What happened to whom, on the one clock of this process. */
type Timeline = { who: string; what: "elected" | "lost"; atMs: number }[];

function candidate(kv: EtcdKv, key: string, who: string, timeline: Timeline): Election {
  return new Election(kv, key, monotonicClock, {
    ttlMs,
    marginMs,
    onElected: () => timeline.push({ who, what: "elected", atMs: monotonicClock.nowMs() }),
    onLost: () => timeline.push({ who, what: "lost", atMs: monotonicClock.nowMs() }),
  });
}

/** Checks every few ms that no two of `elections` lead at once, until stop(). */
function watchOverlap(elections: Election[]) {
  let checks = 0;
  const overlaps: number[] = [];
  const timer = setInterval(() => {
    const now = monotonicClock.nowMs();
    if (elections.filter((e) => e.isLeader(now)).length > 1) overlaps.push(now);
    checks++;
  }, 5);
  return {
    stop: () => {
      clearInterval(timer);
      expect(checks).toBeGreaterThan(0);
      expect(overlaps).toEqual([]);
    },
  };
}

test("a leader process SIGKILLed: a standby leads within 2 TTL", async () => {
  const key = freshKey();
  const imports = (path: string) => JSON.stringify(`${import.meta.dir}/${path}`);
  const script = `
    import { monotonicClock } from ${imports("../../src/core/clock.ts")};
    import { Election } from ${imports("../../src/store/election.ts")};
    import { EtcdKv } from ${imports("../../src/store/etcd-kv.ts")};
    import { etcdSettings } from ${imports("../helpers/etcd-settings.ts")};
    const kv = EtcdKv.connect(etcdSettings({ endpoint: ${JSON.stringify(etcd!.endpoint)} }), "management");
    await new Election(kv, ${JSON.stringify(key)}, monotonicClock, { ttlMs: ${ttlMs}, marginMs: ${marginMs} }).campaign("ctl-doomed");
    console.log("leader");
    await Bun.sleep(30_000);`;
  const doomed = Bun.spawn([process.execPath, "-e", script], { stdout: "pipe", stderr: "ignore" });
  const kv = EtcdKv.connect(etcdSettings({ endpoint: etcd!.endpoint }), "management");
  const timeline: Timeline = [];
  const standby = candidate(kv, key, "standby", timeline);
  try {
    const { value } = await Promise.race([doomed.stdout.getReader().read(), Bun.sleep(15_000).then(() => ({ value: undefined }))]);
    expect(new TextDecoder().decode(value)).toBe("leader\n");
    void standby.campaign("ctl-standby");
    await Bun.sleep(500);
    expect(standby.isLeader(monotonicClock.nowMs())).toBe(false);
    const killedAtMs = monotonicClock.nowMs();
    doomed.kill("SIGKILL");
    await eventually("the standby's election", () => timeline.length > 0, 4 * ttlMs);
    expect(timeline[0]!.atMs - killedAtMs).toBeLessThanOrEqual(2 * ttlMs);
    const record = await readRecord(kv, key, leaderRecord);
    expect(record !== undefined && "record" in record ? record.record.name : undefined).toBe("ctl-standby");
  } finally {
    doomed.kill("SIGKILL");
    await doomed.exited;
    await standby.resign();
    kv.close();
  }
});

test("a leader whose link to etcd is cut (packets dropped) stops leading before the standby leads", async () => {
  const key = freshKey();
  const proxy = await startLinkProxy(etcd!.endpoint);
  const cutKv = EtcdKv.connect(etcdSettings({ endpoint: proxy.endpoint, requestTimeoutMs: 2_000 }), "management");
  const kv = EtcdKv.connect(etcdSettings({ endpoint: etcd!.endpoint }), "management");
  const timeline: Timeline = [];
  const leader = candidate(cutKv, key, "leader", timeline);
  const standby = candidate(kv, key, "standby", timeline);
  const overlap = watchOverlap([leader, standby]);
  try {
    await leader.campaign("ctl-leader");
    void standby.campaign("ctl-standby");
    await Bun.sleep(300);
    proxy.cut("drop");
    await eventually("the standby's election", () => timeline.some((t) => t.who === "standby"), 4 * ttlMs);
    const lost = timeline.find((t) => t.who === "leader" && t.what === "lost");
    const elected = timeline.find((t) => t.who === "standby" && t.what === "elected");
    expect(lost).toBeDefined();
    expect(lost!.atMs).toBeLessThan(elected!.atMs);
    expect(leader.isLeader(monotonicClock.nowMs())).toBe(false);
  } finally {
    overlap.stop();
    proxy.restore(); // the leader's pending calls fail now instead of at their deadline
    await Promise.all([leader.resign(), standby.resign()]);
    cutKv.close();
    kv.close();
    await proxy.close();
  }
});

test("etcd frozen (SIGSTOP) for longer than the TTL: the leader stops leading before anyone leads again", async () => {
  const key = freshKey();
  const kvs = [0, 1].map(() => EtcdKv.connect(etcdSettings({ endpoint: etcd!.endpoint }), "management"));
  const timeline: Timeline = [];
  const leader = candidate(kvs[0]!, key, "leader", timeline);
  const standby = candidate(kvs[1]!, key, "standby", timeline);
  const overlap = watchOverlap([leader, standby]);
  try {
    await leader.campaign("ctl-leader");
    void standby.campaign("ctl-standby");
    await Bun.sleep(300);
    const stoppedAtMs = monotonicClock.nowMs();
    process.kill(etcd!.pid, "SIGSTOP");
    try {
      await eventually("the leader's loss", () => timeline.some((t) => t.what === "lost"), 2 * ttlMs);
      expect(leader.isLeader(monotonicClock.nowMs())).toBe(false);
      await Bun.sleep(500);
    } finally {
      process.kill(etcd!.pid, "SIGCONT");
    }
    // Either may win once etcd has expired the lease: not before the loss.
    await eventually("a new election", () => timeline.filter((t) => t.what === "elected").length > 1, 4 * ttlMs);
    const lost = timeline.find((t) => t.what === "lost")!;
    const next = timeline.filter((t) => t.what === "elected")[1]!;
    expect(lost.atMs - stoppedAtMs).toBeLessThanOrEqual(ttlMs);
    expect(next.atMs).toBeGreaterThan(lost.atMs);
  } finally {
    overlap.stop();
    await Promise.all([leader.resign(), standby.resign()]);
    for (const kv of kvs) kv.close();
  }
});
