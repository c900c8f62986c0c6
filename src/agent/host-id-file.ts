/**
 * The hand-over of this host's lockspace id from the agent to lockd: the agent gets the id from
 * etcd when it registers the host (src/store/host-ids.ts) and writes it to a local file; lockd,
 * which has no etcd by design (its safety must not depend on it), reads it at start
 * (`fitha lockd --host-id-file`). So a new host needs no id typed in by hand.
 *
 * lockd does not wait for the file: under systemd the agent starts after lockd, so a lockd
 * waiting in its start would hold the agent back for its whole start timeout. It exits 1 instead
 * and systemd starts it again a moment later (Restart=on-failure), by when the agent has written it.
 */
import { readFile, rename, rm, writeFile } from "node:fs/promises";
import { FithaError, UsageError } from "../errors.ts";

/** Where the systemd units (scripts/systemd/) hand the id over. */
export const defaultHostIdFile = "/var/lib/fitha/host-id";

/** A host id, one line: nothing else fits in a file this small. */
const maxFileBytes = 64;

export class HostIdFileMissingError extends FithaError {
  constructor(readonly path: string) {
    super(`no host id yet: ${path} does not exist (fitha agent writes it once it has registered this host; under systemd lockd is started again until then)`);
    this.name = "HostIdFileMissingError";
  }
}

/** The id in `path`; HostIdFileMissingError while there is none; a UsageError for anything but a positive whole number. */
export async function readHostIdFile(path: string): Promise<number> {
  const content = await readFile(path, "utf8").catch((error: NodeJS.ErrnoException) => {
    if (error.code === "ENOENT") throw new HostIdFileMissingError(path);
    throw new FithaError(`${path}: cannot read the host id (${error.code ?? error.message})`);
  });
  const text = content.length > maxFileBytes ? "" : content.trim();
  const id = /^[1-9][0-9]{0,8}$/.test(text) ? Number(text) : Number.NaN;
  if (!Number.isSafeInteger(id)) throw new UsageError(`${path}: expected a host id (a positive whole number on one line), found ${JSON.stringify(content.slice(0, 20))}`);
  return id;
}

/**
 * Writes `id` to `path` unless it already holds it; atomically (a temp file renamed over it), so
 * that a lockd starting meanwhile reads the old content or the new, never half of it.
 */
export async function writeHostIdFile(path: string, id: number): Promise<"written" | "unchanged"> {
  if (!(Number.isSafeInteger(id) && id >= 1)) throw new RangeError(`host id ${id}`);
  const current = await readHostIdFile(path).catch(() => undefined);
  if (current === id) return "unchanged";
  const temporary = `${path}.${process.pid}.tmp`;
  try {
    await writeFile(temporary, `${id}\n`, { mode: 0o644 });
    await rename(temporary, path);
  } catch (error) {
    await rm(temporary, { force: true });
    throw error;
  }
  return "written";
}
