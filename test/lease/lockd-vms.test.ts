/**
 * lockd protecting real (test-driver) VMs, as real processes: a private libvirtd holds the VMs,
 * so they outlive lockd exactly as qemu processes outlive it on a compute host. T = 0.5 s:
 * renewal every 1 s, fencing at 3.5 s, renewal-fail at 4 s after the last renewal start.
 */
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { clockBoottimeMs } from "../../ffi/libc.ts";
import { DirectDevice } from "../../src/lease/direct-device.ts";
import { layout, slotOffset } from "../../src/lease/layout.ts";
import { encodeRecord } from "../../src/lease/records.ts";
import { requestLockd } from "../../src/lockd/client.ts";
import { LibvirtHypervisor } from "../../src/virt/libvirt-hypervisor.ts";
import { fithaBinary, runFitha } from "../helpers/fitha.ts";
import { domainXml, startLibvirtd, type LocalLibvirtd } from "../helpers/libvirtd.ts";
import { tempDir, type TempDir } from "../helpers/tmp.ts";

const ioTimeoutS = 0.5;
const slots = 64;
const started = new Set<Bun.Subprocess>();
let libvirtd: LocalLibvirtd;
let hypervisor: LibvirtHypervisor;

beforeAll(async () => {
  libvirtd = await startLibvirtd();
  hypervisor = await LibvirtHypervisor.open(libvirtd.uri);
});
afterAll(async () => {
  await hypervisor.close();
  await libvirtd.stop();
});
afterEach(async () => {
  for (const child of started) {
    child.kill("SIGCONT");
    child.kill("SIGKILL");
    await child.exited;
  }
  started.clear();
  for (const domain of await hypervisor.listDomains()) {
    if (domain.state === "running") await hypervisor.destroy(domain.name);
    await hypervisor.undefine(domain.name);
  }
});

interface Setup {
  dir: TempDir;
  leaseFile: string;
  socket: string;
  stateDir: string;
  lockdArgs: string[];
}

async function setup(label: string): Promise<Setup> {
  const dir = await tempDir(label);
  const leaseFile = join(dir.path, "leases");
  const format = await runFitha(["lease", "format", "--path", leaseFile, "--hosts", "4", "--slots", String(slots), "--max-io-timeout-ms", "1000", "--kill-budget-ms", "2000"]);
  expect(format.exitCode).toBe(0);
  const socket = join(dir.path, "run", "lockd.sock");
  const stateDir = join(dir.path, "state");
  const lockdArgs = ["lockd", "--lease-file", leaseFile, "--host-id", "1", "--host", "host-1", "--socket", socket, "--state-dir", stateDir, "--hypervisor", libvirtd.uri, "--io-timeout", String(ioTimeoutS), "--log-format", "json"];
  return { dir, leaseFile, socket, stateDir, lockdArgs };
}

function spawn(args: readonly string[]): Bun.Subprocess<"ignore", "ignore", "pipe"> {
  const child = Bun.spawn([fithaBinary, ...args], { stdin: "ignore", stdout: "ignore", stderr: "pipe", env: { PATH: "/usr/bin:/bin" } });
  started.add(child);
  return child;
}

/** Starts lockd and waits (bounded) until it answers on its socket. */
async function startLockd(s: Setup): Promise<Bun.Subprocess<"ignore", "ignore", "pipe">> {
  const child = spawn(s.lockdArgs);
  const deadline = Date.now() + 15_000;
  for (;;) {
    const reply = await requestLockd(s.socket, { op: "status" }, 2_000).catch(() => undefined);
    if (reply?.ok === true) return child;
    if (child.exitCode !== null) throw new Error(`lockd exited ${child.exitCode}: ${await new Response(child.stderr).text()}`);
    if (Date.now() > deadline) throw new Error(`lockd did not answer on ${s.socket}`);
    await Bun.sleep(50);
  }
}

async function status(s: Setup): Promise<{ started_by: string; phase: string; leases: Array<{ vm: string; slot: number }>; fenced: unknown }> {
  const reply = await requestLockd(s.socket, { op: "status" }, 5_000);
  expect(reply.ok).toBe(true);
  return (reply as unknown as { status: Awaited<ReturnType<typeof status>> }).status;
}

/** Defines and starts `count` VMs and takes their leases (slot i for vm-i) through lockd. */
async function vmsWithLeases(s: Setup, count: number): Promise<string[]> {
  const names = Array.from({ length: count }, (_, i) => `vm-${String(i).padStart(2, "0")}`);
  for (const name of names) {
    await hypervisor.define(domainXml(name));
    await hypervisor.start(name);
  }
  const replies = await Promise.all(names.map((vm, slot) => requestLockd(s.socket, { op: "acquire", vm, slot }, 30_000)));
  for (const reply of replies) expect(reply).toMatchObject({ ok: true });
  return names;
}

/** Our VMs that run (the test driver's own domain "test" is not one of them). */
async function running(): Promise<string[]> {
  return (await hypervisor.listDomains()).filter((d) => d.state === "running" && d.name.startsWith("vm-")).map((d) => d.name).sort();
}

/** Polls `condition` every 50 ms for at most `timeoutMs`. */
async function eventually(condition: () => Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`not within ${timeoutMs} ms: ${what}`);
    await Bun.sleep(50);
  }
}

describe("lockd with VMs", () => {
  test("kill -9 with 50 leases, restart within the window: all 50 VMs keep running; after 5 were taken meanwhile, exactly those 5 are destroyed", async () => {
    const s = await setup("lockd-vms-restart");
    await using _dir = s.dir;
    const first = await startLockd(s);
    const vms = await vmsWithLeases(s, 50);
    first.kill("SIGKILL");
    await first.exited;
    const second = await startLockd(s);
    expect(await status(s)).toMatchObject({ started_by: "resumed", phase: "ok" });
    expect((await status(s)).leases).toHaveLength(50);
    // Through several renewals and the re-validation after the resume: nothing stopped.
    await Bun.sleep(3 * 2 * ioTimeoutS * 1000);
    expect(await running()).toEqual(vms);
    expect((await status(s)).leases).toHaveLength(50);

    second.kill("SIGKILL");
    await second.exited;
    // Behind lockd's back (as a broken peer or a forced release would): host 2 now holds slots 0..4.
    const l = layout({ sectorSize: 512, hosts: 4, slots });
    const device = await DirectDevice.open(s.leaseFile);
    try {
      const taken = vms.slice(0, 5).map((vm, slot) => ({ kind: "write" as const, offset: slotOffset(l, slot), data: encodeRecord({ kind: "leader", slot, lver: 9, ownerHostId: 2, ownerGeneration: 1, state: "held", resource: vm }, 512) }));
      await device.io(taken, 5_000);
    } finally {
      await device.close();
    }
    await startLockd(s);
    expect(await status(s)).toMatchObject({ started_by: "resumed" });
    await eventually(async () => (await status(s)).leases.length === 45, 10_000, "re-validation drops the 5 taken leases");
    expect(await running()).toEqual(vms.slice(5));
    for (const vm of vms.slice(0, 5)) expect((await hypervisor.lookup(vm))?.state).toBe("shutoff");
  }, 90_000);

  test("SIGSTOP lockd past renewal-fail: the watchdog destroys the VMs at validUntil; after SIGCONT lockd does not act as owner", async () => {
    const s = await setup("lockd-vms-watchdog");
    await using _dir = s.dir;
    const lockd = await startLockd(s);
    const watchdog = spawn(["watchdog", "--state-dir", s.stateDir, "--hypervisor", libvirtd.uri, "--log-format", "json"]);
    const vms = await vmsWithLeases(s, 3);
    lockd.kill("SIGSTOP");
    const state = JSON.parse(await readFile(join(s.stateDir, "state.json"), "utf8")) as { validUntilMs: number; leases: unknown[] };
    expect(state.leases).toHaveLength(3);
    const fireInMs = state.validUntilMs - clockBoottimeMs();
    expect(fireInMs).toBeGreaterThan(0);
    // Until validUntil lockd is, as far as anyone can tell, fine: the VMs must keep running.
    await Bun.sleep(Math.max(0, fireInMs - 300));
    expect(await running()).toEqual(vms);
    await eventually(async () => (await running()).length === 0, 2_000 + 300, "the watchdog stops the VMs right after validUntil");
    expect(clockBoottimeMs()).toBeGreaterThanOrEqual(state.validUntilMs);

    lockd.kill("SIGCONT");
    await eventually(async () => (await status(s).catch(() => undefined))?.phase === "failed", 5_000, "lockd sees its lease lost");
    expect(await status(s)).toMatchObject({ phase: "failed", leases: [] });
    const acquire = await runFitha(["lease", "acquire", "vm-00", "--slot", "0", "--socket", s.socket]);
    expect(acquire.exitCode).toBe(1);
    expect(acquire.stderr).toContain("the host lease is not valid");
    expect(await running()).toEqual([]);
    watchdog.kill("SIGTERM");
    expect(await watchdog.exited).toBe(0);
    const log = await new Response(watchdog.stderr).text();
    expect(log).toContain("lockd did not renew in time: stopping the VMs under its leases");
  }, 60_000);
});
