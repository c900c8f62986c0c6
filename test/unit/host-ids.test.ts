/**
 * Lockspace host id allocation on MemoryKv: lowest free id, idempotence, bad claims, bounds and
 * racing allocators. Racing allocators against a real etcd: test/integration/host-ids.test.ts.
 */
import { describe, expect, test } from "bun:test";
import { VirtualClock } from "../../src/core/clock.ts";
import { DecodeError } from "../../src/store/codec.ts";
import { allocateHostId } from "../../src/store/host-ids.ts";
import { keys } from "../../src/store/keys.ts";
import { MemoryCluster } from "../../src/store/memory-kv.ts";
import { hostIdClaim } from "../../src/store/records.ts";
import { listRecords } from "../../src/store/typed.ts";

const k = keys("/fitha");
const now = () => new Date("2026-01-31T12:00:00.000Z");

function cluster() {
  return new MemoryCluster(new VirtualClock());
}

describe("allocateHostId", () => {
  test("hands out the lowest free id, and the same id again to the same host", async () => {
    const kv = cluster().connect();
    expect(await allocateHostId(kv, k, "node-a", 16, { now })).toBe(1);
    expect(await allocateHostId(kv, k, "node-b", 16, { now })).toBe(2);
    expect(await allocateHostId(kv, k, "node-a", 16, { now })).toBe(1);
    expect((await kv.get(k.hostId(2)))?.value).toBe(JSON.stringify({ host: "node-b", claimedAt: "2026-01-31T12:00:00.000Z" }));
    await kv.delete(k.hostId(1)); // an operator freed it
    expect(await allocateHostId(kv, k, "node-c", 16, { now })).toBe(1);
  });

  test("a claim whose value is bad keeps its id taken and is reported", async () => {
    const kv = cluster().connect();
    await kv.put(k.hostId(1), JSON.stringify({ host: "node-a", claimedAt: "2026-01-31T12:00:00.000Z" }));
    await kv.put(k.hostId(2), "{not json");
    await kv.put(`${k.hostIdsPrefix}not-an-id`, JSON.stringify({ host: "node-x", claimedAt: "2026-01-31T12:00:00.000Z" }));
    const bad: DecodeError[] = [];
    expect(await allocateHostId(kv, k, "node-b", 16, { now, onBadValue: (error) => bad.push(error) })).toBe(3);
    expect(bad).toHaveLength(1);
    expect(bad[0]).toBeInstanceOf(DecodeError);
    expect(bad[0]!.source).toBe(k.hostId(2));
  });

  test("all ids taken, or an own id beyond max hosts: a clear error", async () => {
    const kv = cluster().connect();
    await allocateHostId(kv, k, "node-a", 2, { now });
    await allocateHostId(kv, k, "node-b", 2, { now });
    await expect(allocateHostId(kv, k, "node-c", 2, { now })).rejects.toThrow("no lockspace host id left for host node-c: all 2 are claimed under /fitha/host-ids/");
    await expect(allocateHostId(kv, k, "node-b", 1, { now })).rejects.toThrow("host node-b holds lockspace host id 2 (/fitha/host-ids/00002), beyond lockspace host ids 1..1");
    await expect(allocateHostId(kv, k, "bad name", 2, { now })).rejects.toThrow(RangeError);
    await expect(allocateHostId(kv, k, "node-d", 2001, { now })).rejects.toThrow("max hosts 2001: 1 to 2000");
  });

  test("racing allocators, each on its own client: one distinct id per name", async () => {
    const memory = cluster();
    const names = Array.from({ length: 20 }, (_, i) => `node-${i}`);
    const ids = await Promise.all(names.map((name) => allocateHostId(memory.connect(), k, name, 20, { now })));
    expect([...ids].sort((a, b) => a - b)).toEqual(names.map((_, i) => i + 1));
    const claims = await listRecords(memory.connect(), k.hostIdsPrefix, hostIdClaim);
    expect(claims.records.map((c) => [c.key, c.record.host])).toEqual(
      ids.map((id, i) => [k.hostId(id), names[i]!] as [string, string]).sort(([a], [b]) => (a < b ? -1 : 1)),
    );
  });
});
