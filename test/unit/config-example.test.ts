import { expect, test } from "bun:test";
import { resolve } from "node:path";
import { loadConfig } from "../../src/config/load.ts";
import { fithaConfigSchema } from "../../src/config/fitha-config.ts";
import { fieldPaths } from "../../src/config/schema.ts";

const examplePath = resolve(import.meta.dir, "../../scripts/fitha.example.toml");

test("the shipped example config is valid", async () => {
  await loadConfig(examplePath);
});

test("the example documents every option, each set to its default and preceded by a comment", async () => {
  const lines = (await Bun.file(examplePath).text()).split("\n");
  const raw = Bun.TOML.parse(lines.join("\n"));
  for (const { key, field } of fieldPaths(fithaConfigSchema)) {
    const path = key.split(".");
    const name = path.at(-1)!;
    const table = path.slice(0, -1).join(".");
    const value = path.reduce<unknown>((node, part) => (node as Record<string, unknown> | undefined)?.[part], raw);
    expect({ key, present: value !== undefined }).toEqual({ key, present: true });
    if (field.default !== undefined) expect({ key, value }).toEqual({ key, value: field.default as never });
    // The line that sets it, inside its [table], follows a comment line.
    const tableStart = lines.indexOf(`[${table}]`);
    const at = lines.findIndex((line, i) => i > tableStart && line.startsWith(`${name} = `));
    expect({ key, found: at > tableStart }).toEqual({ key, found: true });
    expect({ key, commented: lines[at - 1]!.startsWith("#") }).toEqual({ key, commented: true });
  }
});
