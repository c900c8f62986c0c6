/** `fitha strategy check | set | show | default`: the built binary against a real etcd. */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { defaultStrategy, strategyToJson } from "../../src/core/strategy.ts";
import { listEvents } from "../../src/store/events.ts";
import { runFitha } from "../helpers/fitha.ts";
import { commandTestTimeoutMs, startManagement, type ManagementFixture } from "../helpers/management.ts";
import { tempDir, type TempDir } from "../helpers/tmp.ts";

let cluster: ManagementFixture;
let files: TempDir;

beforeAll(async () => {
  [cluster, files] = await Promise.all([startManagement("strategy-cmd"), tempDir("strategy-files")]);
}, commandTestTimeoutMs);

afterAll(async () => {
  await Promise.all([cluster?.stop(), files?.remove()]);
});

type Template = ReturnType<typeof strategyToJson>;

/** The default template with `change` applied, written to a file named `name`. */
async function templateFile(name: string, change: (template: Template) => unknown = (t) => t): Promise<string> {
  const path = join(files.path, name);
  await Bun.write(path, JSON.stringify(change(structuredClone(strategyToJson(defaultStrategy)))));
  return path;
}

/** Only storage down (row 6) no longer calls for HA, and a shorter grace. */
const custom = (t: Template) => ({ ...t, grace_ms: 30_000, rows: t.rows.map((row, n) => (n === 6 ? { ...row, ha: false } : row)) });

describe("fitha strategy check", () => {
  test("`strategy default` prints a template that checks ok", async () => {
    const printed = await runFitha(["strategy", "default"]);
    expect(printed.exitCode).toBe(0);
    expect(JSON.parse(printed.stdout)).toEqual(strategyToJson(defaultStrategy));
    const file = join(files.path, "default.json");
    await Bun.write(file, printed.stdout);
    expect(await runFitha(["strategy", "check", file])).toEqual({ exitCode: 0, stdout: `${file}: ok\n`, stderr: "" });
    const json = await runFitha(["strategy", "check", file, "--json"]);
    expect(JSON.parse(json.stdout)).toEqual({ file, ok: true, strategy: strategyToJson(defaultStrategy) });
  }, commandTestTimeoutMs);

  test("each problem on its own line naming the row and field, exit 2", async () => {
    const cases: Array<[string, (t: Template) => unknown, string[]]> = [
      ["missing.json", (t) => ({ ...t, rows: t.rows.filter((_, n) => n !== 3) }), ["rows: missing the row for management down, storage up, service up"]],
      ["duplicate.json", (t) => ({ ...t, rows: [...t.rows, t.rows[5]] }), ["rows[8]: duplicate row for management up, storage up, service down"]],
      [
        "fields.json",
        (t) => ({ ...t, grace_ms: "2m", rows: t.rows.map((row, n) => (n === 2 ? { ...row, colour: "red" } : n === 4 ? { ...row, ha: "yes" } : row)) }),
        ['grace_ms: expected an integer from 0 to 3600000, got "2m"', "rows[2].colour: unknown field", 'rows[4].ha: expected true or false, got "yes"'],
      ],
    ];
    await Promise.all(
      cases.map(async ([name, change, problems]) => {
        const file = await templateFile(name, change);
        const [text, json] = await Promise.all([runFitha(["strategy", "check", file]), runFitha(["strategy", "check", file, "--json"])]);
        expect({ name, ...text }).toEqual({ name, exitCode: 2, stdout: "", stderr: problems.map((p) => `fitha: ${file}: ${p}\n`).join("") });
        expect({ name, exitCode: json.exitCode, document: JSON.parse(json.stdout) }).toEqual({ name, exitCode: 2, document: { file, ok: false, problems } });
      }),
    );
    const missing = join(files.path, "nope.json");
    expect(await runFitha(["strategy", "check", missing])).toEqual({ exitCode: 2, stdout: "", stderr: `fitha: ${missing}: cannot read the file (no such file)\n` });
  }, commandTestTimeoutMs);
});

describe("fitha strategy set and show", () => {
  test("show: the default while nothing is stored", async () => {
    const scope = await cluster.scope("show-default");
    const json = await scope.fitha("strategy", "show", "--json");
    expect(json.exitCode).toBe(0);
    expect(JSON.parse(json.stdout)).toEqual({ source: "default", key: "/show-default/strategy", strategy: strategyToJson(defaultStrategy) });
    const text = await scope.fitha("strategy", "show");
    expect(text.stdout).toStartWith("strategy in force: the default (nothing stored in /show-default/strategy)\ngrace period: 120000 ms");
    expect(text.stdout).toMatch(/^  6 +up +up +down +yes$/m);
  }, commandTestTimeoutMs);

  test("set: a good template is put in force with an event; a bad one changes nothing", async () => {
    const scope = await cluster.scope("set");
    const good = await templateFile("good.json", custom);
    const set = await scope.fitha("strategy", "set", good);
    expect(set).toEqual({ exitCode: 0, stdout: "strategy in force: grace 30000 ms, HA in rows 0, 1, 2, 4\n", stderr: "" });
    const shown = JSON.parse((await scope.fitha("strategy", "show", "--json")).stdout);
    expect(shown).toEqual({ source: "etcd", key: "/set/strategy", strategy: custom(strategyToJson(defaultStrategy)) });
    expect((await scope.fitha("strategy", "show")).stdout).toMatch(/^  6 +up +up +down +no$/m);

    const events = await listEvents(scope.kv, scope.keys, { limit: 10 });
    expect(events.events.map((e) => e.record)).toEqual([
      {
        time: expect.any(String),
        kind: "strategy-changed",
        host: null,
        reason: `strategy from ${good}: grace 30000 ms, HA in rows 0, 1, 2, 4 (was the default: grace 120000 ms, HA in rows 0, 1, 2, 4, 6)`,
        by: expect.stringMatching(/^cli@.+@.+$/),
      },
    ]);

    const stored = await scope.kv.get(scope.keys.strategy);
    const bad = await templateFile("bad.json", (t) => ({ ...t, rows: t.rows.map((row, n) => (n === 7 ? { ...row, ha: true } : row)) }));
    const refused = await scope.fitha("strategy", "set", bad);
    expect(refused).toEqual({ exitCode: 2, stdout: "", stderr: `fitha: ${bad}: rows: the row with every plane up must have ha: false\n` });
    expect(await scope.kv.get(scope.keys.strategy)).toEqual(stored);
    expect((await listEvents(scope.kv, scope.keys, { limit: 10 })).events).toHaveLength(1);

    // The same template again: nothing to write, no event.
    expect((await scope.fitha("strategy", "set", good)).stdout).toBe("strategy unchanged: /set/strategy already holds this template\n");
    expect((await scope.kv.get(scope.keys.strategy))?.modRevision).toBe(stored!.modRevision);
  }, commandTestTimeoutMs);

  test("show: a bad stored value is reported, exit 1; set replaces it", async () => {
    const scope = await cluster.scope("show-bad");
    await scope.kv.put(scope.keys.strategy, JSON.stringify({ grace_ms: -1, rows: [] }));
    const shown = await scope.fitha("strategy", "show");
    expect(shown.exitCode).toBe(1);
    expect(shown.stdout).toBe("");
    expect(shown.stderr).toStartWith("fitha: /show-bad/strategy holds a bad value (the daemons ignore it and keep what they had): grace_ms: expected an integer from 0 to 3600000, got -1");
    const good = await templateFile("replacement.json");
    expect((await scope.fitha("strategy", "set", good)).exitCode).toBe(0);
    const events = await listEvents(scope.kv, scope.keys, { limit: 10 });
    expect(events.events[0]?.record.reason).toEndWith("(was a bad value)");
    expect(JSON.parse((await scope.fitha("strategy", "show", "--json")).stdout).source).toBe("etcd");
  }, commandTestTimeoutMs);
});
