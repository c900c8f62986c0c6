/**
 * The lease engine on a real O_DIRECT file shared by several real processes (test/helpers/
 * lease-racer.ts), with kills and pauses. T = 100 ms, K = 200 ms: renewal 200 ms, fail 800 ms,
 * host dead 1000 ms.
 */
import { afterEach, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { readFile } from "node:fs/promises";
import { runFitha } from "../helpers/fitha.ts";
import { readJsonLines } from "../helpers/json-lines.ts";
import { machineClockNs } from "../helpers/machine-clock.ts";
import { tempDir, type TempDir } from "../helpers/tmp.ts";

const ioTimeoutMs = 100;
const hostDeadMs = 8 * ioTimeoutMs + 200;
const racerScript = join(import.meta.dir, "../helpers/lease-racer.ts");

/** One line of a racer's output (see test/helpers/lease-racer.ts). */
interface RacerEvent {
  host: number;
  at_ns: string;
  event: string;
  marker_ok?: boolean;
  start_ns?: string;
  end_ns?: string;
  started_ns?: string;
  reason?: string;
  error?: string;
}

class Racer {
  readonly events: RacerEvent[] = [];
  readonly #child: Bun.Subprocess<"ignore", "pipe", "inherit">;
  readonly #reading: Promise<void>;

  constructor(mode: string, path: string, hostId: number, extra?: string) {
    const child = Bun.spawn([process.execPath, racerScript, mode, path, String(hostId), String(ioTimeoutMs), ...(extra ? [extra] : [])], {
      stdin: "ignore",
      stdout: "pipe",
      stderr: "inherit",
    });
    this.#child = child;
    running.add(this);
    this.#reading = readJsonLines<RacerEvent>(child.stdout, (event) => this.events.push(event));
  }

  get pid(): number {
    return this.#child.pid;
  }

  /** Waits (bounded) for an event of this kind and returns it. */
  async waitFor(event: string, timeoutMs = 15_000): Promise<RacerEvent> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.events.find((e) => e.event === event);
      if (found) return found;
      if (Date.now() > deadline) throw new Error(`racer ${this.pid}: no "${event}" within ${timeoutMs} ms; saw ${JSON.stringify(this.events.slice(-5))}`);
      await Bun.sleep(5);
    }
  }

  async exited(): Promise<number> {
    const code = await this.#child.exited;
    await this.#reading;
    running.delete(this);
    return code;
  }

  kill(signal: NodeJS.Signals): void {
    this.#child.kill(signal);
  }
}

const running = new Set<Racer>();
afterEach(async () => {
  for (const racer of running) {
    racer.kill("SIGCONT");
    racer.kill("SIGKILL");
    await racer.exited();
  }
});

const nowNs = machineClockNs;
const ms = (ns: bigint | string) => Number(BigInt(ns) / 1_000_000n);

async function formatted(dir: TempDir, extra: string[] = []): Promise<string> {
  const path = join(dir.path, "leases");
  const result = await runFitha(["lease", "format", "--path", path, "--hosts", "8", "--slots", "2", "--max-io-timeout-ms", String(ioTimeoutMs), "--kill-budget-ms", "200", ...extra]);
  expect(result.stderr).toBe("");
  expect(result.exitCode).toBe(0);
  return path;
}

describe("leases on a real file, several processes", () => {
  test("4 processes racing for one VM lease for 100 rounds each: never two owners at once", async () => {
    await using dir = await tempDir("lease-race");
    const path = await formatted(dir);
    const racers = [1, 2, 3, 4].map((id) => new Racer("race", path, id, "100"));
    for (const racer of racers) expect(await racer.exited()).toBe(0);
    const owned = racers.flatMap((r) => r.events.filter((e) => e.event === "owned"));
    expect(owned.every((e) => e.marker_ok === true)).toBe(true);
    const intervals = owned.map((e) => ({ host: e.host, start: BigInt(e.start_ns!), end: BigInt(e.end_ns!) })).sort((a, b) => (a.start < b.start ? -1 : 1));
    for (let i = 1; i < intervals.length; i++) {
      expect({ i, overlap: intervals[i]!.start < intervals[i - 1]!.end }).toEqual({ i, overlap: false });
    }
    // Every process got the lease some of the time: the race was real.
    expect(new Set(intervals.map((i) => i.host)).size).toBe(4);
    expect(intervals.length).toBeGreaterThanOrEqual(40);
  }, 120_000);

  test("a SIGKILLed holder's lease is refused until host-dead after its last renewal, then taken by exactly one", async () => {
    await using dir = await tempDir("lease-kill");
    const path = await formatted(dir);
    const holder = new Racer("hold", path, 1);
    await holder.waitFor("acquired");
    const takers = [new Racer("take", path, 2), new Racer("take", path, 3)];
    for (const taker of takers) await taker.waitFor("joined");
    await Bun.sleep(300);
    holder.kill("SIGKILL");
    const killedNs = nowNs();
    await holder.exited();
    const lastRenewalNs = BigInt(holder.events.filter((e) => e.event === "renewed").at(-1)!.started_ns!);
    const winner = await Promise.any(takers.map((t) => t.waitFor("acquired", 10_000)));
    const takenAfterMs = ms(BigInt(winner.at_ns) - lastRenewalNs);
    expect(takenAfterMs).toBeGreaterThanOrEqual(hostDeadMs);
    expect(takenAfterMs).toBeLessThan(hostDeadMs + 1_500);
    expect(BigInt(winner.at_ns)).toBeGreaterThan(killedNs);
    // The other taker is still refused (the winner is alive).
    await Bun.sleep(500);
    expect(takers.filter((t) => t.events.some((e) => e.event === "acquired"))).toHaveLength(1);
  }, 60_000);

  test("a holder paused past fail finds out it lost the lease before acting as owner again", async () => {
    await using dir = await tempDir("lease-stop");
    const path = await formatted(dir);
    const holder = new Racer("hold", path, 1);
    await holder.waitFor("acquired");
    const taker = new Racer("take", path, 2);
    await taker.waitFor("joined");
    holder.kill("SIGSTOP");
    const taken = await taker.waitFor("acquired", 10_000);
    await Bun.sleep(100);
    holder.kill("SIGCONT");
    const lost = await holder.waitFor("lost", 5_000);
    expect(String(lost.reason)).toContain("no successful renewal");
    // Every marker the holder wrote as owner predates the takeover.
    const markers = (await readFile(`${path}.marker`, "utf8")).trim().split("\n").map((line) => BigInt(line.split(" ")[1]!));
    expect(markers.length).toBeGreaterThan(0);
    expect(markers.filter((at) => at >= BigInt(taken.at_ns))).toEqual([]);
  }, 60_000);

  test("a second process configured with a live host's id fails to join", async () => {
    await using dir = await tempDir("lease-same-id");
    const path = await formatted(dir);
    const first = new Racer("join", path, 3);
    await first.waitFor("joined");
    const second = new Racer("join", path, 3);
    const failed = await second.waitFor("join-failed", 10_000);
    expect(String(failed.error)).toMatch(/^host id 3 is in use by "racer-3-\d+"/);
    expect(first.events.some((e) => e.event === "renew-failed")).toBe(false);
  }, 30_000);
});

describe("fitha lease format / dump", () => {
  for (const sectorSize of [512, 4096]) {
    test(`round trip with ${sectorSize}-byte sectors, and a flipped byte is reported as corruption`, async () => {
      await using dir = await tempDir("lease-dump");
      const path = await formatted(dir, ["--sector-size", String(sectorSize), "--name", "lab"]);
      const empty = await runFitha(["lease", "dump", "--path", path, "--json"]);
      expect(empty.exitCode).toBe(0);
      expect(JSON.parse(empty.stdout)).toEqual({
        path,
        lockspace: { name: "lab", id: expect.stringMatching(/^[0-9a-f]{32}$/), sector_size: sectorSize, hosts: 8, slots: 2, max_io_timeout_ms: ioTimeoutMs, kill_budget_ms: 200 },
        hosts: [],
        leases: [],
        corrupt: [],
      });
      const holder = new Racer("take", path, 5);
      expect(await holder.exited()).toBe(0);
      const dump = JSON.parse((await runFitha(["lease", "dump", "--path", path, "--json"])).stdout);
      expect(dump.hosts).toEqual([{ host_id: 5, host_name: expect.stringMatching(/^racer-5-/), state: "held", generation: 1, timestamp_ms: expect.any(Number), io_timeout_ms: ioTimeoutMs, install_id: expect.any(String) }]);
      expect(dump.leases).toEqual([{ slot: 0, resource: "racer-vm", state: "held", owner_host_id: 5, owner_generation: 1, lver: 1 }]);
      const text = await runFitha(["lease", "dump", "--path", path]);
      expect(text.stdout).toContain("racer-vm");

      // Flip one byte inside slot 0's leader record.
      const file = Bun.file(path);
      const bytes = new Uint8Array(await file.arrayBuffer());
      const slotsOffset = Math.ceil((9 * sectorSize) / 4096) * 4096;
      bytes[slotsOffset + 20]! ^= 0x01;
      await Bun.write(path, bytes);
      const corrupt = await runFitha(["lease", "dump", "--path", path, "--json"]);
      expect(corrupt.exitCode).toBe(1);
      expect(JSON.parse(corrupt.stdout).corrupt).toEqual([expect.stringMatching(/lease slot 0 leader: corrupt lease record: checksum mismatch/)]);
    }, 30_000);
  }

  test("format refuses to overwrite a lockspace without --force", async () => {
    await using dir = await tempDir("lease-format");
    const path = await formatted(dir);
    const again = await runFitha(["lease", "format", "--path", path]);
    expect(again.exitCode).toBe(2);
    expect(again.stderr).toMatch(/already holds lockspace "fitha" \([0-9a-f]{32}\); use --force/);
    const forced = await runFitha(["lease", "format", "--path", path, "--hosts", "8", "--slots", "2", "--force"]);
    expect(forced.exitCode).toBe(0);
  });

  test("dump of a file that is not a lockspace, and of a corrupt header", async () => {
    await using dir = await tempDir("lease-format");
    const blank = join(dir.path, "blank");
    await Bun.write(blank, new Uint8Array(64 * 1024));
    const notFormatted = await runFitha(["lease", "dump", "--path", blank]);
    expect(notFormatted).toMatchObject({ exitCode: 1, stderr: `fitha: ${blank}: no lockspace here (run "fitha lease format" first)\n` });
    const path = await formatted(dir);
    const bytes = new Uint8Array(await Bun.file(path).arrayBuffer());
    bytes[50]! ^= 0xff;
    await Bun.write(path, bytes);
    const corrupt = await runFitha(["lease", "dump", "--path", path]);
    expect(corrupt.exitCode).toBe(1);
    expect(corrupt.stderr).toMatch(/header: corrupt lease record: checksum mismatch/);
  });
});
