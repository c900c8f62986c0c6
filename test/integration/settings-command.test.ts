/** `fitha config get | set`: the runtime settings in etcd, through the built binary. */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { defaultSettings, settingNames, settingSpecs, settingsToJson } from "../../src/core/settings.ts";
import { listEvents } from "../../src/store/events.ts";
import { commandTestTimeoutMs, startManagement, type ManagementFixture } from "../helpers/management.ts";

let cluster: ManagementFixture;

beforeAll(async () => {
  cluster = await startManagement("settings-cmd");
}, commandTestTimeoutMs);

afterAll(async () => {
  await cluster?.stop();
});

describe("fitha config get | set", () => {
  test("get: the defaults while nothing is stored; one setting alone prints its value", async () => {
    const scope = await cluster.scope("defaults");
    const [json, one, text] = await Promise.all([scope.fitha("config", "get", "--json"), scope.fitha("config", "get", "heartbeat_ttl_ms"), scope.fitha("config", "get")]);
    expect(JSON.parse(json.stdout)).toEqual({
      key: "/defaults/settings",
      stored: false,
      settings: settingNames.map((name) => {
        const { min, max, doc } = settingSpecs[name];
        return { name, value: settingSpecs[name].default, default: settingSpecs[name].default, min, max, doc };
      }),
    });
    expect(one).toEqual({ exitCode: 0, stdout: "60000\n", stderr: "" });
    expect(text.stdout).toStartWith("settings in force: the defaults (nothing stored in /defaults/settings)\n  SETTING ");
    expect(text.stdout).toMatch(/^  recovery_concurrency_per_host +2 +2 +1\.\.1000 +Recoveries in progress at once onto one target host\.$/m);
  }, commandTestTimeoutMs);

  test("set: a valid value changes what get shows, stored whole, with an event", async () => {
    const scope = await cluster.scope("set");
    expect(await scope.fitha("config", "set", "heartbeat_ttl_ms", "90000")).toEqual({ exitCode: 0, stdout: "heartbeat_ttl_ms: 60000 → 90000\n", stderr: "" });
    expect((await scope.fitha("config", "get", "heartbeat_ttl_ms")).stdout).toBe("90000\n");
    const json = JSON.parse((await scope.fitha("config", "get", "heartbeat_ttl_ms", "--json")).stdout);
    expect(json).toMatchObject({ stored: true, settings: [{ name: "heartbeat_ttl_ms", value: 90_000, default: 60_000 }] });
    expect(JSON.parse((await scope.kv.get(scope.keys.settings))!.value)).toEqual({ ...settingsToJson(defaultSettings), heartbeat_ttl_ms: 90_000 });
    const events = (await listEvents(scope.kv, scope.keys, { limit: 10 })).events.map((e) => e.record);
    expect(events).toEqual([{ time: expect.any(String), kind: "settings-changed", host: null, reason: "heartbeat_ttl_ms: 60000 → 90000", by: expect.stringMatching(/^cli@\S+@\S+$/) }]);
    expect((await scope.fitha("config", "set", "heartbeat_ttl_ms", "90000")).stdout).toBe("heartbeat_ttl_ms is 90000 already: nothing changed\n");
  }, commandTestTimeoutMs);

  test("bad values are refused with the reason, exit 2, nothing written", async () => {
    const scope = await cluster.scope("refused");
    await scope.fitha("config", "set", "recovery_concurrency", "20");
    const before = await scope.kv.get(scope.keys.settings);
    const cases: Array<[string[], string]> = [
      [["heartbeat_ttl_ms", "500"], "fitha: config set: heartbeat_ttl_ms: expected an integer from 1000 to 3600000, got 500\n"],
      [["heartbeat_ttl_ms", "1m"], 'fitha: config set: heartbeat_ttl_ms: expected an integer from 1000 to 3600000, got "1m"\n'],
      [["heartbeat_ttl_ms", "30000"], "fitha: config set: heartbeat_ttl_ms (30000) must be at least twice heartbeat_interval_ms (20000)\n"],
      [["recovery_concurrency_per_host", "21"], "fitha: config set: recovery_concurrency_per_host (21) cannot exceed recovery_concurrency (20)\n"],
      [["heartbeat_ttl", "60000"], `fitha: config set: unknown setting "heartbeat_ttl" (settings: ${settingNames.join(", ")})\n`],
    ];
    const results = await Promise.all(cases.map(([args]) => scope.fitha("config", "set", ...args)));
    cases.forEach(([args, stderr], i) => expect({ args, ...results[i] }).toEqual({ args, exitCode: 2, stdout: "", stderr }));
    expect(await scope.kv.get(scope.keys.settings)).toEqual(before);
    expect((await listEvents(scope.kv, scope.keys, { limit: 10 })).events).toHaveLength(1);
    const unknownGet = await scope.fitha("config", "get", "nope");
    expect(unknownGet.exitCode).toBe(2);
    expect(unknownGet.stderr).toStartWith('fitha: config get: unknown setting "nope" (settings: heartbeat_interval_ms, ');
  }, commandTestTimeoutMs);

  test("concurrent sets of different settings all take effect (compare-and-swap, retried)", async () => {
    const scope = await cluster.scope("concurrent");
    const changes: Array<[string, string]> = [
      ["heartbeat_interval_ms", "15000"],
      ["heartbeat_ttl_ms", "45000"],
      ["self_defense_down_percent", "40"],
      ["recovery_concurrency", "12"],
    ];
    const results = await Promise.all(changes.map(([name, value]) => scope.fitha("config", "set", name, value)));
    expect(results.map((r) => r.exitCode)).toEqual(changes.map(() => 0));
    const json = JSON.parse((await scope.fitha("config", "get", "--json")).stdout);
    const values = Object.fromEntries(json.settings.map((s: { name: string; value: number }) => [s.name, s.value]));
    expect(values).toMatchObject(Object.fromEntries(changes.map(([name, value]) => [name, Number(value)])));
    expect((await listEvents(scope.kv, scope.keys, { limit: 10 })).events).toHaveLength(changes.length);
  }, commandTestTimeoutMs);

  test("a bad stored value: get says so, exit 1", async () => {
    const scope = await cluster.scope("bad-stored");
    await scope.kv.put(scope.keys.settings, JSON.stringify({ heartbeat_ttl_ms: "long" }));
    const result = await scope.fitha("config", "get");
    expect(result).toEqual({
      exitCode: 1,
      stdout: "",
      stderr: 'fitha: /bad-stored/settings holds a bad value (the daemons ignore it and keep what they had): heartbeat_ttl_ms: expected an integer from 1000 to 3600000, got "long"\n',
    });
  }, commandTestTimeoutMs);
});
