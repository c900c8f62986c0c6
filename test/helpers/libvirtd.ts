/**
 * A private libvirtd (Debian's libvirt-daemon) serving libvirt's test driver on a socket in a temp
 * dir: one fake hypervisor whose state every client shares (`test+unix:///default?socket=…`), so
 * a domain one process starts is seen running by others and outlives the process that started it.
 *
 * It runs as an unprivileged libvirtd ("session" mode: all its files under the temp dir, nothing
 * in /run/libvirt or /etc/libvirt) with no driver modules: LIBVIRT_DRIVER_DIR points at an empty
 * dir, the test driver is built into libvirt.so itself, and without the qemu, network and storage
 * drivers the daemon starts in ~0.1 s and touches nothing on the host. As root it runs as
 * nobody (a privileged libvirtd would use the host's /run/libvirt); root can still connect.
 * Stopped and removed by `stop()` or `await using`, and killed by the kernel if the process that
 * started it dies (setpriv --pdeathsig). Also: domain XML for the test driver.
 */
import { terminate } from "./terminate.ts";
import { chown, mkdir, readFile, writeFile } from "node:fs/promises";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { tempDir } from "./tmp.ts";

/** Domain XML that libvirt's test driver accepts (it needs a memory size, 64 MiB unless given, and an OS type). */
export function domainXml(name: string, uuid?: string, memoryKiB = 65_536): string {
  return `<domain type='test'>
  <name>${name}</name>${uuid === undefined ? "" : `\n  <uuid>${uuid}</uuid>`}
  <memory unit='KiB'>${memoryKiB}</memory>
  <os><type>hvm</type></os>
</domain>`;
}

export interface LocalLibvirtd extends AsyncDisposable {
  /** `test+unix:///default?socket=…`: the daemon's one test-driver hypervisor. */
  readonly uri: string;
  readonly pid: number;
  /** SIGTERM, then SIGKILL if it has not exited after `stopTimeoutMs`; removes its dir. Idempotent. */
  stop(): Promise<void>;
}

const libvirtdBinary = "/usr/sbin/libvirtd";
/** Debian's nobody and nogroup. */
const unprivilegedId = 65534;
const stopTimeoutMs = 5_000;
const pollMs = 20;

const running = new Set<Bun.Subprocess>();
process.on("exit", () => {
  for (const child of running) child.kill("SIGKILL");
});

export async function startLibvirtd(options: { startTimeoutMs?: number } = {}): Promise<LocalLibvirtd> {
  if (!existsSync(libvirtdBinary)) throw new Error(`${libvirtdBinary} is missing: install the Debian package libvirt-daemon (scripts/lib/ensure-deps.sh does)`);
  const startTimeoutMs = options.startTimeoutMs ?? 10_000;
  const dir = await tempDir("libvirtd");
  const socketDir = join(dir.path, "sock");
  const noDrivers = join(dir.path, "no-drivers");
  const config = join(dir.path, "libvirtd.conf");
  const logFile = join(dir.path, "libvirtd.log");
  const socket = join(socketDir, "libvirt-sock");
  const asRoot = process.getuid?.() === 0;
  try {
    await mkdir(socketDir);
    await mkdir(noDrivers);
    await writeFile(config, `unix_sock_dir = ${JSON.stringify(socketDir)}\n`);
    if (asRoot) for (const path of [dir.path, socketDir, noDrivers]) await chown(path, unprivilegedId, unprivilegedId);
  } catch (error) {
    await dir.remove();
    throw error;
  }

  const dropPrivileges = asRoot ? [`--reuid=${unprivilegedId}`, `--regid=${unprivilegedId}`, "--clear-groups"] : [];
  const child = Bun.spawn(["setpriv", "--pdeathsig", "KILL", ...dropPrivileges, "--", libvirtdBinary, "-f", config], {
    cwd: dir.path,
    // A session libvirtd keeps its state under HOME and the XDG dirs: all of them in the temp dir.
    env: {
      PATH: "/usr/sbin:/usr/bin:/sbin:/bin",
      HOME: dir.path,
      XDG_RUNTIME_DIR: join(dir.path, "run"),
      XDG_CONFIG_HOME: join(dir.path, "config"),
      XDG_CACHE_HOME: join(dir.path, "cache"),
      LIBVIRT_DRIVER_DIR: noDrivers,
    },
    stdin: "ignore",
    stdout: Bun.file(logFile),
    stderr: Bun.file(logFile),
  });
  running.add(child);
  let stopping: Promise<void> | undefined;
  const stop = () =>
    (stopping ??= (async () => {
      await terminate(child, stopTimeoutMs);
      running.delete(child);
      await dir.remove();
    })());

  const deadline = Date.now() + startTimeoutMs;
  while (Date.now() < deadline && child.exitCode === null && child.signalCode === null) {
    if (await accepts(socket)) {
      const daemon: LocalLibvirtd = { uri: `test+unix:///default?socket=${socket}`, pid: child.pid, stop, [Symbol.asyncDispose]: stop };
      return daemon;
    }
    await Bun.sleep(pollMs);
  }
  const log = await readFile(logFile, "utf8").catch(() => "");
  await stop();
  const lastLines = log.trim().split("\n").slice(-5).join("\n");
  throw new Error(`libvirtd did not listen on ${socket} within ${startTimeoutMs} ms (exit ${child.exitCode ?? child.signalCode}); last log lines:\n${lastLines}`);
}

/** Whether something listens on the unix socket at `path` (a connect succeeds). */
export async function accepts(path: string): Promise<boolean> {
  if (!existsSync(path)) return false;
  try {
    const socket = await Bun.connect({ unix: path, socket: { data() {} } });
    socket.end();
    return true;
  } catch {
    return false;
  }
}
