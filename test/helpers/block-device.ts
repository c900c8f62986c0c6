/**
 * Real block devices and real storage faults for tests (root only): loop devices over files,
 * an ext4 file system on one, and cgroup v1 blkio throttles that make a process's I/O to a device
 * hang (TESTING-NOTES: cgroup v2 io.max, device-mapper and nbd are not available here).
 *
 * Everything is named fitha-test-…, is removed by `await using` (or its remove method), and is
 * also listed here so that `removeLeftovers()` in an afterAll can clean up after a test that
 * timed out before its own cleanup ran.
 */
import { existsSync } from "node:fs";
import { mkdir, readFile, rmdir, writeFile } from "node:fs/promises";
import { basename, join } from "node:path";

/** Bounds every wait for the kernel to let go of a device or a cgroup. */
const releaseWaitMs = 5_000;
const pollMs = 20;

const leftovers = new Set<AsyncDisposable>();

/** Removes whatever a test created here and did not remove itself. */
export async function removeLeftovers(): Promise<void> {
  for (const resource of [...leftovers].reverse()) await resource[Symbol.asyncDispose]();
}

/** Runs `run` until it succeeds or `releaseWaitMs` have passed, then rethrows its last error. */
async function retryUntilReleased(run: () => Promise<void>): Promise<void> {
  const deadline = Date.now() + releaseWaitMs;
  for (;;) {
    try {
      return await run();
    } catch (error) {
      if (Date.now() > deadline) throw error;
      await Bun.sleep(pollMs);
    }
  }
}

async function command(...argv: string[]): Promise<string> {
  const child = Bun.spawn(argv, { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  const [stdout, stderr, code] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited]);
  if (code !== 0) throw new Error(`${argv.join(" ")}: exit ${code}: ${stderr.trim()}`);
  return stdout.trim();
}

export interface LoopDevice extends AsyncDisposable {
  /** e.g. "/dev/loop3". */
  readonly path: string;
  /** "MAJOR:MINOR", as cgroup files want it. */
  readonly majorMinor: string;
  /** Detaches the device and waits (bounded) until the kernel has let it go. Idempotent. */
  detach(): Promise<void>;
}

/** A loop device over `file` with direct I/O to the file (as a LUN would), optionally with 4 KiB sectors. */
export async function attachLoop(file: string, options: { sectorSize?: 512 | 4096 } = {}): Promise<LoopDevice> {
  const sectorArgs = options.sectorSize === undefined ? [] : ["--sector-size", String(options.sectorSize)];
  const path = await command("losetup", "--find", "--show", "--direct-io=on", ...sectorArgs, file);
  const sysfs = `/sys/block/${basename(path)}`;
  let detached: Promise<void> | undefined;
  const detach = () =>
    (detached ??= (async () => {
      leftovers.delete(loop);
      await command("losetup", "--detach", path);
      // The loop/ directory exists exactly while a file is attached.
      await retryUntilReleased(async () => {
        if (existsSync(join(sysfs, "loop"))) throw new Error(`${path} is still attached after losetup --detach`);
      });
    })());
  const loop: LoopDevice = {
    path,
    majorMinor: (await readFile(join(sysfs, "dev"), "utf8")).trim(),
    detach,
    [Symbol.asyncDispose]: detach,
  };
  leftovers.add(loop);
  return loop;
}

export function isLoopAttached(path: string): boolean {
  return existsSync(`/sys/block/${basename(path)}/loop`);
}

export interface Mount extends AsyncDisposable {
  readonly path: string;
  unmount(): Promise<void>;
}

/** A fresh ext4 on `device`, mounted on `mountPoint` (created if missing). */
export async function mountNewExt4(device: string, mountPoint: string): Promise<Mount> {
  await command("mkfs.ext4", "-q", "-F", device);
  await mkdir(mountPoint, { recursive: true });
  await command("mount", device, mountPoint);
  let unmounted: Promise<void> | undefined;
  const unmount = () =>
    (unmounted ??= (async () => {
      leftovers.delete(mount);
      await retryUntilReleased(() => command("umount", mountPoint).then(() => {}));
    })());
  const mount: Mount = { path: mountPoint, unmount, [Symbol.asyncDispose]: unmount };
  leftovers.add(mount);
  return mount;
}

const blkioRoot = "/sys/fs/cgroup/blkio";
const throttleFiles = ["read_bps_device", "write_bps_device", "read_iops_device", "write_iops_device"].map((f) => `blkio.throttle.${f}`);

export interface BlkioCgroup extends AsyncDisposable {
  readonly path: string;
  /** Moves process `pid` (all its threads, and threads it creates later) into this cgroup. */
  addProcess(pid: number): Promise<void>;
  /** 1 byte/s and 1 operation/s to `majorMinor`: every I/O of this cgroup's processes to it hangs. */
  hang(majorMinor: string): Promise<void>;
  /** Lifts the limits `hang` set: the hung I/O completes. */
  release(majorMinor: string): Promise<void>;
  /** Lifts every limit, then removes the cgroup once its processes are gone (bounded wait). Idempotent. */
  remove(): Promise<void>;
}

/** A new, empty blkio cgroup fitha-test-LABEL-PID-N. */
export async function createBlkioCgroup(label: string): Promise<BlkioCgroup> {
  const path = join(blkioRoot, `fitha-test-${label}-${process.pid}-${Math.floor(Math.random() * 1e9)}`);
  await mkdir(path);
  const limited = new Set<string>();
  const setLimits = async (majorMinor: string, value: number) => {
    for (const file of throttleFiles) await writeFile(join(path, file), `${majorMinor} ${value}`);
  };
  const release = async (majorMinor: string) => {
    // Writing 0 deletes the rule.
    await setLimits(majorMinor, 0);
    limited.delete(majorMinor);
  };
  let removed: Promise<void> | undefined;
  const remove = () =>
    (removed ??= (async () => {
      leftovers.delete(cgroup);
      for (const majorMinor of [...limited]) await release(majorMinor);
      // A killed process leaves the cgroup only once it has fully exited.
      await retryUntilReleased(() => rmdir(path));
    })());
  const cgroup: BlkioCgroup = {
    path,
    addProcess: (pid) => writeFile(join(path, "cgroup.procs"), String(pid)),
    hang: async (majorMinor) => {
      limited.add(majorMinor);
      await setLimits(majorMinor, 1);
    },
    release,
    remove,
    [Symbol.asyncDispose]: remove,
  };
  leftovers.add(cgroup);
  return cgroup;
}
