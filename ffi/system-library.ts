/**
 * Where a system shared library is opened from. Bun's dlopen of a bare name ("libvirt.so.0")
 * also looks in the current directory, so a daemon started from a directory someone else can
 * write to would load their library as root. fitha opens Debian's copy by its absolute
 * multiarch path, and names the package to install when it is missing.
 */
import { existsSync } from "node:fs";

/** Debian's multiarch library directory for x86_64, the only platform fitha's bindings describe. */
const libraryDir = "/usr/lib/x86_64-linux-gnu";

/** A library that is not installed where Debian puts it. */
export class SystemLibraryMissingError extends Error {
  constructor(
    readonly library: string,
    readonly debianPackage: string,
  ) {
    super(`cannot load ${library}: ${libraryDir}/${library} is missing (install the Debian package ${debianPackage})`);
    this.name = "SystemLibraryMissingError";
  }
}

/** The absolute path of `library` (e.g. "libvirt.so.0") from `debianPackage`; throws when it is not installed. */
export function systemLibraryPath(library: string, debianPackage: string): string {
  if (library.includes("/")) throw new RangeError(`a library file name, not a path: ${library}`);
  const path = `${libraryDir}/${library}`;
  if (!existsSync(path)) throw new SystemLibraryMissingError(library, debianPackage);
  return path;
}
