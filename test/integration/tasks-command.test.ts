/** `fitha tasks`: the built binary against a real etcd holding recovery tasks. */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { newTask, startFailed, started, starting } from "../../src/core/recovery-tasks.ts";
import { commandTestTimeoutMs, startManagement, type ManagementFixture } from "../helpers/management.ts";

let cluster: ManagementFixture;

beforeAll(async () => {
  cluster = await startManagement("tasks-cmd");
}, commandTestTimeoutMs);

afterAll(async () => {
  await cluster?.stop();
});

describe("fitha tasks", () => {
  test("open tasks first, then closed ones; JSON with every field; a bad value is reported with exit 1", async () => {
    const scope = await cluster.scope("list");
    expect(await scope.fitha("tasks")).toEqual({ exitCode: 0, stdout: "no recovery tasks\n", stderr: "" });
    const t0 = Date.now() - 60_000;
    const done = started(starting(newTask("6c1a2b3c-0000-4000-8000-000000000001", "compute-2", t0, "host down"), "compute-1", t0 + 1_000), t0 + 5_000);
    const retrying = startFailed(starting(newTask("6c1a2b3c-0000-4000-8000-000000000002", "compute-2", t0 + 1, "host down"), "compute-3", t0 + 1_000), "libvirt refused", Date.now());
    for (const task of [done, retrying]) await scope.kv.put(scope.keys.task(task.vm), JSON.stringify(task));
    const json = await scope.fitha("tasks", "--json");
    expect(json.exitCode).toBe(0);
    const document = JSON.parse(json.stdout) as { tasks: Array<Record<string, unknown>>; bad_values: string[] };
    expect(document.bad_values).toEqual([]);
    expect(document.tasks.map((t) => [t["vm"], t["state"], t["attempts"], t["source"], t["target"], t["tried"]])).toEqual([
      [retrying.vm, "retrying", 1, "compute-2", "compute-3", ["compute-3"]],
      [done.vm, "done", 0, "compute-2", "compute-1", []],
    ]);
    expect(document.tasks[0]).toMatchObject({ name: null, not_before: new Date(retrying.notBeforeMs).toISOString(), reason: expect.stringContaining("attempt 1 on compute-3 failed: libvirt refused") });
    const text = await scope.fitha("tasks");
    expect(text.stdout.split("\n")[0]).toMatch(/^VM\s+STATE\s+ATTEMPTS\s+FROM\s+TO\s+AGE\s+REASON$/);
    await scope.kv.put(scope.keys.task("6c1a2b3c-0000-4000-8000-000000000003"), "{not json");
    const bad = await scope.fitha("tasks");
    expect(bad.exitCode).toBe(1);
    expect(bad.stdout).toContain("bad values (ignored):");
  }, commandTestTimeoutMs);
});
