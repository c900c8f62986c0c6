import { describe, expect, test } from "bun:test";
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import { loadConfig } from "../../src/config/load.ts";
import { ExitCode, FithaError } from "../../src/errors.ts";
import { tempDir } from "../helpers/tmp.ts";

async function loadError(file: string): Promise<FithaError> {
  try {
    await loadConfig(file);
  } catch (error) {
    expect(error).toBeInstanceOf(FithaError);
    expect((error as FithaError).exitCode).toBe(ExitCode.usage);
    return error as FithaError;
  }
  throw new Error(`expected ${file} to be refused`);
}

describe("reading the config file", () => {
  test("a missing file is named, with how to point at another", async () => {
    await using dir = await tempDir("config-file");
    const file = join(dir.path, "absent.toml");
    expect((await loadError(file)).message).toBe(`${file}: cannot read config file (no such file); set --config or FITHA_CONFIG`);
  });

  test("a directory is not a config file", async () => {
    await using dir = await tempDir("config-file");
    await mkdir(join(dir.path, "d.toml"));
    expect((await loadError(join(dir.path, "d.toml"))).message).toEndWith("d.toml: not a regular file");
  });

  test("an oversized file is refused before parsing", async () => {
    await using dir = await tempDir("config-file");
    const file = join(dir.path, "big.toml");
    await Bun.write(file, `# ${"x".repeat(300 * 1024)}\n`);
    expect((await loadError(file)).message).toContain("more than the 262144 allowed");
  });
});
