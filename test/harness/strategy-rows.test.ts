/**
 * All 8 rows of the default strategy on real processes in network namespaces: one host's links to
 * the planes of the row that are down are cut in the fabric. Rows that call for HA have the host's
 * HA VMs run on exactly one other host each (the host stops them itself: on the leader's request
 * while it reaches management, on its own view after the grace while it does not); rows that do
 * not leave every VM where it is, past heartbeat TTL + grace + lease expiry. Plain VMs never move.
 * After every row, the host's links come back and no VM has ever run on two hosts at once.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { planes, type Plane } from "../../src/config/fitha-config.ts";
import { defaultStrategy, rowNumber, type PlaneStates } from "../../src/core/strategy.ts";
import { HarnessCluster } from "../../scripts/harness/cluster.ts";
import { eventually } from "../helpers/eventually.ts";
import { healthy, placement, recoveredElsewhere, reportTime, vmsOn } from "../helpers/harness.ts";

let cluster: HarnessCluster;
/** Past heartbeat TTL (2 s) + grace (2 s) + host-dead (8T + K = 10 s at T = 1 s), with margin. */
const noHaWatchMs = 16_000;

beforeAll(async () => {
  cluster = await HarnessCluster.start({ label: "strategy-rows", hosts: 4 });
}, 180_000);

afterAll(async () => {
  await cluster?.stop();
}, 60_000);

function states(row: number): PlaneStates {
  return { management: row & 4 ? "up" : "down", service: row & 2 ? "up" : "down", storage: row & 1 ? "up" : "down" };
}

describe("the default strategy's 8 rows, real processes", () => {
  for (let row = 0; row < 8; row++) {
    const planesOf = states(row);
    const down: Plane[] = planes.filter((plane) => planesOf[plane] === "down");
    const ha = defaultStrategy.rows[rowNumber(planesOf)]!.ha;
    test(`row ${row} (${down.length === 0 ? "every plane up" : `${down.join(" + ")} down`}) → ${ha ? "HA VMs run elsewhere" : "every VM stays"}`, async () => {
      // Hosts take turns, so that each row starts on a host that has been healthy a while.
      const host = cluster.hosts[row % cluster.hosts.length]!;
      const { ha: haVms, plain } = await vmsOn(cluster, host, `row${row}`);
      const cutAtMs = performance.now();
      await cluster.cut(host, down);
      if (ha) {
        reportTime(`row ${row} → HA VMs run elsewhere after`, await recoveredElsewhere(cluster, haVms, host, cutAtMs));
        expect(placement(cluster, [plain])).toEqual([[host.name]]);
      } else {
        await Bun.sleep(noHaWatchMs);
        expect(placement(cluster, [...haVms, plain])).toEqual([[host.name], [host.name], [host.name]]);
      }
      await cluster.heal(host, down);
      await eventually(`${host.name} healthy again`, () => healthy(cluster, host), 30_000, 200);
      expect(placement(cluster, haVms).map((hosts) => hosts.length)).toEqual([1, 1]);
      expect(cluster.history.overlaps()).toEqual([]);
    }, 150_000);
  }
});
