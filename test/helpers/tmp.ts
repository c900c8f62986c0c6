/**
 * Temporary directories on a real file system. Lease files need O_DIRECT, which tmpfs (/dev/shm,
 * sometimes /tmp) refuses, so the base directory is checked, not assumed.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { statfsSync } from "node:fs";
import { join } from "node:path";

/** statfs(2) f_type values of file systems where O_DIRECT works. */
const directIoFileSystems = new Map<number, string>([
  [0xef53, "ext2/3/4"],
  [0x58465342, "xfs"],
  [0x9123683e, "btrfs"],
]);

/** FITHA_TEST_TMPDIR if set, else /var/tmp (a disk file system on Debian, unlike /tmp at times). */
export function tempBase(): string {
  const base = process.env["FITHA_TEST_TMPDIR"] || "/var/tmp";
  const type = statfsSync(base).type;
  if (!directIoFileSystems.has(type)) {
    throw new Error(`${base} is on a file system without O_DIRECT (statfs type 0x${type.toString(16)}); set FITHA_TEST_TMPDIR to a directory on ext4 or xfs`);
  }
  return base;
}

export interface TempDir extends AsyncDisposable {
  readonly path: string;
  remove(): Promise<void>;
}

/** A fresh directory named fitha-LABEL-XXXXXX; `await using` removes it even when a test fails. */
export async function tempDir(label: string): Promise<TempDir> {
  if (!/^[a-z0-9-]{1,40}$/.test(label)) throw new RangeError(`temp dir label ${JSON.stringify(label)}`);
  const path = await mkdtemp(join(tempBase(), `fitha-${label}-`));
  const remove = () => rm(path, { recursive: true, force: true });
  return { path, remove, [Symbol.asyncDispose]: remove };
}
