/** Lockspace host ids claimed by allocators racing on a real etcd, each with its own connection. */
import { expect, test } from "bun:test";
import { allocateHostId } from "../../src/store/host-ids.ts";
import { EtcdKv } from "../../src/store/etcd-kv.ts";
import { keys } from "../../src/store/keys.ts";
import { hostIdClaim } from "../../src/store/records.ts";
import { listRecords } from "../../src/store/typed.ts";
import { startEtcd } from "../helpers/etcd.ts";
import { etcdSettings } from "../helpers/etcd-settings.ts";

test("racing allocators never give one id to two names; each name keeps its id", async () => {
  await using etcd = await startEtcd({ name: "host-ids" });
  const k = keys("/host-ids-test");
  const names = Array.from({ length: 12 }, (_, i) => `node-${i}`);
  // Two allocators per name, all at once: same-name pairs must agree too once settled.
  const clients = [...names, ...names].map(() => EtcdKv.connect(etcdSettings({ endpoint: etcd.endpoint }), "management"));
  try {
    const ids = await Promise.all(clients.map((kv, i) => allocateHostId(kv, k, names[i % names.length]!, 32)));
    const claims = await listRecords(clients[0]!, k.hostIdsPrefix, hostIdClaim);
    expect(claims.bad).toEqual([]);
    const holder = new Map(claims.records.map((c) => [c.key, c.record.host]));
    // Every id handed out is claimed in etcd by the very name it was handed to.
    ids.forEach((id, i) => expect({ id, holder: holder.get(k.hostId(id)) }).toEqual({ id, holder: names[i % names.length]! }));
    // From now on each name gets one id, distinct from every other name's.
    const settled = await Promise.all(names.map((name, i) => allocateHostId(clients[i]!, k, name, 32)));
    expect(new Set(settled).size).toBe(names.length);
  } finally {
    for (const kv of clients) kv.close();
  }
});
