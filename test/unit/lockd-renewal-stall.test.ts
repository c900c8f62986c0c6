/**
 * What lockd's keep-alives to systemd's watchdog stand for (LockDaemon.renewalStall): its renewal
 * loop moving. Storage that fails or hangs is not a stuck loop (each attempt is bounded by T and
 * retried: a restart would not help); a loop that stops moving (here: an I/O call that never
 * settles, which no real device does — a bug) is, once past 4T, early enough for a restart to
 * resume the incarnation before lockd would fence at 7T.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { Writable } from "node:stream";
import type { SectorDevice } from "../../src/lease/sector-device.ts";
import { LockDaemon, type LockdEnvironment } from "../../src/lockd/lock-daemon.ts";
import { configureLogging } from "../../src/log.ts";
import { MemoryHypervisor } from "../../src/virt/memory-hypervisor.ts";
import { MemoryLockspace } from "../helpers/memory-lockspace.ts";

beforeAll(() => configureLogging({ level: "error", format: "json", stream: new Writable({ write: (_chunk, _encoding, done) => done() }) }));
afterAll(() => configureLogging({ level: "info", format: "human" }));

const ioTimeoutMs = 1_000;

/** lockd on `space`; its renewal device (the first it opens) can be wedged: its I/O then never settles. */
async function lockd(space: MemoryLockspace) {
  const renewal = space.device("host-1-renewal");
  const control = { wedged: false };
  const wedgeable: SectorDevice = {
    name: renewal.name,
    sectorSize: renewal.sectorSize,
    sizeBytes: renewal.sizeBytes,
    io: (ops, timeoutMs) => (control.wedged ? new Promise<Uint8Array[]>(() => {}) : renewal.io(ops, timeoutMs)),
    close: () => renewal.close(),
  };
  let opened = 0;
  const env: LockdEnvironment = {
    clock: space.clock,
    openDevice: async () => (opened++ === 0 ? wedgeable : space.device("host-1-leases")),
    bootId: "boot-1",
    pid: 1001,
    lockdAlive: async () => false,
    installId: "a".repeat(32),
    store: { name: "memory", read: async () => undefined, write: async () => undefined },
    hypervisor: new MemoryHypervisor(),
  };
  const daemon = await space.clock.run(LockDaemon.start({ leaseFile: "leases", hostId: 1, hostName: "host-1", ioTimeoutMs, idAllocation: "unique" }, env));
  return { daemon, renewal, control };
}

test("hung storage is not a stuck loop: renewals keep failing within T and the loop counts as moving", async () => {
  const space = await MemoryLockspace.create({ ioTimeoutMs });
  const { daemon, renewal } = await lockd(space);
  expect(daemon.renewalStall()).toBeUndefined();
  renewal.setFault({ kind: "hang" });
  for (let step = 0; step < 12; step++) {
    await space.clock.advance(ioTimeoutMs / 2);
    expect(daemon.renewalStall()).toBeUndefined();
  }
  expect(daemon.lease.phase()).not.toBe("ok");
  renewal.setFault(undefined);
  await space.clock.run(daemon.stop());
});

test("a renewal loop that stops moving is reported past 4T, and not before", async () => {
  const space = await MemoryLockspace.create({ ioTimeoutMs });
  const { daemon, control } = await lockd(space);
  // Just after a renewal: the next one starts within 2T and never ends.
  await space.clock.advance(2 * ioTimeoutMs + 10);
  control.wedged = true;
  await space.clock.advance(3.5 * ioTimeoutMs);
  expect(daemon.renewalStall()).toBeUndefined();
  await space.clock.advance(2 * ioTimeoutMs);
  expect(daemon.renewalStall()).toMatch(/^the renewal loop has not moved for \d+ ms/);
  // stop() would wait for the wedged attempt for ever: this daemon is left behind, as a killed process would be.
});
