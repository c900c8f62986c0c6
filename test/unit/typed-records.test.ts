/** Reading typed records: good ones decoded, bad ones returned as DecodeErrors naming the key. */
import { describe, expect, test } from "bun:test";
import { VirtualClock } from "../../src/core/clock.ts";
import { DecodeError } from "../../src/store/codec.ts";
import { keys } from "../../src/store/keys.ts";
import { MemoryCluster } from "../../src/store/memory-kv.ts";
import { maintenanceRecord } from "../../src/store/records.ts";
import { listRecords, readRecord } from "../../src/store/typed.ts";

const k = keys("/fitha");
const on = { on: true, reason: "kernel update", by: "ops@desk", at: "2026-01-31T12:00:00.000Z" };

describe("readRecord", () => {
  test("absent, good, not JSON, wrong shape", async () => {
    const kv = new MemoryCluster(new VirtualClock()).connect();
    expect(await readRecord(kv, k.maintenanceGlobal, maintenanceRecord)).toBeUndefined();
    const revision = await kv.put(k.maintenanceGlobal, JSON.stringify(on));
    expect(await readRecord(kv, k.maintenanceGlobal, maintenanceRecord)).toEqual({ record: on, key: k.maintenanceGlobal, modRevision: revision });
    await kv.put(k.maintenanceGlobal, "{oops");
    const notJson = await readRecord(kv, k.maintenanceGlobal, maintenanceRecord);
    expect(notJson !== undefined && "bad" in notJson && notJson.bad.message).toStartWith("/fitha/maintenance/global: not JSON");
    await kv.put(k.maintenanceGlobal, JSON.stringify({ ...on, on: "yes" }));
    const wrong = await readRecord(kv, k.maintenanceGlobal, maintenanceRecord);
    expect(wrong !== undefined && "bad" in wrong && wrong.bad.problems).toEqual(['on: expected true or false, got "yes"']);
  });
});

describe("listRecords", () => {
  test("good records in key order, bad ones apart; limit pages with lastKey", async () => {
    const kv = new MemoryCluster(new VirtualClock()).connect();
    await kv.put(k.maintenanceHost("c"), JSON.stringify(on));
    await kv.put(k.maintenanceHost("b"), "[]");
    await kv.put(k.maintenanceHost("a"), JSON.stringify({ ...on, reason: "disk" }));
    const all = await listRecords(kv, k.maintenanceHostsPrefix, maintenanceRecord);
    expect(all.records.map((r) => [r.key, r.record.reason])).toEqual([
      [k.maintenanceHost("a"), "disk"],
      [k.maintenanceHost("c"), "kernel update"],
    ]);
    expect(all.bad).toHaveLength(1);
    expect(all.bad[0]).toBeInstanceOf(DecodeError);
    expect(all.bad[0]!.source).toBe(k.maintenanceHost("b"));
    const page = await listRecords(kv, k.maintenanceHostsPrefix, maintenanceRecord, { limit: 2 });
    expect(page).toMatchObject({ more: true, lastKey: k.maintenanceHost("b") });
    const rest = await listRecords(kv, k.maintenanceHostsPrefix, maintenanceRecord, { startAfter: page.lastKey! });
    expect(rest.records.map((r) => r.key)).toEqual([k.maintenanceHost("c")]);
  });
});
