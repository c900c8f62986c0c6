/** `fitha maintenance on | off | status`: the built binary against a real etcd. */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { listEvents } from "../../src/store/events.ts";
import { maintenanceRecord } from "../../src/store/records.ts";
import { readRecord } from "../../src/store/typed.ts";
import { commandTestTimeoutMs, hostRecord, startManagement, type ManagementFixture } from "../helpers/management.ts";

let cluster: ManagementFixture;

beforeAll(async () => {
  cluster = await startManagement("maintenance-cmd");
}, commandTestTimeoutMs);

afterAll(async () => {
  await cluster?.stop();
});

const operator = expect.stringMatching(/^[^@\s]+@[^@\s]+$/);
const isoTime = expect.stringMatching(/^\d{4}-\d\d-\d\dT[\d:.]+Z$/);

describe("fitha maintenance", () => {
  test("cluster-wide on and off: the record, the event, and what status and maintenance show", async () => {
    const scope = await cluster.scope("global");
    expect(await scope.fitha("maintenance")).toEqual({ exitCode: 0, stdout: "maintenance: off\n", stderr: "" });

    expect(await scope.fitha("maintenance", "on", "--reason", "kernel upgrades")).toEqual({ exitCode: 0, stdout: "cluster-wide maintenance is on\n", stderr: "" });
    const record = await readRecord(scope.kv, scope.keys.maintenanceGlobal, maintenanceRecord);
    expect(record).toMatchObject({ record: { on: true, reason: "kernel upgrades", by: operator, at: isoTime } });
    const [json, text, status] = await Promise.all([scope.fitha("maintenance", "status", "--json"), scope.fitha("maintenance"), scope.fitha("status", "--json")]);
    const global = { reason: "kernel upgrades", by: operator, at: isoTime };
    expect(JSON.parse(json.stdout)).toEqual({ global, hosts: [], bad_values: [] });
    expect(text.stdout).toMatch(/^maintenance: cluster-wide on since \S+ \(\d+s ago\) by \S+@\S+: kernel upgrades \(no HA anywhere\)\n$/);
    expect(JSON.parse(status.stdout).state.maintenance).toEqual({ global, hosts: [] });

    expect((await scope.fitha("maintenance", "off")).stdout).toBe("cluster-wide maintenance is off\n");
    expect(JSON.parse((await scope.fitha("maintenance", "--json")).stdout)).toEqual({ global: null, hosts: [], bad_values: [] });
    const events = (await listEvents(scope.kv, scope.keys, { limit: 10 })).events.map((e) => e.record);
    expect(events).toEqual([
      { time: isoTime, kind: "maintenance-on", host: null, reason: "cluster-wide maintenance is on: kernel upgrades", by: expect.stringMatching(/^cli@\S+@\S+$/) },
      { time: isoTime, kind: "maintenance-off", host: null, reason: "cluster-wide maintenance is off", by: expect.stringMatching(/^cli@\S+@\S+$/) },
    ]);
  }, commandTestTimeoutMs);

  test("--host: a registered host only; its record and event name it", async () => {
    const scope = await cluster.scope("per-host");
    const unknown = await scope.fitha("maintenance", "on", "--host", "ghost");
    expect(unknown).toEqual({ exitCode: 1, stdout: "", stderr: 'fitha: maintenance on: no host "ghost" is registered (/per-host/hosts/ghost does not exist)\n' });
    const badName = await scope.fitha("maintenance", "on", "--host", "a/b");
    expect(badName.exitCode).toBe(2);
    expect(badName.stderr).toStartWith('fitha: maintenance on: --host: host name "a/b": ');
    expect((await scope.kv.getPrefix(scope.keys.prefix + "/")).count).toBe(0);

    await scope.kv.put(scope.keys.host("compute-1"), JSON.stringify(hostRecord("compute-1", 1)));
    expect((await scope.fitha("maintenance", "on", "--host", "compute-1", "--reason", "disk swap")).stdout).toBe("maintenance of host compute-1 is on\n");
    const status = JSON.parse((await scope.fitha("status", "--json")).stdout);
    expect(status.state.maintenance).toEqual({ global: null, hosts: [{ host: "compute-1", reason: "disk swap", by: operator, at: isoTime }] });
    expect(status.state.hosts).toEqual([{ name: "compute-1", host_id: 1, maintenance: true, recovery_requested: false, view: null }]);
    expect((await scope.fitha("maintenance")).stdout).toMatch(/^maintenance: off cluster-wide\n  host compute-1 on since .+: disk swap\n$/);

    // A host deregistered while in maintenance can still be switched off.
    await scope.kv.delete(scope.keys.host("compute-1"));
    expect((await scope.fitha("maintenance", "off", "--host", "compute-1")).stdout).toBe("maintenance of host compute-1 is off\n");
    expect(JSON.parse((await scope.fitha("maintenance", "--json")).stdout).hosts).toEqual([]);
    const events = (await listEvents(scope.kv, scope.keys, { limit: 10 })).events.map((e) => [e.record.kind, e.record.host, e.record.reason]);
    expect(events).toEqual([
      ["maintenance-on", "compute-1", "maintenance of host compute-1 is on: disk swap"],
      ["maintenance-off", "compute-1", "maintenance of host compute-1 is off"],
    ]);
  }, commandTestTimeoutMs);
});
