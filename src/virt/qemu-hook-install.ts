/**
 * fitha as libvirt's qemu hook: an executable script `qemu.d/fitha` in libvirt's hooks directory
 * that runs `fitha hook qemu` with libvirt's arguments. libvirt 6.5 and later runs every
 * executable in hooks/qemu.d/ (besides hooks/qemu), so fitha's hook sits next to any other
 * without editing it. libvirt looks for hooks only when it starts: a new one needs a restart.
 */
import { constants } from "node:fs";
import { access, chmod, lstat, mkdir, readFile, rename, rm, stat, writeFile } from "node:fs/promises";
import { isAbsolute, join } from "node:path";
import { ExitCode, FithaError } from "../errors.ts";

export const defaultHooksDir = "/etc/libvirt/hooks";
const scriptMode = 0o755;

export interface HookInstallOptions {
  /**
   * The root of the file system tree to install into: "/" for this host, or a staging tree
   * (scripts/install --prefix) where `hooksDir` and `binary` are taken relative to it.
   */
  readonly root: string;
  /** libvirt's hooks directory, as the host that runs libvirt sees it. */
  readonly hooksDir: string;
  /** The fitha executable the hook runs, as the host sees it (absolute: libvirt runs hooks with a minimal PATH). */
  readonly binary: string;
  /** Replace an existing script with other content. */
  readonly force: boolean;
  /** Check and decide, but write nothing. */
  readonly dryRun: boolean;
}

export interface HookInstallResult {
  readonly path: string;
  readonly script: string;
  /** installed: there was none; updated: other content or mode replaced; unchanged: already as wanted. */
  readonly outcome: "installed" | "updated" | "unchanged";
}

/** The script: libvirt's arguments after `--`, so a domain name starting with "-" is not an option. */
export function qemuHookScript(binary: string): string {
  return [
    "#!/bin/sh",
    "# fitha's libvirt qemu hook, written by `fitha hook install`. libvirt runs it for every qemu",
    "# domain event with the arguments DOMAIN OPERATION SUB_OPERATION EXTRA and the domain XML on",
    "# stdin. An HA domain's VM lease is acquired before it starts (a refusal stops the start) and",
    "# released after it has stopped; every other event returns at once.",
    `exec ${shellQuote(binary)} hook qemu -- "$@"`,
    "",
  ].join("\n");
}

export async function installQemuHook(options: HookInstallOptions): Promise<HookInstallResult> {
  await checkBinary(options.binary, options.root);
  const hooksDir = join(options.root, options.hooksDir);
  const hookDir = join(hooksDir, "qemu.d");
  const path = join(hookDir, "fitha");
  const script = qemuHookScript(options.binary);
  const existing = await lstat(path).catch((error: NodeJS.ErrnoException) => {
    if (error.code === "ENOENT") return undefined;
    throw new FithaError(`${path}: cannot inspect it (${error.code ?? error.message})`);
  });
  let outcome: HookInstallResult["outcome"] = "installed";
  if (existing !== undefined) {
    const sameContent = existing.isFile() && (await readFile(path, "utf8").catch(() => undefined)) === script;
    if (sameContent && (existing.mode & 0o777) === scriptMode) return { path, script, outcome: "unchanged" };
    if (!sameContent && !options.force) {
      throw new FithaError(`${path} exists with other content; not replacing it without --force (--dry-run shows what would be written)`);
    }
    outcome = "updated";
  }
  if (!options.dryRun) await writeAtomically(hooksDir, hookDir, path, script);
  return { path, script, outcome };
}

/** What is at qemu.d/fitha, for `fitha doctor`. */
export type InstalledHook =
  | { readonly state: "missing" | "not-a-file"; readonly path: string }
  /** A file, but not what `fitha hook install` writes (edited, or another program's). */
  | { readonly state: "foreign"; readonly path: string }
  | {
      readonly state: "installed";
      readonly path: string;
      /** The fitha executable it runs. */
      readonly binary: string;
      /** Whether the script has an execute bit (libvirt skips one that has none). */
      readonly executable: boolean;
      /** Why the binary could not run the hook (missing, not executable), or undefined. */
      readonly binaryProblem: string | undefined;
    };

/** Looks at qemu.d/fitha in `hooksDir`: is it exactly what `fitha hook install` writes, and for which binary. */
export async function inspectQemuHook(hooksDir: string): Promise<InstalledHook> {
  const path = join(hooksDir, "qemu.d", "fitha");
  const existing = await lstat(path).catch((error: NodeJS.ErrnoException) => {
    if (error.code === "ENOENT") return undefined;
    throw new FithaError(`${path}: cannot inspect it (${error.code ?? error.message})`);
  });
  if (existing === undefined) return { state: "missing", path };
  if (!existing.isFile()) return { state: "not-a-file", path };
  const script = await readFile(path, "utf8").catch((error: NodeJS.ErrnoException) => {
    throw new FithaError(`${path}: cannot read it (${error.code ?? error.message})`);
  });
  const quoted = /^exec ('(?:[^']|'\\'')*') hook qemu -- "\$@"$/m.exec(script)?.[1];
  const binary = quoted === undefined ? undefined : quoted.slice(1, -1).replaceAll(`'\\''`, "'");
  if (binary === undefined || script !== qemuHookScript(binary)) return { state: "foreign", path };
  const binaryProblem = await checkBinary(binary, "/").then(
    () => undefined,
    (error: unknown) => (error instanceof FithaError ? error.message : String(error)),
  );
  return { state: "installed", path, binary, executable: (existing.mode & 0o111) !== 0, binaryProblem };
}

/** A hook that cannot exec its binary fails every domain start: refuse to install one. */
async function checkBinary(binary: string, root: string): Promise<void> {
  if (!isAbsolute(binary)) throw new FithaError(`--binary ${binary}: must be an absolute path (libvirt runs hooks with a minimal PATH)`, ExitCode.usage);
  if (/[\p{Cc}]/u.test(binary)) throw new FithaError(`--binary ${JSON.stringify(binary)}: control characters in the path`, ExitCode.usage);
  const path = join(root, binary);
  const info = await stat(path).catch(() => undefined);
  const executable = info?.isFile() === true && (await access(path, constants.X_OK).then(() => true, () => false));
  if (!executable) throw new FithaError(`${path}: not an executable file; the hook would fail every domain start`);
}

/**
 * libvirt may run the hook at any moment (a domain starting), so it must never see a half-written
 * script: written next to qemu.d/, where libvirt runs nothing, then renamed into place.
 */
async function writeAtomically(hooksDir: string, hookDir: string, path: string, script: string): Promise<void> {
  const fail = (what: string) => (error: NodeJS.ErrnoException) => {
    throw new FithaError(`${what}: ${error.code ?? error.message}`);
  };
  await mkdir(hookDir, { recursive: true, mode: 0o755 }).catch(fail(`cannot create ${hookDir}`));
  const temporary = join(hooksDir, `.fitha-qemu-hook.${process.pid}.tmp`);
  try {
    await writeFile(temporary, script, { flag: "wx", mode: scriptMode }).catch(fail(`cannot write ${temporary}`));
    // The mode given to writeFile is reduced by the umask.
    await chmod(temporary, scriptMode).catch(fail(`cannot make ${temporary} executable`));
    await rename(temporary, path).catch(fail(`cannot move the hook into place at ${path}`));
  } finally {
    await rm(temporary, { force: true });
  }
}

function shellQuote(text: string): string {
  return `'${text.replaceAll("'", `'\\''`)}'`;
}
