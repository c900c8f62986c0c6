/** `fitha lockd` and the lease client commands, as real processes on a real lease file. T = 0.5 s. */
import { afterEach, describe, expect, test } from "bun:test";
import { open, stat } from "node:fs/promises";
import { LockdQuestionsClient } from "../../src/agent/lockd-questions.ts";
import type { LockdNotice } from "../../src/agent/fencing-bridge.ts";
import { monotonicClock } from "../../src/core/clock.ts";
import { eventually } from "../helpers/eventually.ts";
import { join } from "node:path";
import { runFitha } from "../helpers/fitha.ts";
import { formatLeaseFile as formatted, killStartedLockds, lockdHost as host, startLockd, testIoTimeoutS as ioTimeoutS, type LockdHost as Host } from "../helpers/lockd.ts";
import { tempDir } from "../helpers/tmp.ts";

const failMs = 8 * ioTimeoutS * 1000;

afterEach(killStartedLockds);

async function status(h: Host) {
  const result = await runFitha(["lease", "status", "--socket", h.socket, "--json"]);
  expect(result.exitCode).toBe(0);
  return JSON.parse(result.stdout);
}

describe("fitha lockd", () => {
  test("acquire and release through lockd; another live host is refused with exit 3 and the owner named", async () => {
    await using dir = await tempDir("lockd-basic");
    await formatted(dir);
    const [a, b] = [host(dir, 1), host(dir, 2)];
    await Promise.all([startLockd(a), startLockd(b)]);
    expect((await stat(a.socket)).mode & 0o777).toBe(0o600);
    const first = await runFitha(["lease", "acquire", "vm-1", "--slot", "3", "--socket", a.socket]);
    expect(first).toEqual({ exitCode: 0, stdout: "vm-1: lease acquired (slot 3, version 1)\n", stderr: "" });
    const refused = await runFitha(["lease", "acquire", "vm-1", "--slot", "3", "--socket", b.socket]);
    expect(refused.exitCode).toBe(3);
    expect(refused.stderr).toBe('fitha: lease of vm-1 is held by "host-1" (host id 1), generation 1\n');
    const report = await status(a);
    expect(report).toMatchObject({ host_id: 1, host_name: "host-1", generation: 1, started_by: "joined", phase: "ok", lost_reason: null, leases: [{ slot: 3, vm: "vm-1", lver: 1 }] });
    expect(report.hosts.map((h: { host_id: number; state: string }) => [h.host_id, h.state])).toEqual([[1, "live"], [2, "live"]]);
    const inquire = await runFitha(["lease", "inquire", "--slot", "3", "--socket", b.socket, "--json"]);
    expect(JSON.parse(inquire.stdout)).toEqual({ slot: 3, vm: "vm-1", state: "held", owner_host_id: 1, owner_generation: 1, lver: 1, unfinished_lver: null });
    expect((await runFitha(["lease", "release", "vm-1", "--slot", "3", "--socket", a.socket])).stdout).toBe("vm-1: lease released\n");
    expect((await runFitha(["lease", "acquire", "vm-1", "--slot", "3", "--socket", b.socket])).exitCode).toBe(0);
    expect((await runFitha(["lease", "acquire", "vm-2", "--slot", "3", "--socket", a.socket])).stderr).toContain('lease slot 3 holds "vm-1", not "vm-2"');
  }, 60_000);

  test("kill -9 and restart within the renewal window: same incarnation, every lease still held", async () => {
    await using dir = await tempDir("lockd-restart");
    await formatted(dir);
    const a = host(dir, 1);
    const first = await startLockd(a);
    for (let slot = 0; slot < 5; slot++) expect((await runFitha(["lease", "acquire", `vm-${slot}`, "--slot", String(slot), "--socket", a.socket])).exitCode).toBe(0);
    first.kill("SIGKILL");
    await first.exited;
    await startLockd(a);
    const report = await status(a);
    expect(report).toMatchObject({ generation: 1, started_by: "resumed", phase: "ok" });
    expect(report.leases.map((l: { vm: string }) => l.vm)).toEqual(["vm-0", "vm-1", "vm-2", "vm-3", "vm-4"]);
    expect((await runFitha(["lease", "acquire", "vm-2", "--slot", "2", "--socket", a.socket])).stdout).toBe("vm-2: lease acquired (slot 2, version 1, already held)\n");
  }, 60_000);

  test("a restart after renewal-fail starts a new generation and reports the leases as lost", async () => {
    await using dir = await tempDir("lockd-late");
    await formatted(dir);
    const a = host(dir, 1);
    const first = await startLockd(a);
    expect((await runFitha(["lease", "acquire", "vm-0", "--slot", "0", "--socket", a.socket])).exitCode).toBe(0);
    first.kill("SIGKILL");
    await first.exited;
    await Bun.sleep(failMs + 500);
    const second = await startLockd(a);
    const report = await status(a);
    expect(report).toMatchObject({ generation: 2, started_by: "joined", leases: [] });
    second.kill("SIGTERM");
    const log = await new Response(second.stderr).text();
    expect(log).toContain("could not resume the previous host lease; its VM leases are lost");
    expect(log).toContain('"lost_leases":["vm-0"]');
  }, 60_000);

  test("a damaged lease record: the request is refused as corrupt and subscribers are told (the agent records lease-corrupt)", async () => {
    await using dir = await tempDir("lockd-corrupt");
    await formatted(dir);
    const a = host(dir, 1);
    await startLockd(a);
    const notices: LockdNotice[] = [];
    const subscription = LockdQuestionsClient.overSocket(a.socket, monotonicClock).subscribe(
      () => {},
      (notice) => notices.push(notice),
    );
    try {
      await eventually("subscribed", async () => (await status(a)).subscribers === 1, 5_000);
      // Flip one byte inside slot 0's leader record, in place (lockd renews its host sector meanwhile).
      const { lockspace } = JSON.parse((await runFitha(["lease", "dump", "--path", join(dir.path, "leases"), "--json"])).stdout) as { lockspace: { sector_size: number } };
      const slotsOffset = Math.ceil((9 * lockspace.sector_size) / 4096) * 4096;
      const file = await open(join(dir.path, "leases"), "r+");
      try {
        const byte = new Uint8Array(1);
        await file.read(byte, 0, 1, slotsOffset + 20);
        byte[0]! ^= 0x01;
        await file.write(byte, 0, 1, slotsOffset + 20);
        await file.sync();
      } finally {
        await file.close();
      }
      const refused = await runFitha(["lease", "acquire", "vm-1", "--slot", "0", "--socket", a.socket]);
      expect(refused.exitCode).not.toBe(0);
      expect(refused.stderr).toContain("slot 0 leader: corrupt lease record");
      await eventually("the corrupt notice", () => notices.length > 0, 2_000);
      expect(notices[0]).toMatchObject({ event: "corrupt", op: "acquire", message: expect.stringContaining("slot 0 leader: corrupt lease record") });
    } finally {
      subscription.close();
    }
  }, 60_000);

  test("a second lockd on the same state dir refuses to start while the first runs", async () => {
    await using dir = await tempDir("lockd-twice");
    await formatted(dir);
    const a = host(dir, 1);
    await startLockd(a);
    const second = await runFitha([...a.args.slice(0, -2), "--socket", join(dir.path, "other.sock")], { timeoutMs: 20_000 });
    expect(second.exitCode).toBe(1);
    expect(second.stderr).toMatch(/^fitha: lockd: host id 1 is in use by the lockd running as pid \d+ \(same state: .*state\.json\)/);
  }, 60_000);

  test("malformed, oversized and half-sent requests get an error or are dropped; lockd keeps serving", async () => {
    await using dir = await tempDir("lockd-socket");
    await formatted(dir);
    const a = host(dir, 1);
    await startLockd(a);
    const exchange = async (payload: string, endAfter = false): Promise<string> => {
      let received = "";
      const socket = await Bun.connect({ unix: a.socket, socket: { data(_s, chunk) { received += chunk.toString(); } } });
      socket.write(payload);
      if (endAfter) socket.end();
      const deadline = Date.now() + 3_000;
      while (!received.includes("\n") && Date.now() < deadline) await Bun.sleep(10);
      socket.end();
      return received;
    };
    expect(JSON.parse(await exchange("garbage\n"))).toEqual({ id: null, ok: false, error: "bad-request", message: "not JSON" });
    expect(JSON.parse(await exchange('{"id":7,"op":"launch"}\n'))).toEqual({ id: 7, ok: false, error: "bad-request", message: 'unknown op "launch"' });
    expect(JSON.parse(await exchange('{"id":8,"op":"acquire","vm":"x","slot":-1}\n'))).toMatchObject({ id: 8, ok: false, error: "bad-request" });
    expect(JSON.parse(await exchange(`${"x".repeat(10_000)}\n`))).toMatchObject({ ok: false, error: "bad-request", message: "request longer than 4096 bytes" });
    expect(await exchange('{"id":9,"op":"sta', true)).toBe("");
    expect(JSON.parse(await exchange('{"id":10,"op":"acquire","vm":"vm-x","slot":99}\n'))).toEqual({ id: 10, ok: false, error: "bad-request", message: "slot 99 is outside 0..7" });
    expect((await status(a)).phase).toBe("ok");
  }, 60_000);
});
