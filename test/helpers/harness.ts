/**
 * What the fault-injection scenarios (test/harness/) share: VMs placed on a host and seen there,
 * waits on where VMs run (read from the history, not from fitha), failover times reported.
 */
import type { HarnessCluster, HarnessHost } from "../../scripts/harness/cluster.ts";
import { eventually } from "./eventually.ts";

export const failoverTimeoutMs = 60_000;

/** Where each of `uuids` runs, by the history's last look (host names, sorted). */
export function placement(cluster: HarnessCluster, uuids: readonly string[]): string[][] {
  return uuids.map((vm) => cluster.history.runningOn(vm).sort());
}

export async function healthy(cluster: HarnessCluster, host: HarnessHost): Promise<boolean> {
  return (await cluster.decision(host)) === "healthy";
}

/** Two HA VMs and a plain one started on `host` (healthy first), seen running there. */
export async function vmsOn(cluster: HarnessCluster, host: HarnessHost, prefix: string): Promise<{ ha: string[]; plain: string }> {
  await eventually(`${host.name} healthy`, () => healthy(cluster, host), 30_000, 200);
  const ha = [await cluster.runVm(host, `${prefix}-ha-1`, { ha: true }), await cluster.runVm(host, `${prefix}-ha-2`, { ha: true, priority: 5 })];
  const plain = await cluster.runVm(host, `${prefix}-plain`, { ha: false });
  await eventually(`the VMs seen on ${host.name}`, async () => placement(cluster, [...ha, plain]).every((hosts) => hosts.join() === host.name), 5_000, 50);
  return { ha, plain };
}

/** Waits until `uuids` run on exactly one host each, none of them `not`; returns the ms since `sinceMs`. */
export async function recoveredElsewhere(cluster: HarnessCluster, uuids: readonly string[], not: HarnessHost, sinceMs: number): Promise<number> {
  await eventually(`${not.name}'s HA VMs running elsewhere`, async () => placement(cluster, uuids).every((hosts) => hosts.length === 1 && hosts[0] !== not.name), failoverTimeoutMs, 100);
  return performance.now() - sinceMs;
}

/** One line in the test output: the scenario's measured time, for the note. */
export function reportTime(what: string, ms: number): void {
  console.log(`${what}: ${(ms / 1000).toFixed(1)} s`);
}
