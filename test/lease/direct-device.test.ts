/**
 * DirectDevice (and the libc wrappers under it) on real storage: O_DIRECT files on ext4, loop
 * devices with 512- and 4096-byte sectors, an ext4 made on 4 KiB sectors, and storage that hangs
 * (a cgroup v1 blkio throttle on a loop device) seen from a child process. Runs as root.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, statfsSync } from "node:fs";
import { readFile, truncate, writeFile } from "node:fs/promises";
import { join } from "node:path";
import * as libc from "../../ffi/libc.ts";
import { DirectDevice } from "../../src/lease/direct-device.ts";
import { IoError, type IoOp } from "../../src/lease/sector-device.ts";
import { attachLoop, createBlkioCgroup, isLoopAttached, mountNewExt4, removeLeftovers } from "../helpers/block-device.ts";
import { tempDir } from "../helpers/tmp.ts";
import { readJsonLines } from "../helpers/json-lines.ts";

const directDeviceModule = join(import.meta.dir, "../../src/lease/direct-device.ts");
const timeoutMs = 2_000;
const MiB = 1024 * 1024;

/** Child processes still running, killed in afterAll if a test could not stop its own. */
const children = new Set<Bun.Subprocess>();

function track<T extends Bun.Subprocess>(child: T): T {
  children.add(child);
  void child.exited.then(() => children.delete(child));
  return child;
}

afterAll(async () => {
  for (const child of children) child.kill("SIGKILL");
  await removeLeftovers();
});

/** `count` sectors of `sectorSize` bytes, each filled with its own byte derived from `seed`. */
function pattern(seed: number, count: number, sectorSize = 512): Uint8Array<ArrayBuffer> {
  const bytes = new Uint8Array(count * sectorSize);
  for (let i = 0; i < count; i++) bytes.fill((seed + i * 7) & 0xff, i * sectorSize, (i + 1) * sectorSize);
  return bytes;
}

async function newFile(dir: string, sizeBytes: number): Promise<string> {
  const path = join(dir, "device.img");
  await writeFile(path, "");
  await truncate(path, sizeBytes);
  return path;
}

async function expectIoError(work: Promise<unknown>, messagePart: string | RegExp, code?: string): Promise<IoError> {
  const error = await work.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(IoError);
  const ioError = error as IoError;
  expect(ioError.message).toMatch(messagePart);
  if (code !== undefined) expect(ioError.code).toBe(code);
  return ioError;
}

describe("ffi/libc", () => {
  test("clockBoottimeMs advances like the monotonic clock", async () => {
    const [boot0, mono0] = [libc.clockBoottimeMs(), performance.now()];
    await Bun.sleep(50);
    const [boot1, mono1] = [libc.clockBoottimeMs(), performance.now()];
    expect(boot1 - boot0).toBeGreaterThanOrEqual(49);
    expect(Math.abs(boot1 - boot0 - (mono1 - mono0))).toBeLessThan(5);
  });

  test("a failed call throws ErrnoError with the errno name and strerror text", () => {
    let error: unknown;
    try {
      libc.open("/nonexistent-fitha-test/x", libc.O_RDWR);
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(libc.ErrnoError);
    expect(error).toMatchObject({ errno: 2, code: "ENOENT", syscall: "open", message: "open /nonexistent-fitha-test/x: No such file or directory (ENOENT)" });
  });
});

describe("DirectDevice on an ext4 file", () => {
  test("detects 512-byte sectors and counts whole sectors only", async () => {
    await using dir = await tempDir("test-direct");
    const path = await newFile(dir.path, 64 * 1024 + 100);
    const device = await DirectDevice.open(path);
    try {
      expect(device).toMatchObject({ name: path, sectorSize: 512, sizeBytes: 64 * 1024 });
    } finally {
      await device.close();
    }
  });

  test("writes and reads back several sectors, in one batch, across batches, and after reopening", async () => {
    await using dir = await tempDir("test-direct");
    const path = await newFile(dir.path, MiB);
    const first = pattern(1, 3);
    const second = pattern(100, 2);
    let device = await DirectDevice.open(path);
    try {
      // In one batch: each read runs after the writes before it.
      const [both] = await device.io(
        [
          { kind: "write", offset: 0, data: first },
          { kind: "write", offset: 3 * 512, data: second },
          { kind: "read", offset: 0, length: 5 * 512 },
        ],
        timeoutMs,
      );
      expect(both).toEqual(new Uint8Array([...first, ...second]));
      expect(first.byteLength).toBe(3 * 512); // the caller's data was copied, not taken

      // Across batches submitted together: they run in submission order.
      const third = pattern(200, 4);
      const [written, [readBack, again]] = await Promise.all([
        device.io([{ kind: "write", offset: 8192, data: third }], timeoutMs),
        device.io(
          [
            { kind: "read", offset: 8192, length: third.length },
            { kind: "read", offset: 8192, length: third.length },
          ],
          timeoutMs,
        ),
      ]);
      expect(written).toEqual([]);
      expect(readBack).toEqual(third);
      // Each returned buffer is the caller's own, exactly its length, shared with nothing.
      expect(readBack!.buffer.byteLength).toBe(third.length);
      expect(readBack!.buffer).not.toBe(again!.buffer);
      readBack!.fill(0);
      expect(again).toEqual(third);

      await device.close();
      device = await DirectDevice.open(path);
      const [afterReopen] = await device.io([{ kind: "read", offset: 0, length: 8192 + third.length }], timeoutMs);
      expect(afterReopen!.subarray(0, 5 * 512)).toEqual(new Uint8Array([...first, ...second]));
      expect(afterReopen!.subarray(8192)).toEqual(third);
      // And it is on the file itself, not only in what the device remembers.
      expect(Uint8Array.from((await readFile(path)).subarray(8192, 8192 + third.length))).toEqual(third);
    } finally {
      await device.close();
    }
  });

  test("rejects misaligned and out-of-range batches before doing any I/O", async () => {
    await using dir = await tempDir("test-direct");
    const path = await newFile(dir.path, 64 * 1024);
    const device = await DirectDevice.open(path);
    try {
      const valid: IoOp = { kind: "write", offset: 0, data: pattern(9, 1) };
      const bad: IoOp[] = [
        { kind: "read", offset: 100, length: 512 },
        { kind: "read", offset: 0, length: 100 },
        { kind: "write", offset: 512, data: new Uint8Array(700) },
        { kind: "read", offset: 64 * 1024, length: 512 },
        { kind: "read", offset: 63 * 1024, length: 2048 },
        { kind: "read", offset: -512, length: 512 },
        { kind: "read", offset: 0, length: 0 },
      ];
      // A bad operation after a valid write: the whole batch is refused, so the write never lands.
      for (const op of bad) await expectIoError(device.io([valid, op], timeoutMs), "outside the device or not aligned to 512-byte sectors");
      await expectIoError(device.io([], timeoutMs), "empty I/O batch");
      await expectIoError(device.io([valid], 0), "I/O deadline 0 ms");
      expect((await readFile(path)).every((b) => b === 0)).toBe(true);
    } finally {
      await device.close();
    }
  });

  test("a path that does not exist rejects with IoError ENOENT naming it; so does a directory (EISDIR)", async () => {
    await using dir = await tempDir("test-direct");
    const missing = join(dir.path, "missing.img");
    await expectIoError(DirectDevice.open(missing), `open ${missing}: No such file or directory (ENOENT)`, "ENOENT");
    await expectIoError(DirectDevice.open(dir.path), dir.path, "EISDIR");
  });

  test("close is idempotent and later I/O rejects with IoError", async () => {
    await using dir = await tempDir("test-direct");
    const device = await DirectDevice.open(await newFile(dir.path, 4096));
    await Promise.all([device.close(), device.close()]);
    await device.close();
    await expectIoError(device.io([{ kind: "read", offset: 0, length: 512 }], timeoutMs), "device is closed");
  });

  test("a file that shrank under the device gives a short read, reported as IoError", async () => {
    await using dir = await tempDir("test-direct");
    const path = await newFile(dir.path, 8192);
    const device = await DirectDevice.open(path);
    try {
      await truncate(path, 4096);
      await expectIoError(device.io([{ kind: "read", offset: 4096, length: 512 }], timeoutMs), `${path}: read of 512 bytes at offset 4096: short read (0 bytes)`);
    } finally {
      await device.close();
    }
  });

  test("a write the file system has no room for fails with IoError ENOSPC", async () => {
    await using dir = await tempDir("test-direct-full");
    await using loop = await attachLoop(await newFile(dir.path, 16 * MiB));
    await using mount = await mountNewExt4(loop.path, join(dir.path, "mnt"));
    const path = await newFile(mount.path, 4 * MiB);
    // Leave about 1 MiB free (ext4 keeps some clusters back for metadata), then write 2 MiB.
    const { bfree, bsize } = statfsSync(mount.path);
    await Bun.$`fallocate -l ${bfree * bsize - MiB} ${join(mount.path, "filler")}`.quiet();
    const device = await DirectDevice.open(path);
    try {
      const writes = Array.from({ length: 512 }, (_, i): IoOp => ({ kind: "write", offset: i * 4096, data: pattern(i, 8) }));
      await expectIoError(device.io(writes, timeoutMs), /write of 4096 bytes at offset \d+: pwrite: No space left on device \(ENOSPC\)/, "ENOSPC");
    } finally {
      await device.close();
    }
  });

  test("a script that used a device exits on its own after close()", async () => {
    await using dir = await tempDir("test-direct");
    const path = await newFile(dir.path, 4096);
    const script = join(dir.path, "use-and-close.ts");
    await writeFile(
      script,
      `import { DirectDevice } from ${JSON.stringify(directDeviceModule)};
const device = await DirectDevice.open(process.argv[2]);
await device.io([{ kind: "write", offset: 0, data: new Uint8Array(512).fill(7) }, { kind: "read", offset: 0, length: 512 }], 2000);
await device.close();
console.log("closed");
`,
    );
    const child = track(Bun.spawn([process.execPath, script, path], { stdin: "ignore", stdout: "pipe", stderr: "inherit" }));
    const exit = await Promise.race([child.exited, Bun.sleep(5_000).then(() => "still running")]);
    expect(exit).toBe(0);
    expect((await new Response(child.stdout).text()).trim()).toBe("closed");
    expect((await readFile(path))[0]).toBe(7);
  });

  test("a file on an ext4 with 4096-byte sectors is detected as such; 512-byte sectors are refused", async () => {
    await using dir = await tempDir("test-direct-4k");
    // Disposed in reverse: unmount, then detach, then remove the directory.
    await using loop = await attachLoop(await newFile(dir.path, 16 * MiB), { sectorSize: 4096 });
    await using mount = await mountNewExt4(loop.path, join(dir.path, "mnt"));
    // A sparse file: an O_DIRECT read of a hole would pass at 512 bytes, so detection must not rely on one.
    const path = await newFile(mount.path, MiB);
    const device = await DirectDevice.open(path);
    try {
      expect(device).toMatchObject({ sectorSize: 4096, sizeBytes: MiB });
    } finally {
      await device.close();
    }
    await expectIoError(DirectDevice.open(path, { sectorSize: 512 }), "needs 4096-byte aligned I/O; 512-byte sectors cannot be used", "EINVAL");
  });
});

describe("DirectDevice on a loop device", () => {
  test("4096-byte sectors: detected, 512-byte I/O refused before the kernel would, sectorSize 512 refused", async () => {
    await using dir = await tempDir("test-direct-loop");
    await using loop = await attachLoop(await newFile(dir.path, MiB), { sectorSize: 4096 });
    const device = await DirectDevice.open(loop.path);
    try {
      expect(device).toMatchObject({ name: loop.path, sectorSize: 4096, sizeBytes: MiB });
      await expectIoError(device.io([{ kind: "read", offset: 512, length: 512 }], timeoutMs), "not aligned to 4096-byte sectors");
      const data = pattern(5, 2, 4096);
      const [back] = await device.io([{ kind: "write", offset: 4096, data }, { kind: "read", offset: 4096, length: data.length }], timeoutMs);
      expect(back).toEqual(data);
    } finally {
      await device.close();
    }
    // What checkBatch spares us: the kernel itself refuses 512-byte O_DIRECT I/O on this device.
    const fd = libc.open(loop.path, libc.O_RDWR | libc.O_DIRECT | libc.O_CLOEXEC);
    const buffer = libc.AlignedBuffer.allocate(4096, 4096);
    try {
      expect(() => libc.pread(fd, buffer, 512, 0)).toThrow("pread: Invalid argument (EINVAL)");
    } finally {
      buffer.free();
      libc.close(fd);
    }
    await expectIoError(DirectDevice.open(loop.path, { sectorSize: 512 }), `${loop.path} needs 4096-byte aligned I/O`, "EINVAL");
  });

  test("hung storage: io() times out on time, timers keep firing, and the device works once the storage is back", async () => {
    let loopPath = "";
    let cgroupPath = "";
    {
      await using cleanup = new AsyncDisposableStack();
      const dir = cleanup.use(await tempDir("test-direct-hang"));
      const file = join(dir.path, "lun.img");
      await writeFile(file, new Uint8Array(MiB).fill(0xa5));
      const loop = cleanup.use(await attachLoop(file));
      loopPath = loop.path;
      const cgroup = cleanup.use(await createBlkioCgroup("direct-hang"));
      cgroupPath = cgroup.path;
      const child = cleanup.use(await HangChild.start(dir.path, loop.path));
      // Disposed first: the hung I/O must complete before the child can die and leave the cgroup.
      cleanup.defer(() => cgroup.release(loop.majorMinor));

      await child.waitFor("ready");
      await cgroup.addProcess(child.pid);
      await cgroup.hang(loop.majorMinor);
      child.send("go");

      const hung = await child.waitFor("timed-out");
      const first = hung["first"] as { error: string; elapsedMs: number };
      const second = hung["second"] as { error: string; elapsedMs: number };
      expect([first.error, second.error]).toEqual(["IoTimeoutError", "IoTimeoutError"]);
      expect(first.elapsedMs).toBeGreaterThanOrEqual(295);
      expect(first.elapsedMs).toBeLessThan(800);
      expect(second.elapsedMs).toBeGreaterThanOrEqual(445);
      expect(second.elapsedMs).toBeLessThan(950);
      // A 10 ms interval during a 450 ms hang: ~45 ticks if the event loop ran freely, 0 if blocked.
      expect(hung["ticks"]).toBeGreaterThanOrEqual(15);

      // The same device, from outside the throttled cgroup, is fine: the fault is the child's alone.
      const outside = await DirectDevice.open(loop.path);
      try {
        const [sector] = await outside.io([{ kind: "read", offset: 0, length: 512 }], timeoutMs);
        expect(sector![0]).toBe(0xa5);
      } finally {
        await outside.close();
      }

      await cgroup.release(loop.majorMinor);
      child.send("released");
      child.endInput();
      const recovered = await child.waitFor("recovered");
      expect(recovered).toMatchObject({ bytes: 4096, firstByte: 0xa5 });
      await child.waitFor("closed");
      expect(await child.exited(5_000)).toBe(0);
    }
    expect(isLoopAttached(loopPath)).toBe(false);
    expect(existsSync(cgroupPath)).toBe(false);
  }, 20_000);
});

/**
 * The child of the hung-storage test, in its own process so that it can be put in the throttled
 * cgroup. It reports each step as a JSON line and waits for the test's go-ahead on stdin between
 * steps: "ready" → (go) open, two reads with 300 and 450 ms deadlines → "timed-out" → (released)
 * read again → "recovered" → close → "closed", then exits on its own.
 */
const hangChildSource = `import { DirectDevice } from ${JSON.stringify(directDeviceModule)};
const say = (event, fields = {}) => console.log(JSON.stringify({ event, ...fields }));
const lines = console[Symbol.asyncIterator]();
const expectLine = async (want) => {
  const line = await lines.next();
  if (line.done || line.value !== want) process.exit(3);
};
say("ready");
await expectLine("go");
const device = await DirectDevice.open(process.argv[2]);
let ticks = 0;
const ticker = setInterval(() => ticks++, 10);
const startedMs = performance.now();
const outcome = (deadlineMs) =>
  device.io([{ kind: "read", offset: 0, length: 4096 }], deadlineMs).then(() => null, (e) => ({ error: e.name, elapsedMs: performance.now() - startedMs }));
// The second batch queues behind the first in the worker; its deadline still counts from submission.
const [first, second] = await Promise.all([outcome(300), outcome(450)]);
say("timed-out", { first, second, ticks });
await expectLine("released");
const [data] = await device.io([{ kind: "read", offset: 0, length: 4096 }], 5000);
say("recovered", { bytes: data.length, firstByte: data[0] });
clearInterval(ticker);
await device.close();
say("closed");
`;

class HangChild implements AsyncDisposable {
  readonly #events: Record<string, unknown>[] = [];
  readonly #reading: Promise<void>;

  private constructor(readonly child: Bun.Subprocess<"pipe", "pipe", "inherit">) {
    this.#reading = readJsonLines<Record<string, unknown>>(child.stdout, (event) => this.#events.push(event));
  }

  static async start(dir: string, devicePath: string): Promise<HangChild> {
    const script = join(dir, "hang-child.ts");
    await writeFile(script, hangChildSource);
    return new HangChild(track(Bun.spawn([process.execPath, script, devicePath], { stdin: "pipe", stdout: "pipe", stderr: "inherit" })));
  }

  get pid(): number {
    return this.child.pid;
  }

  send(line: string): void {
    this.child.stdin.write(`${line}\n`);
    void this.child.stdin.flush();
  }

  /** Closes the child's stdin: its line reader stops holding its event loop open. */
  endInput(): void {
    void this.child.stdin.end();
  }

  async waitFor(event: string, waitMs = 5_000): Promise<Record<string, unknown>> {
    const deadline = Date.now() + waitMs;
    for (;;) {
      const found = this.#events.find((e) => e["event"] === event);
      if (found !== undefined) return found;
      if (Date.now() > deadline) throw new Error(`hang child: no "${event}" within ${waitMs} ms; saw ${JSON.stringify(this.#events)}`);
      await Bun.sleep(5);
    }
  }

  /** Exit code, or undefined if it is still running after `waitMs`. */
  async exited(waitMs: number): Promise<number | undefined> {
    const code = await Promise.race([this.child.exited, Bun.sleep(waitMs).then(() => undefined)]);
    if (code !== undefined) await this.#reading;
    return code;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.endInput();
    this.child.kill("SIGKILL");
    await this.exited(5_000);
  }
}
