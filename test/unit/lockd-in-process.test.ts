/**
 * The agent's lease client (LockdVmLeases) against real lockds in this process: two LockDaemons
 * on one in-memory lockspace, virtual time, the in-process transport (what the simulator uses
 * instead of sockets). Real Disk Paxos behind the agent's interface: one holder at a time, a
 * held lease named with its holder and when it can be free, taken over only once its holder is
 * dead by the lease algorithm.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { Writable } from "node:stream";
import { LockdVmLeases } from "../../src/agent/vm-leases.ts";
import { inProcessTransport } from "../../src/lockd/client.ts";
import { LockDaemon, type LockdEnvironment } from "../../src/lockd/lock-daemon.ts";
import { configureLogging } from "../../src/log.ts";
import { MemoryHypervisor } from "../../src/virt/memory-hypervisor.ts";
import { MemoryLockspace } from "../helpers/memory-lockspace.ts";

beforeAll(() => configureLogging({ level: "error", format: "json", stream: new Writable({ write: (_chunk, _encoding, done) => done() }) }));
afterAll(() => configureLogging({ level: "info", format: "human" }));

const ioTimeoutMs = 1_000;
const vm = "6c1a2b3c-0000-4000-8000-000000000001";

async function lockd(space: MemoryLockspace, hostId: number): Promise<LockDaemon> {
  const env: LockdEnvironment = {
    clock: space.clock,
    openDevice: async (path) => space.device(`${path}@host-${hostId}`),
    bootId: "boot-1",
    pid: 1000 + hostId,
    lockdAlive: async () => false,
    installId: hostId.toString(16).padStart(32, "a"),
    store: { name: "memory", read: async () => undefined, write: async () => undefined },
    hypervisor: new MemoryHypervisor(),
  };
  return await space.clock.run(LockDaemon.start({ leaseFile: "leases", hostId, hostName: `host-${hostId}`, ioTimeoutMs, idAllocation: "unique" }, env));
}

test("one holder at a time through the agent's interface; a dead holder's lease is taken once it can be free, not before", async () => {
  const space = await MemoryLockspace.create({ ioTimeoutMs, killBudgetMs: 6_000 });
  const [one, two] = [await lockd(space, 1), await lockd(space, 2)];
  const leasesOf = (daemon: LockDaemon, host: string) => new LockdVmLeases(`${host} (in process)`, inProcessTransport(daemon));
  const [leases1, leases2] = [leasesOf(one, "host-1"), leasesOf(two, "host-2")];

  expect(await space.clock.run(leases1.acquire(vm, 0))).toEqual({ kind: "acquired" });
  expect(await space.clock.run(leases1.acquire(vm, 0))).toEqual({ kind: "acquired" }); // idempotent
  const held = await space.clock.run(leases2.acquire(vm, 0));
  expect(held).toMatchObject({ kind: "held", holder: "host-1" });

  // Released: free for the other host at once.
  expect(await space.clock.run(leases1.release(vm, 0))).toBe(true);
  expect(await space.clock.run(leases1.release(vm, 0))).toBe(false);
  expect(await space.clock.run(leases2.acquire(vm, 0))).toEqual({ kind: "acquired" });

  // host-2 dies holding it (its lockd stops renewing): host-1 is told when it can be free, and gets it only then.
  await space.clock.run(two.stop());
  const diedAtMs = space.clock.nowMs();
  const waiting = await space.clock.run(leases1.acquire(vm, 0));
  expect(waiting).toMatchObject({ kind: "held", holder: "host-2" });
  const freeInMs = waiting.kind === "held" ? waiting.freeInMs : null;
  expect(freeInMs).not.toBeNull();
  await space.clock.advance(Math.max(0, freeInMs! - 500));
  expect(await space.clock.run(leases1.acquire(vm, 0))).toMatchObject({ kind: "held", holder: "host-2" });
  await space.clock.advance(1_000);
  expect(await space.clock.run(leases1.acquire(vm, 0))).toEqual({ kind: "acquired" });
  // Never before host-dead (8T + K) after host-2's last renewal, which was before it stopped.
  expect(space.clock.nowMs() - diedAtMs).toBeGreaterThanOrEqual(8 * ioTimeoutMs + 6_000 - 2 * ioTimeoutMs);
  await space.clock.run(one.stop());
});
