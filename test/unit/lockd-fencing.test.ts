/**
 * lockd's fencing timeline on virtual time and in-memory storage: when the host lease cannot be
 * renewed, the VMs under its leases are stopped one I/O timeout before renewal-fail — and not
 * when storage comes back in time. T = 1 s: fail at 8 s, fencing at 7 s after the last renewal.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Writable } from "node:stream";
import { configureLogging } from "../../src/log.ts";
import { LockDaemon, type LockdEnvironment } from "../../src/lockd/lock-daemon.ts";
import type { HeldLease } from "../../src/lockd/state-file.ts";
import type { MemoryDevice } from "../../src/lease/memory-device.ts";
import { MemoryLockspace } from "../helpers/memory-lockspace.ts";

const T = 1_000;

// lockd logs every failed renewal and the fencing; here that is expected, not news.
beforeAll(() => configureLogging({ level: "error", format: "json", stream: new Writable({ write: (_chunk, _encoding, done) => done() }) }));
afterAll(() => configureLogging({ level: "info", format: "human" }));

async function daemonOn(space: MemoryLockspace) {
  const devices: MemoryDevice[] = [];
  const fenced: Array<{ atMs: number; vms: string[]; reason: string }> = [];
  const env: LockdEnvironment = {
    clock: space.clock,
    openDevice: async (path) => {
      const device = space.device(`${path}#${devices.length}`);
      devices.push(device);
      return device;
    },
    bootId: "boot-1",
    pid: 1234,
    lockdAlive: async () => false,
    installId: "c".repeat(32),
    store: { name: "memory", read: async () => undefined, write: async () => {} },
    fence: async (leases: readonly HeldLease[], reason: string) => {
      fenced.push({ atMs: space.clock.nowMs(), vms: leases.map((l) => l.resource), reason });
    },
  };
  const daemon = await space.clock.run(LockDaemon.start({ leaseFile: "leases", hostId: 1, hostName: "host-1", ioTimeoutMs: T, idAllocation: "unique" }, env));
  return { daemon, devices, fenced };
}

describe("lockd fencing", () => {
  test("storage hangs: the leased VMs are stopped at renewal-fail minus T, once, and leases are dropped", async () => {
    const space = await MemoryLockspace.create();
    const { daemon, devices, fenced } = await daemonOn(space);
    for (const [slot, vm] of ["vm-a", "vm-b"].entries()) {
      expect(await space.clock.run(daemon.handle({ id: slot, op: "acquire", vm, slot }))).toMatchObject({ ok: true });
    }
    await space.clock.advance(3 * T); // renewals go on
    const lastRenewalMs = daemon.lease.lastRenewalStartMs;
    for (const device of devices) device.setFault({ kind: "hang" });
    await space.clock.advance(7 * T - 1 - (space.clock.nowMs() - lastRenewalMs));
    expect(fenced).toEqual([]);
    await space.clock.advance(1);
    expect(fenced).toHaveLength(1);
    expect(fenced[0]).toMatchObject({ atMs: lastRenewalMs + 7 * T, vms: ["vm-a", "vm-b"] });
    expect(fenced[0]!.reason).toContain("no successful renewal");
    await space.clock.advance(20 * T);
    expect(fenced).toHaveLength(1);
    const status = daemon.status();
    expect(status).toMatchObject({ phase: "failed", leases: [], fenced: { vms: ["vm-a", "vm-b"] } });
    expect(await space.clock.run(daemon.handle({ id: 9, op: "acquire", vm: "vm-c", slot: 2 }))).toMatchObject({ ok: false, error: "not-owner" });
    for (const device of devices) device.setFault(undefined);
    await space.clock.run(daemon.stop());
  });

  test("storage comes back before the fencing point: nothing is stopped", async () => {
    const space = await MemoryLockspace.create();
    const { daemon, devices, fenced } = await daemonOn(space);
    await space.clock.run(daemon.handle({ id: 1, op: "acquire", vm: "vm-a", slot: 0 }));
    for (const device of devices) device.setFault({ kind: "hang" });
    await space.clock.advance(5 * T);
    expect(daemon.status()).toMatchObject({ phase: "warn" });
    for (const device of devices) device.setFault(undefined);
    await space.clock.advance(20 * T);
    expect(fenced).toEqual([]);
    expect(daemon.status()).toMatchObject({ phase: "ok", fenced: null, leases: [{ vm: "vm-a" }] });
    await space.clock.run(daemon.stop());
  });
});
