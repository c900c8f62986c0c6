/**
 * Killing a VM's process from libvirt's qemu status files, against real processes: a stand-in
 * "qemu" (a shell loop whose command line carries `-uuid UUID`, as libvirt's qemu command line
 * does) and status files shaped like libvirt's, in a run directory of the test's own.
 */
import { afterEach, describe, expect, test } from "bun:test";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { qemuProcessKiller } from "../../src/virt/qemu-processes.ts";
import { eventually } from "../helpers/eventually.ts";
import { tempDir, type TempDir } from "../helpers/tmp.ts";

const uuid = "6c1a2b3c-0000-4000-8000-00000000a001";
const children = new Set<Bun.Subprocess>();

afterEach(async () => {
  for (const child of children) {
    child.kill("SIGKILL");
    await child.exited;
  }
  children.clear();
});

/** A long-running process with `args` in its command line, once it has them (after its exec). */
async function standIn(...args: string[]): Promise<Bun.Subprocess> {
  const child = Bun.spawn(["sh", "-c", "while :; do sleep 1; done", "qemu-system-x86_64", ...args], { stdin: "ignore", stdout: "ignore", stderr: "ignore" });
  children.add(child);
  await eventually("the stand-in's command line", async () => (await Bun.file(`/proc/${child.pid}/cmdline`).text().catch(() => "")).includes("qemu-system-x86_64"), 5_000);
  return child;
}

/** libvirt's status file for a running domain: <domstatus pid=…> around the domain's XML. */
async function statusFile(dir: TempDir, name: string, domainUuid: string, pid: number): Promise<void> {
  const xml = `<!--\nWARNING: THIS IS AN AUTO-GENERATED FILE.\n-->\n<domstatus state='running' reason='booted' pid='${pid}'>\n  <monitor path='/var/lib/libvirt/qemu/domain-1-${name}/monitor.sock' type='unix'/>\n  <domain type='kvm' id='1'>\n    <name>${name}</name>\n    <uuid>${domainUuid}</uuid>\n    <memory unit='KiB'>32768</memory>\n  </domain>\n</domstatus>\n`;
  await writeFile(join(dir.path, `${name}.xml`), xml);
}

describe("killing a VM's qemu process", () => {
  test("found by UUID or by name through its status file, killed, and gone when kill() returns", async () => {
    await using dir = await tempDir("qemu-run");
    const killer = qemuProcessKiller(dir.path);
    for (const key of [uuid, "web-1"]) {
      const qemu = await standIn("-name", "guest=web-1", "-uuid", uuid);
      await statusFile(dir, "web-1", uuid, qemu.pid);
      expect(await killer.kill(key)).toEqual({ outcome: "killed", pid: qemu.pid });
      expect(await qemu.exited).toBe(137);
    }
  });

  test("a pid whose command line lacks the VM's UUID (a reused pid) is not killed", async () => {
    await using dir = await tempDir("qemu-run");
    const other = await standIn("-uuid", "6c1a2b3c-0000-4000-8000-00000000ffff");
    await statusFile(dir, "web-1", uuid, other.pid);
    const outcome = await qemuProcessKiller(dir.path).kill(uuid);
    expect(outcome).toMatchObject({ outcome: "failed" });
    expect((outcome as { reason: string }).reason).toContain("does not carry the VM's UUID");
    expect(other.exitCode).toBeNull();
    expect(other.killed).toBe(false);
  });

  test("no status file for the VM, a process already gone, or no run directory: nothing to kill", async () => {
    await using dir = await tempDir("qemu-run");
    expect(await qemuProcessKiller(dir.path).kill(uuid)).toEqual({ outcome: "none" });
    const gone = await standIn("-uuid", uuid);
    gone.kill("SIGKILL");
    await gone.exited;
    await statusFile(dir, "web-1", uuid, gone.pid);
    expect(await qemuProcessKiller(dir.path).kill(uuid)).toEqual({ outcome: "none" });
    expect(await qemuProcessKiller(join(dir.path, "missing")).kill(uuid)).toEqual({ outcome: "none" });
  });
});
