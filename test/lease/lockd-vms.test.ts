/**
 * lockd protecting real (test-driver) VMs, as real processes: a private libvirtd holds the VMs,
 * so they outlive lockd exactly as qemu processes outlive it on a compute host. T = 0.5 s:
 * question at 2 s, fencing at 3.5 s, renewal-fail at 4 s after the last renewal start.
 */
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { clockBoottimeMs } from "../../ffi/libc.ts";
import { DirectDevice } from "../../src/lease/direct-device.ts";
import { layout, slotOffset } from "../../src/lease/layout.ts";
import { encodeRecord } from "../../src/lease/records.ts";
import { requestLockd } from "../../src/lockd/client.ts";
import type { LockdEvent } from "../../src/lockd/protocol.ts";
import type { LockdNotice } from "../../src/agent/fencing-bridge.ts";
import { LibvirtHypervisor } from "../../src/virt/libvirt-hypervisor.ts";
import { LockdQuestionsClient } from "../../src/agent/lockd-questions.ts";
import { monotonicClock } from "../../src/core/clock.ts";
import { attachLoop, createBlkioCgroup, removeLeftovers } from "../helpers/block-device.ts";
import { daemonCommand, runFitha } from "../helpers/fitha.ts";
import { formatLeaseFile, killStartedLockds, lockdHost, startLockd, testIoTimeoutS, type LockdHost } from "../helpers/lockd.ts";
import { domainXml, startLibvirtd, type LocalLibvirtd } from "../helpers/libvirtd.ts";
import { tempDir } from "../helpers/tmp.ts";
import { eventually } from "../helpers/eventually.ts";

const slots = 64;
const watchdogs = new Set<Bun.Subprocess>();
let libvirtd: LocalLibvirtd;
let hypervisor: LibvirtHypervisor;

beforeAll(async () => {
  libvirtd = await startLibvirtd();
  hypervisor = await LibvirtHypervisor.open(libvirtd.uri);
});
afterAll(async () => {
  await hypervisor.close();
  await libvirtd.stop();
  await removeLeftovers();
});
afterEach(async () => {
  process.kill(libvirtd.pid, "SIGCONT"); // a test that stopped it may have failed before resuming it
  await killStartedLockds();
  for (const child of watchdogs) {
    child.kill("SIGKILL");
    await child.exited;
  }
  watchdogs.clear();
  for (const domain of await hypervisor.listDomains()) {
    if (domain.state === "running") await hypervisor.destroy(domain.name);
    await hypervisor.undefine(domain.name);
  }
});

async function status(h: LockdHost): Promise<{ started_by: string; phase: string; leases: Array<{ vm: string; slot: number }>; fenced: unknown }> {
  const reply = await requestLockd(h.socket, { op: "status" }, 5_000);
  expect(reply.ok).toBe(true);
  return (reply as unknown as { status: Awaited<ReturnType<typeof status>> }).status;
}

/** Defines and starts `count` VMs and takes their leases (slot i for vm-i) through lockd. */
async function vmsWithLeases(h: LockdHost, count: number): Promise<string[]> {
  const names = Array.from({ length: count }, (_, i) => `vm-${String(i).padStart(2, "0")}`);
  for (const name of names) {
    await hypervisor.define(domainXml(name));
    await hypervisor.start(name);
  }
  const replies = await Promise.all(names.map((vm, slot) => requestLockd(h.socket, { op: "acquire", vm, slot }, 30_000)));
  for (const reply of replies) expect(reply).toMatchObject({ ok: true });
  return names;
}

/** Our VMs that run (the test driver's own domain "test" is not one of them). */
async function running(): Promise<string[]> {
  return (await hypervisor.listDomains()).filter((d) => d.state === "running" && d.name.startsWith("vm-")).map((d) => d.name).sort();
}

describe("lockd with VMs", () => {
  test("kill -9 with 50 leases, restart within the window: all 50 VMs keep running; after 5 were taken meanwhile, exactly those 5 are destroyed", async () => {
    await using dir = await tempDir("lockd-vms-restart");
    await formatLeaseFile(dir, { slots });
    const h = lockdHost(dir, 1, { hypervisor: libvirtd.uri });
    const first = await startLockd(h);
    const vms = await vmsWithLeases(h, 50);
    first.kill("SIGKILL");
    await first.exited;
    const second = await startLockd(h);
    expect(await status(h)).toMatchObject({ started_by: "resumed", phase: "ok" });
    expect((await status(h)).leases).toHaveLength(50);
    // Through several renewals and the re-validation after the resume: nothing stopped.
    await Bun.sleep(3 * 2 * testIoTimeoutS * 1000);
    expect(await running()).toEqual(vms);
    expect((await status(h)).leases).toHaveLength(50);

    second.kill("SIGKILL");
    await second.exited;
    // Behind lockd's back (as a broken peer or a forced release would): host 2 now holds slots 0..4.
    const l = layout({ sectorSize: 512, hosts: 8, slots });
    const device = await DirectDevice.open(join(dir.path, "leases"));
    try {
      const taken = vms.slice(0, 5).map((vm, slot) => ({ kind: "write" as const, offset: slotOffset(l, slot), data: encodeRecord({ kind: "leader", slot, lver: 9, ownerHostId: 2, ownerGeneration: 1, state: "held", resource: vm }, 512) }));
      await device.io(taken, 5_000);
    } finally {
      await device.close();
    }
    await startLockd(h);
    expect(await status(h)).toMatchObject({ started_by: "resumed" });
    await eventually("re-validation drops the 5 taken leases", async () => (await status(h)).leases.length === 45, 10_000);
    expect(await running()).toEqual(vms.slice(5));
    for (const vm of vms.slice(0, 5)) expect((await hypervisor.lookup(vm))?.state).toBe("shutoff");
  }, 90_000);

  test("SIGSTOP lockd past renewal-fail: the watchdog destroys the VMs at validUntil; after SIGCONT lockd does not act as owner, exits, and a restart joins again", async () => {
    await using dir = await tempDir("lockd-vms-watchdog");
    await formatLeaseFile(dir);
    const h = lockdHost(dir, 1, { hypervisor: libvirtd.uri });
    const lockd = await startLockd(h);
    const watchdog = Bun.spawn(daemonCommand(["watchdog", "--state-dir", h.stateDir, "--hypervisor", libvirtd.uri, "--log-format", "json"]), { stdin: "ignore", stdout: "ignore", stderr: "pipe" });
    watchdogs.add(watchdog);
    const vms = await vmsWithLeases(h, 3);
    lockd.kill("SIGSTOP");
    const state = JSON.parse(await readFile(join(h.stateDir, "state.json"), "utf8")) as { validUntilMs: number; leases: unknown[] };
    expect(state.leases).toHaveLength(3);
    const fireInMs = state.validUntilMs - clockBoottimeMs();
    expect(fireInMs).toBeGreaterThan(0);
    // Until validUntil lockd is, as far as anyone can tell, fine: the VMs must keep running.
    await Bun.sleep(Math.max(0, fireInMs - 300));
    expect(await running()).toEqual(vms);
    await eventually("the watchdog stops the VMs right after validUntil", async () => (await running()).length === 0, 2_000 + 300);
    expect(clockBoottimeMs()).toBeGreaterThanOrEqual(state.validUntilMs);

    lockd.kill("SIGCONT");
    // A lost host lease never comes back by renewing: lockd fences what it held (stopped already)
    // and exits non-zero, for systemd to restart it.
    const exited = await Promise.race([lockd.exited, Bun.sleep(5_000).then(() => "still running")]);
    expect(exited).toBe(1);
    expect(await new Response(lockd.stderr).text()).toContain("this lockd's host lease is lost for good");
    expect(await running()).toEqual([]);
    // The restart joins the lockspace again (a new generation): it holds nothing and acts as
    // owner of nothing it held before; the stopped VMs stay stopped.
    await startLockd(h);
    expect(await status(h)).toMatchObject({ started_by: "joined", phase: "ok", leases: [] });
    expect(await running()).toEqual([]);
    watchdog.kill("SIGTERM");
    expect(await watchdog.exited).toBe(0);
    const log = await new Response(watchdog.stderr).text();
    expect(log).toContain("lockd did not renew in time: stopping the VMs under its leases");
  }, 60_000);

  test("lockd and libvirtd both hung: the watchdog kills the VM's process itself once libvirt does not answer", async () => {
    await using dir = await tempDir("lockd-vms-hung-libvirt");
    await formatLeaseFile(dir);
    const runDir = join(dir.path, "qemu-run");
    await mkdir(runDir);
    const h = lockdHost(dir, 1, { hypervisor: libvirtd.uri });
    const lockd = await startLockd(h);
    const watchdog = Bun.spawn(
      daemonCommand(["watchdog", "--state-dir", h.stateDir, "--hypervisor", libvirtd.uri, "--qemu-run-dir", runDir, "--call-timeout-ms", "500", "--log-format", "json"]),
      { stdin: "ignore", stdout: "ignore", stderr: "pipe" },
    );
    watchdogs.add(watchdog);
    const vm = await hypervisor.define(domainXml("vm-00"));
    await hypervisor.start(vm.uuid);
    expect(await requestLockd(h.socket, { op: "acquire", vm: vm.uuid, slot: 0 }, 30_000)).toMatchObject({ ok: true });
    // What a real qemu of this VM would leave: a process with -uuid in its command line, and libvirt's status file naming its pid.
    const qemu = Bun.spawn(["sh", "-c", "while :; do sleep 1; done", "qemu-system-x86_64", "-uuid", vm.uuid], { stdin: "ignore", stdout: "ignore", stderr: "ignore" });
    try {
      await writeFile(join(runDir, "vm-00.xml"), `<domstatus state='running' pid='${qemu.pid}'>\n  <domain type='kvm'>\n    <name>vm-00</name>\n    <uuid>${vm.uuid}</uuid>\n  </domain>\n</domstatus>\n`);
      lockd.kill("SIGSTOP");
      process.kill(libvirtd.pid, "SIGSTOP");
      const { validUntilMs } = JSON.parse(await readFile(join(h.stateDir, "state.json"), "utf8")) as { validUntilMs: number };
      const exited = await Promise.race([qemu.exited.then(() => true), Bun.sleep(validUntilMs - clockBoottimeMs() + 5_000).then(() => false)]);
      expect(exited).toBe(true);
      expect(clockBoottimeMs()).toBeGreaterThanOrEqual(validUntilMs);
    } finally {
      process.kill(libvirtd.pid, "SIGCONT");
      qemu.kill("SIGKILL");
    }
    watchdog.kill("SIGTERM");
    await watchdog.exited;
    expect(await new Response(watchdog.stderr).text()).toContain("the hypervisor could not stop a VM: killed its process directly");
  }, 60_000);

  test("storage hangs for lockd alone (blkio throttle): question at renewal-warn; answer fence → VMs destroyed before renewal-fail", async () => {
    await hungStorage(async ({ h, vms, question, hungAtMs, notices }) => {
      expect(question).toMatchObject({ question: 1, vms });
      const answer = await runFitha(["lease", "answer", String(question.question), "fence", "--socket", h.socket]);
      expect(answer).toMatchObject({ exitCode: 0, stdout: `question ${question.question}: answered fence\n` });
      await eventually("fencing after the answer", async () => (await running()).length === 0, 1_000);
      // Renewal-fail is at most 4 s after the hang began (the last renewal started before it).
      expect(Date.now() - hungAtMs).toBeLessThan(8 * testIoTimeoutS * 1000);
      expect(await status(h)).toMatchObject({ leases: [], fenced: { vms, failed: [] } });
      // The agent hears of it too (and records a lockd-fenced event: fencing-bridge.ts).
      await eventually("the fenced notice reaches the agent's subscription", () => notices.some((n) => n.event === "fenced"), 2_000);
      expect(notices.find((n) => n.event === "fenced")).toMatchObject({ vms, failed: [] });
    });
  }, 60_000);

  test("storage hangs for lockd alone: answer no-fence → VMs kept past renewal-fail; storage back → renewed, all leases re-validated and kept", async () => {
    await hungStorage(async ({ h, vms, question, release }) => {
      await runFitha(["lease", "answer", String(question.question), "no-fence", "--socket", h.socket]);
      await eventually("past renewal-fail on the grace", async () => (await status(h)).phase === "grace", 5_000);
      expect(await running()).toEqual(vms);
      await release();
      await eventually("renewed once storage is back", async () => (await status(h)).phase === "ok", 5_000);
      expect(await status(h)).toMatchObject({ fenced: null, leases: vms.map((vm) => ({ vm })) });
      expect(await running()).toEqual(vms);
    });
  }, 60_000);
});

interface HungStorage {
  h: LockdHost;
  vms: string[];
  question: Extract<LockdEvent, { event: "question" }>;
  /** Date.now() when the hang began. */
  hungAtMs: number;
  /** lockd's other events as the agent's subscription received them. */
  notices: LockdNotice[];
  /** Ends the hang: lockd's I/O goes through again. */
  release(): Promise<void>;
}

/**
 * lockd on a loop device, 3 VMs under its leases, a subscriber on its socket; then every I/O of
 * lockd's to the device hangs until `release` (or the end). Runs `body` once the question came.
 */
async function hungStorage(body: (hung: HungStorage) => Promise<void>): Promise<void> {
  await using cleanup = new AsyncDisposableStack();
  const dir = cleanup.use(await tempDir("lockd-vms-hang"));
  const image = join(dir.path, "lun.img");
  await writeFile(image, new Uint8Array(1024 * 1024));
  const loop = cleanup.use(await attachLoop(image));
  await formatLeaseFile(dir, { path: loop.path });
  const h = lockdHost(dir, 1, { hypervisor: libvirtd.uri, leaseFile: loop.path });
  const lockd = await startLockd(h);
  const cgroup = cleanup.use(await createBlkioCgroup("lockd-hang"));
  // Disposed in reverse: the hang ends first (hung I/O completes), then lockd dies, then the cgroup goes.
  cleanup.defer(killStartedLockds);
  cleanup.defer(() => cgroup.release(loop.majorMinor));
  const vms = await vmsWithLeases(h, 3);
  const events: LockdEvent[] = [];
  let buffered = "";
  const subscriber = await Bun.connect({
    unix: h.socket,
    socket: {
      data(_socket, chunk) {
        buffered += chunk.toString();
        for (let newline = buffered.indexOf("\n"); newline >= 0; newline = buffered.indexOf("\n")) {
          const message = JSON.parse(buffered.slice(0, newline)) as LockdEvent | { id: number };
          buffered = buffered.slice(newline + 1);
          if ("event" in message) events.push(message);
        }
      },
    },
  });
  cleanup.defer(() => void subscriber.end());
  subscriber.write(`${JSON.stringify({ id: 1, op: "subscribe" })}\n`);
  await cgroup.addProcess(lockd.pid);
  await cgroup.hang(loop.majorMinor);
  const hungAtMs = Date.now();
  // The agent's way in (src/agent/lockd-questions.ts) sees the same question.
  const bridged: number[] = [];
  const notices: LockdNotice[] = [];
  const agentSide = LockdQuestionsClient.overSocket(h.socket, monotonicClock);
  const subscription = agentSide.subscribe(
    (q) => bridged.push(q.question),
    (notice) => notices.push(notice),
  );
  cleanup.defer(() => subscription.close());
  await eventually("a fencing question at renewal-warn", async () => events.some((e) => e.event === "question"), 6_000);
  const question = events.find((e): e is Extract<LockdEvent, { event: "question" }> => e.event === "question")!;
  await eventually("the question reaches the agent's subscription", () => bridged.includes(question.question), 2_000);
  expect(await agentSide.openQuestion()).toBe(question.question);
  await body({ h, vms, question, hungAtMs, notices, release: () => cgroup.release(loop.majorMinor) });
}
