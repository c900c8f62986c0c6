/**
 * The watchdog's decisions on virtual time, an in-memory hypervisor and lockd's state as a
 * value: armed while validUntil is ahead, fires once it passes, idle when there is nothing to
 * protect or the state is another boot's, and not disarmed by a state file it cannot read.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Writable } from "node:stream";
import { VirtualClock } from "../../src/core/clock.ts";
import { configureLogging } from "../../src/log.ts";
import { StateFileError, stateFormatVersion, type LockdState } from "../../src/lockd/state-file.ts";
import { Watchdog } from "../../src/lockd/watchdog.ts";
import { MemoryHypervisor } from "../../src/virt/memory-hypervisor.ts";
import type { KillOutcome } from "../../src/virt/qemu-processes.ts";

beforeAll(() => configureLogging({ level: "error", format: "json", stream: new Writable({ write: (_chunk, _encoding, done) => done() }) }));
afterAll(() => configureLogging({ level: "info", format: "human" }));

const T = 1_000;

function state(validUntilMs: number, vms: readonly string[], bootId = "boot-1"): LockdState {
  return {
    version: stateFormatVersion,
    bootId,
    pid: 4321,
    leaseFile: "/shared/leases",
    lockspaceId: "a".repeat(32),
    incarnation: { hostId: 1, hostName: "host-1", installId: "b".repeat(32), ioTimeoutMs: T, generation: 1, recordTimestampsMs: [1], lastRenewalStartMs: validUntilMs - 8 * T },
    validUntilMs,
    leases: vms.map((resource, slot) => ({ slot, resource, lver: 1 })),
  };
}

async function setup(vms: readonly string[]) {
  const clock = new VirtualClock();
  const hypervisor = new MemoryHypervisor();
  for (const vm of vms) {
    await hypervisor.define(`<domain type='test'><name>${vm}</name></domain>`);
    await hypervisor.start(vm);
  }
  let current: LockdState | Error | undefined;
  const kills: string[] = [];
  const watchdog = new Watchdog({
    clock,
    hypervisor,
    bootId: "boot-1",
    store: {
      name: "memory",
      read: async () => {
        if (current instanceof Error) throw current;
        return current;
      },
      write: async () => {},
    },
    killer: { kill: async (vm): Promise<KillOutcome> => (kills.push(vm), { outcome: "killed", pid: 1 }) },
  });
  const running = async () => (await hypervisor.listDomains()).filter((d) => d.state === "running").map((d) => d.name);
  return { clock, hypervisor, watchdog, kills, running, set: (value: LockdState | Error | undefined) => (current = value) };
}

describe("watchdog", () => {
  test("armed until validUntil; at validUntil it stops every VM of the state, once", async () => {
    const w = await setup(["vm-a", "vm-b"]);
    const validUntilMs = w.clock.nowMs() + 8 * T;
    w.set(state(validUntilMs, ["vm-a", "vm-b"]));
    expect(await w.watchdog.check()).toEqual({ state: "armed", firesInMs: 8 * T, vms: 2 });
    await w.clock.advance(8 * T - 1);
    expect(await w.watchdog.check()).toMatchObject({ state: "armed", firesInMs: 1 });
    expect(await w.running()).toEqual(["vm-a", "vm-b"]);
    await w.clock.advance(1);
    expect(await w.watchdog.check()).toEqual({ state: "fired", stopped: ["vm-a", "vm-b"], failed: [] });
    expect(await w.running()).toEqual([]);
    // Confirmed stopped: not destroyed again on every poll.
    expect(await w.watchdog.check()).toEqual({ state: "fired", stopped: [], failed: [] });
    expect(w.watchdog.pollIntervalMs(1_000)).toBe(T / 4);
  });

  test("a renewal (a newer state) re-arms it; no leases or another boot's state: idle", async () => {
    const w = await setup(["vm-a"]);
    w.set(state(w.clock.nowMs() + 2 * T, ["vm-a"]));
    await w.clock.advance(T);
    w.set(state(w.clock.nowMs() + 8 * T, ["vm-a"]));
    await w.clock.advance(2 * T);
    expect(await w.watchdog.check()).toMatchObject({ state: "armed" });
    w.set(state(w.clock.nowMs() - 1, []));
    expect(await w.watchdog.check()).toEqual({ state: "idle", why: "no leases held" });
    w.set(state(w.clock.nowMs() - 1, ["vm-a"], "boot-0"));
    expect(await w.watchdog.check()).toEqual({ state: "idle", why: "the state is from an earlier boot" });
    w.set(undefined);
    expect(await w.watchdog.check()).toEqual({ state: "idle", why: "no lockd state" });
    expect(await w.running()).toEqual(["vm-a"]);
  });

  test("an unreadable state file does not disarm it: the last good state still fires", async () => {
    const w = await setup(["vm-a"]);
    w.set(state(w.clock.nowMs() + 8 * T, ["vm-a"]));
    await w.watchdog.check();
    w.set(new StateFileError("state.json", "not valid JSON"));
    await w.clock.advance(8 * T);
    expect(await w.watchdog.check()).toEqual({ state: "fired", stopped: ["vm-a"], failed: [] });
  });

  test("a hung hypervisor: the VM's process is killed directly", async () => {
    const w = await setup(["vm-a"]);
    w.hypervisor.injectFailure("destroy", "vm-a", { kind: "unanswered", message: "timed out after 10000 ms" });
    w.set(state(w.clock.nowMs(), ["vm-a"]));
    expect(await w.watchdog.check()).toEqual({ state: "fired", stopped: ["vm-a"], failed: [] });
    expect(w.kills).toEqual(["vm-a"]);
  });
});
