import { describe, expect, test } from "bun:test";
import { SystemLibraryMissingError, systemLibraryPath } from "../../ffi/system-library.ts";

describe("system libraries", () => {
  test("are opened by their absolute Debian path, never looked up in the current directory", () => {
    expect(systemLibraryPath("libc.so.6", "libc6")).toBe("/usr/lib/x86_64-linux-gnu/libc.so.6");
  });

  test("a missing library names its file and the package to install", () => {
    const missing = () => systemLibraryPath("libfitha-none.so.9", "fitha-none");
    expect(missing).toThrow(SystemLibraryMissingError);
    expect(missing).toThrow("/usr/lib/x86_64-linux-gnu/libfitha-none.so.9 is missing (install the Debian package fitha-none)");
  });

  test("a path is refused: the directory is fitha's choice", () => {
    expect(() => systemLibraryPath("./libc.so.6", "libc6")).toThrow(RangeError);
  });
});
