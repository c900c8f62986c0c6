/** LockdVmLeases reading lockd's replies, from a stand-in lockd on a unix socket that answers as told. */
import { afterAll, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { LockdVmLeases } from "../../src/agent/vm-leases.ts";

const dir = mkdtempSync(join(tmpdir(), "fitha-vm-leases-"));
const socketPath = join(dir, "lockd.sock");
/** The reply (without its id) to the next request; the requests seen. */
let next: Record<string, unknown> = { ok: true };
const requests: unknown[] = [];
const server = Bun.listen<undefined>({
  unix: socketPath,
  socket: {
    data(socket, chunk) {
      const request = JSON.parse(chunk.toString().trim()) as { id: number };
      requests.push(request);
      socket.write(`${JSON.stringify({ id: request.id, ...next })}\n`);
    },
  },
});
afterAll(() => {
  server.stop(true);
  rmSync(dir, { recursive: true, force: true });
});

const vm = "6c1a2b3c-0000-4000-8000-000000000001";
const leases = LockdVmLeases.overSocket(socketPath, 2_000);

test("acquired; held by a named host with a free-in time; held by an unnamed one with none", async () => {
  next = { ok: true, lver: 3, already: false };
  expect(await leases.acquire(vm, 12)).toEqual({ kind: "acquired" });
  expect(requests.at(-1)).toMatchObject({ op: "acquire", vm, slot: 12 });

  next = { ok: false, error: "held", message: "held", owner: { host_id: 2, generation: 4, host_name: "host-2", dead_in_ms: 41_234.6 } };
  expect(await leases.acquire(vm, 12)).toEqual({ kind: "held", holder: "host-2", freeInMs: 41_235 });

  next = { ok: false, error: "held", message: "held", owner: { host_id: 7, generation: 1, host_name: null, dead_in_ms: null } };
  expect(await leases.acquire(vm, 12)).toEqual({ kind: "held", holder: "host id 7", freeInMs: null });
});

test("any other refusal is an error naming lockd's reason; release says whether it was held", async () => {
  next = { ok: false, error: "io", message: "lease storage: read timed out" };
  await expect(leases.acquire(vm, 12)).rejects.toThrow("read timed out");
  next = { ok: true, released: true };
  expect(await leases.release(vm, 12)).toBe(true);
  next = { ok: true, released: false };
  expect(await leases.release(vm, 12)).toBe(false);
  expect(requests.at(-1)).toMatchObject({ op: "release", vm, slot: 12 });
});
