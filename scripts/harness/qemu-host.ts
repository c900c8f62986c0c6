/**
 * The harness's real-hypervisor mode (TESTING-NOTES, "Real libvirtd + QEMU"): one privileged
 * libvirtd per host, in the host's network namespace and a mount namespace of its own whose
 * /etc/libvirt, /run/libvirt, /var/lib|cache|log/libvirt are directories of that host, with
 * fitha's qemu hook installed (`fitha hook install`) and the host's lockd socket at the default
 * /run/fitha/lockd.sock — as on a real host. Its guests are tiny QEMU machines: a multiboot kernel
 * of a few instructions that halts (no CPU used), 32 MiB, a raw virtio disk on the shared storage
 * opened with cache=none.
 */
import { existsSync, readFileSync } from "node:fs";
import { mkdir, readFile, rm, rmdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { accepts } from "../../test/helpers/libvirtd.ts";
import { terminate } from "../../test/helpers/terminate.ts";
import { inNamespace } from "./namespace-command.ts";

const libvirtdBinary = "/usr/sbin/libvirtd";
export const qemuBinary = "/usr/bin/qemu-system-x86_64";
const startTimeoutMs = 30_000;
const stopTimeoutMs = 10_000;
const guestExitTimeoutMs = 10_000;

export interface QemuLibvirtd {
  readonly uri: string;
  readonly pid: number;
  /** libvirt's qemu status files (lockd's and the watchdog's --qemu-run-dir). */
  readonly qemuRunDir: string;
  /** Power loss: SIGKILL every guest's QEMU process, then libvirtd. */
  stop(): Promise<void>;
}

/** Where libvirtd's directories are bound in its namespace; they must exist in the host's file system. */
export const libvirtMountPoints = ["/etc/libvirt", "/var/lib/libvirt", "/var/cache/libvirt", "/var/log/libvirt"] as const;

/**
 * Creates the mount points that do not exist (Debian's libvirt-daemon-system would have made
 * them); returns those it created, for `removeMountPoints` at the end.
 */
export async function ensureMountPoints(): Promise<string[]> {
  const created: string[] = [];
  for (const dir of libvirtMountPoints) {
    if (existsSync(dir)) continue;
    await mkdir(dir);
    created.push(dir);
  }
  return created;
}

/** Removes mount points `ensureMountPoints` made, if still empty (rmdir fails on anything else). */
export async function removeMountPoints(created: readonly string[]): Promise<void> {
  for (const dir of created) await rmdir(dir).catch(() => undefined);
}

/** libvirt's user for QEMU must exist even when qemu.conf says root (Debian's libvirt-daemon-system would create it). */
export async function ensureQemuUser(): Promise<void> {
  const run = async (...argv: string[]) => {
    const child = Bun.spawn(argv, { stdout: "ignore", stderr: "ignore" });
    return await child.exited;
  };
  if ((await run("getent", "group", "libvirt-qemu")) !== 0) await run("groupadd", "--system", "libvirt-qemu");
  if ((await run("getent", "passwd", "libvirt-qemu")) !== 0) await run("useradd", "--system", "--gid", "libvirt-qemu", "--no-create-home", "--shell", "/usr/sbin/nologin", "libvirt-qemu");
}

/** A multiboot kernel that disables interrupts and halts, assembled with binutils into `dir`. */
export async function buildGuestKernel(dir: string): Promise<string> {
  const source = join(dir, "guest.s");
  const object = join(dir, "guest.o");
  const kernel = join(dir, "guest.elf");
  await writeFile(
    source,
    [
      // The multiboot header first in .text: QEMU looks for it in the file's first 8 KiB.
      ".text",
      ".align 4",
      ".long 0x1BADB002", // multiboot magic
      ".long 0", // flags
      ".long -(0x1BADB002)", // checksum
      ".globl _start",
      "_start:",
      "  cli",
      "1:",
      "  hlt",
      "  jmp 1b",
      "",
    ].join("\n"),
  );
  for (const argv of [
    ["as", "--32", "-o", object, source],
    ["ld", "-m", "elf_i386", "-Ttext=0x100000", "-o", kernel, object],
  ]) {
    const child = Bun.spawn(argv, { stdout: "ignore", stderr: "pipe" });
    const [stderr, code] = await Promise.all([new Response(child.stderr).text(), child.exited]);
    if (code !== 0) throw new Error(`${argv.join(" ")}: ${stderr.trim()} (binutils is needed for the QEMU mode)`);
  }
  return kernel;
}

/** Domain XML for a tiny guest: the kernel above, `disk` (a raw file on the shared storage). */
export function qemuDomainXml(name: string, kernel: string, disk: string): string {
  const type = existsSync("/dev/kvm") ? "kvm" : "qemu";
  return `<domain type='${type}'>
  <name>${name}</name>
  <memory unit='MiB'>32</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><kernel>${kernel}</kernel></os>
  <devices>
    <emulator>${qemuBinary}</emulator>
    <disk type='file' device='disk'><driver name='qemu' type='raw' cache='none'/><source file='${disk}'/><target dev='vda' bus='virtio'/></disk>
  </devices>
</domain>`;
}

/**
 * libvirtd with the qemu driver for the host whose files live under `hostDir`, in `netns`;
 * `lockdRunDir` holds the host's lockd.sock (bound over /run/fitha inside libvirtd's namespace).
 */
export async function startQemuLibvirtd(netns: string, hostDir: string, lockdRunDir: string, fithaBinary: string, logFile: string): Promise<QemuLibvirtd> {
  const dirs = { etc: join(hostDir, "libvirt-etc"), run: join(hostDir, "libvirt-run"), lib: join(hostDir, "libvirt-lib"), cache: join(hostDir, "libvirt-cache"), log: join(hostDir, "libvirt-log") };
  for (const dir of Object.values(dirs)) await mkdir(dir, { recursive: true });
  await mkdir(lockdRunDir, { recursive: true });
  await writeFile(join(dirs.etc, "libvirtd.conf"), 'unix_sock_dir = "/run/libvirt"\n');
  await writeFile(join(dirs.etc, "qemu.conf"), ['user = "root"', 'group = "root"', 'security_driver = "none"', "cgroup_controllers = [ ]", "namespaces = [ ]", 'stdio_handler = "file"', ""].join("\n"));
  const install = Bun.spawn([fithaBinary, "hook", "install", "--dir", join(dirs.etc, "hooks"), "--binary", fithaBinary], { stdout: "ignore", stderr: "pipe" });
  const [installError, installCode] = await Promise.all([new Response(install.stderr).text(), install.exited]);
  if (installCode !== 0) throw new Error(`fitha hook install: ${installError.trim()}`);
  // A private /run (tmpfs) first: the mount points made in it stay in this namespace.
  const script = [
    "set -e",
    "mount -t tmpfs -o mode=0755 tmpfs /run",
    "mkdir -p /run/libvirt /run/fitha",
    `mount --bind ${dirs.run} /run/libvirt`,
    `mount --bind ${lockdRunDir} /run/fitha`,
    `mount --bind ${dirs.etc} /etc/libvirt`,
    `mount --bind ${dirs.lib} /var/lib/libvirt`,
    `mount --bind ${dirs.cache} /var/cache/libvirt`,
    `mount --bind ${dirs.log} /var/log/libvirt`,
    // One CPU: otherwise every daemon probes QEMU's capabilities anew (~8 s each, TESTING-NOTES).
    `exec taskset -c 0 ${libvirtdBinary} -f /etc/libvirt/libvirtd.conf`,
  ].join("\n");
  // /run is a tmpfs on a real host: a boot starts with it empty (no sockets or guest status files
  // of the libvirtd that died with the power).
  await rm(dirs.run, { recursive: true, force: true });
  await mkdir(dirs.run);
  const child = inNamespace(netns, ["unshare", "--mount", "--propagation", "private", "sh", "-c", script], { stdout: "ignore", stderr: Bun.file(logFile) });
  const socket = join(dirs.run, "libvirt-sock");
  const qemuRunDir = join(dirs.run, "qemu");
  let stopping: Promise<void> | undefined;
  const stop = () =>
    (stopping ??= (async () => {
      await killGuests(qemuRunDir);
      await terminate(child, stopTimeoutMs);
    })());
  const deadline = Date.now() + startTimeoutMs;
  while (Date.now() < deadline) {
    if (child.exitCode !== null || child.signalCode !== null) break;
    if (await accepts(socket)) return { uri: `qemu+unix:///system?socket=${socket}`, pid: child.pid, qemuRunDir, stop };
    await Bun.sleep(50);
  }
  await stop();
  const log = await readFile(logFile, "utf8").catch(() => "");
  throw new Error(`libvirtd (qemu) for ${hostDir} did not listen on ${socket} within ${startTimeoutMs} ms; last log lines:\n${log.trim().split("\n").slice(-5).join("\n")}`);
}

/** SIGKILL of every QEMU process libvirt recorded in `qemuRunDir` (its <name>.pid files). */
async function killGuests(qemuRunDir: string): Promise<void> {
  if (!existsSync(qemuRunDir)) return;
  const killed: number[] = [];
  for (const file of await Array.fromAsync(new Bun.Glob("*.pid").scan(qemuRunDir))) {
    const pid = Number((await readFile(join(qemuRunDir, file), "utf8").catch(() => "")).trim());
    if (!(Number.isInteger(pid) && pid > 1)) continue;
    try {
      process.kill(pid, "SIGKILL");
      killed.push(pid);
    } catch {
      // Gone already.
    }
  }
  // Power loss is instant: gone (or a zombie, nothing left running) before this returns.
  const deadline = Date.now() + guestExitTimeoutMs;
  while (killed.some(running) && Date.now() < deadline) await Bun.sleep(20);
}

/** Alive and not a zombie. */
function running(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z";
  } catch {
    return false;
  }
}

/** PIDs of running QEMU processes whose command line carries `uuid` (on this machine, any host). */
export async function qemuProcessesOf(uuid: string): Promise<number[]> {
  const pids: number[] = [];
  for (const entry of await Array.fromAsync(new Bun.Glob("[0-9]*").scan({ cwd: "/proc", onlyFiles: false }))) {
    const cmdline = await readFile(`/proc/${entry}/cmdline`, "utf8").catch(() => "");
    if (cmdline.startsWith(qemuBinary) && cmdline.includes(uuid)) pids.push(Number(entry));
  }
  return pids;
}
