/**
 * fitha's lease engine side by side with sanlock, on the same file system in the same run.
 *   node_modules/.bin/bun scripts/bench/lease.ts [--io-timeout-s 10] [--rounds 200] [--held 1,100,1000] [--takeover]
 * Results (with machine and date) go to scripts/bench/README.md by hand.
 *
 * Both sides are measured the same way: wall time per operation, and storage bytes per operation
 * from /proc/PID/io (read_bytes/write_bytes: what actually reached the block layer, which for
 * O_DIRECT is every byte) — fitha's own process, sanlock's daemon.
 */
import { parseArgs } from "node:util";
import { join } from "node:path";
import { mkdtemp, rm } from "node:fs/promises";
import { monotonicClock } from "../../src/core/clock.ts";
import { DeltaLease, type JoinOptions } from "../../src/lease/delta-lease.ts";
import { DirectDevice } from "../../src/lease/direct-device.ts";
import { formatLockspace } from "../../src/lease/lease-file.ts";
import { layout } from "../../src/lease/layout.ts";
import { acquireLease, releaseLease } from "../../src/lease/paxos-lease.ts";

const { values } = parseArgs({
  options: {
    "io-timeout-s": { type: "string", default: "10" },
    rounds: { type: "string", default: "200" },
    held: { type: "string", default: "1,100,1000" },
    takeover: { type: "boolean", default: false },
    "skip-sanlock": { type: "boolean", default: false },
  },
});
const ioTimeoutMs = Number(values["io-timeout-s"]) * 1000;
const rounds = Number(values.rounds);
const heldCounts = values.held.split(",").map(Number);
const hosts = 64;
const killBudgetMs = 60_000; // sanlock's fixed watchdog fire timeout, for a like-for-like host-dead

interface IoCounters {
  read_bytes: number;
  write_bytes: number;
}

async function procIo(): Promise<IoCounters> {
  const text = await Bun.file("/proc/self/io").text();
  const field = (name: string) => Number(/^(\w+): (\d+)$/m.exec(text.split("\n").find((l) => l.startsWith(`${name}:`)) ?? "")?.[2] ?? NaN);
  return { read_bytes: field("read_bytes"), write_bytes: field("write_bytes") };
}

async function ioOf(action: () => Promise<unknown>): Promise<IoCounters> {
  const before = await procIo();
  await action();
  const after = await procIo();
  return { read_bytes: after.read_bytes - before.read_bytes, write_bytes: after.write_bytes - before.write_bytes };
}

const percentile = (values: number[], fraction: number) => [...values].sort((a, b) => a - b)[Math.min(values.length - 1, Math.round(fraction * (values.length - 1)))]!;
const median = (values: number[]) => percentile(values, 0.5);
const medianIo = (deltas: IoCounters[]): IoCounters => ({ read_bytes: median(deltas.map((d) => d.read_bytes)), write_bytes: median(deltas.map((d) => d.write_bytes)) });
const timed = async <T>(action: () => Promise<T>): Promise<[T, number]> => {
  const start = performance.now();
  const value = await action();
  return [value, performance.now() - start];
};

function joinOptions(hostId: number, idAllocation: JoinOptions["idAllocation"]): JoinOptions {
  return { hostId, hostName: `bench-${hostId}`, installId: hostId.toString(16).padStart(32, "0"), ioTimeoutMs, idAllocation };
}

async function benchFitha(dir: string) {
  const path = join(dir, "fitha-leases");
  const slots = Math.max(...heldCounts) + 1;
  await Bun.write(path, new Uint8Array(0));
  const { truncate } = await import("node:fs/promises");
  await truncate(path, layout({ sectorSize: 512, hosts, slots }).totalBytes);
  const device = await DirectDevice.open(path);
  const result: Record<string, unknown> = {};
  try {
    await formatLockspace(device, { sectorSize: 512, hosts, slots, name: "bench", maxIoTimeoutMs: ioTimeoutMs, killBudgetMs, force: true, ioTimeoutMs });
    const [lease, joinMs] = await timed(() => DeltaLease.join(device, monotonicClock, joinOptions(1, "unique")));
    result["join_ms"] = joinMs;
    const [configured, configuredJoinMs] = await timed(() => DeltaLease.join(device, monotonicClock, joinOptions(2, "configured")));
    result["join_configured_id_ms"] = configuredJoinMs;
    await configured.release();

    // Timing and I/O accounting are separate passes, so that reading /proc never lands inside a
    // timed operation. Release passes the acquired version, as lockd does (one write).
    const cycleOnce = async (measure: <T>(what: "acquire" | "release", action: () => Promise<T>) => Promise<T>) => {
      const acquired = await measure("acquire", () => acquireLease(lease, 0, "vm0"));
      if (acquired.status !== "acquired") throw new Error("benchmark lease not acquired");
      await measure("release", () => releaseLease(lease, 0, "vm0", { lver: acquired.lver }));
      // Renew as lockd would, so the host lease never ages past warn during a long run.
      if (monotonicClock.nowMs() - lease.lastRenewalStartMs > lease.timeline.renewalIntervalMs) await lease.renew();
    };
    const ms: Record<"acquire" | "release", number[]> = { acquire: [], release: [] };
    for (let round = 0; round < rounds; round++) {
      await cycleOnce(async (what, action) => {
        const [value, elapsed] = await timed(action);
        ms[what].push(elapsed);
        return value;
      });
    }
    const io: Record<"acquire" | "release", IoCounters[]> = { acquire: [], release: [] };
    for (let round = 0; round < Math.min(rounds, 50); round++) {
      await cycleOnce(async (what, action) => {
        let value: Awaited<ReturnType<typeof action>> | undefined;
        io[what].push(await ioOf(async () => (value = await action())));
        return value!;
      });
    }
    const cycle = ms.acquire.map((a, i) => a + ms.release[i]!);
    result["acquire_ms"] = { p50: median(ms.acquire), p99: percentile(ms.acquire, 0.99) };
    result["release_ms"] = { p50: median(ms.release), p99: percentile(ms.release, 0.99) };
    result["cycle_ms"] = { p50: median(cycle), p99: percentile(cycle, 0.99) };
    result["io_per_acquire"] = medianIo(io.acquire);
    result["io_per_release"] = medianIo(io.release);

    const renewal: Record<string, IoCounters> = {};
    let held = 0;
    for (const target of heldCounts) {
      for (; held < target; held++) {
        if ((await acquireLease(lease, held, `vm${held}`)).status !== "acquired") throw new Error(`could not acquire slot ${held}`);
        if (monotonicClock.nowMs() - lease.lastRenewalStartMs > lease.timeline.renewalIntervalMs) await lease.renew();
      }
      const deltas: IoCounters[] = [];
      for (let i = 0; i < 5; i++) {
        deltas.push(await ioOf(async () => {
          const outcome = await lease.renew();
          if (!outcome.ok) throw new Error(outcome.reason);
        }));
      }
      renewal[String(target)] = medianIo(deltas);
    }
    result["renewal_io"] = renewal;

    if (values.takeover) result["takeover_ms_after_last_renewal"] = await takeover(device, lease);
  } finally {
    await device.close();
  }
  return result;
}

/**
 * Host 1 (holding slot 0 since the renewal test) stops renewing — dead, as if killed. Host 3
 * renews on schedule and asks for the lease every 100 ms, as a recovery task would.
 */
async function takeover(device: DirectDevice, dead: DeltaLease): Promise<number> {
  const diedAtMs = dead.lastRenewalStartMs;
  const taker = await DeltaLease.join(device, monotonicClock, joinOptions(3, "unique"));
  for (;;) {
    if (monotonicClock.nowMs() - taker.lastRenewalStartMs >= taker.timeline.renewalIntervalMs) await taker.renew();
    const result = await acquireLease(taker, 0, "vm0");
    if (result.status === "acquired") return monotonicClock.nowMs() - diedAtMs;
    await monotonicClock.sleep(100);
  }
}

async function benchSanlock(dir: string) {
  const script = join(import.meta.dir, "sanlock-lease.py");
  const child = Bun.spawn(["/usr/bin/python3", script, dir, String(ioTimeoutMs / 1000), String(rounds), heldCounts.join(","), values.takeover ? "1" : "0"], { stdout: "pipe", stderr: "inherit" });
  const output = await new Response(child.stdout).text();
  if ((await child.exited) !== 0) throw new Error("sanlock benchmark failed");
  return JSON.parse(output) as Record<string, unknown>;
}

const dir = await mkdtemp("/var/tmp/fitha-bench-lease-");
try {
  const fitha = await benchFitha(dir);
  // fitha's figures are worth printing even when the sanlock side fails.
  const sanlock = values["skip-sanlock"] ? undefined : await benchSanlock(dir).catch((error: Error) => ({ error: error.message }));
  console.log(JSON.stringify({ io_timeout_s: ioTimeoutMs / 1000, hosts, rounds, fitha, sanlock }, null, 2));
} finally {
  await rm(dir, { recursive: true, force: true });
}
