import { defineCommand } from "citty";
import { planes, type Plane } from "../../config/fitha-config.ts";
import { describeStates } from "../../core/strategy.ts";
import { ExitCode } from "../../errors.ts";
import { logger } from "../../log.ts";
import { connectPlane, probeCluster, type ClusterProbe } from "../../store/cluster.ts";
import { KvError } from "../../store/kv.ts";
import { configArg, jsonArg, logArgs } from "../args.ts";
import { loadCommandConfig } from "../command-config.ts";
import { formatTable, printJson, printLines } from "../output.ts";
import { readClusterState, statusEventCount, type ClusterStateJson, type HostStatusJson } from "./common/cluster-state.ts";
import { formatEvent } from "./common/event-output.ts";
import { renderMaintenance } from "./common/maintenance-state.ts";
import { connectManagement } from "./common/management.ts";
import { formatDuration, formatSince } from "./common/time.ts";

const log = logger("status");

/**
 * JSON shape (`--json`); every key is always present, null where unknown:
 * {
 *   "planes": [ { "plane": "management"|"storage"|"service", "endpoints": ["http://..."],
 *                 "reachable": bool, "latency_ms": number|null, "etcd_version": string|null,
 *                 "cluster_id": hex string|null, "members": number|null, "leader_id": hex string|null,
 *                 "same_cluster_as": plane|null, "error": string|null } ],
 *   "hosts": { "registered": number|null },
 *   "state": { "leader", "mode", "maintenance", "hosts", "recovery_requests", "events", "bad_values" } | null
 *            (what the management cluster holds: src/cli/commands/common/cluster-state.ts documents it),
 *   "state_error": string|null (why "state" is null: the management cluster unreachable, a read failed)
 * }
 */
export interface StatusReport {
  planes: PlaneStatus[];
  hosts: { registered: number | null };
  state: ClusterStateJson | null;
  state_error: string | null;
}

interface PlaneStatus {
  plane: Plane;
  endpoints: readonly string[];
  reachable: boolean;
  latency_ms: number | null;
  etcd_version: string | null;
  cluster_id: string | null;
  members: number | null;
  leader_id: string | null;
  /** The first plane listed before this one that is served by the very same etcd cluster. */
  same_cluster_as: Plane | null;
  error: string | null;
}

export const statusCommand = defineCommand({
  meta: { description: "Show the state of the fitha cluster: each network plane's etcd cluster, the controller, maintenance, the hosts, the last events" },
  args: { ...configArg, ...jsonArg, ...logArgs },
  async run({ args }) {
    const { file, config } = await loadCommandConfig(args);
    log.debug("probing the etcd cluster of each plane", { config: file });
    const clients = planes.map((plane) => connectPlane(config.etcd, plane));
    try {
      const probes = await Promise.all(planes.map((plane, i) => probeCluster(clients[i]!, config.etcd, plane)));
      const report: StatusReport = {
        planes: planes.map((plane, i) => planeStatus(plane, config.etcd[plane].endpoints, probes, i)),
        hosts: { registered: null },
        state: null,
        state_error: null,
      };
      const nowMs = Date.now();
      const managementProbe = probes[0]!;
      if (managementProbe.reachable) {
        const { kv, keys } = connectManagement(config);
        try {
          const state = await readClusterState(kv, keys, nowMs);
          report.hosts.registered = state.registered;
          report.state = state.json;
        } catch (error) {
          // What could not be read stays unknown; the planes are shown all the same.
          if (!(error instanceof KvError)) throw error;
          report.state_error = error.message;
        } finally {
          kv.close();
        }
      } else {
        report.state_error = `etcd of the management plane is unreachable: ${managementProbe.error}`;
      }
      if (args.json) printJson(report);
      else printLines(...render(report, nowMs));
      // Scripts and monitoring can rely on the exit code: 0 only when every plane answered and the state was read.
      return report.planes.every((p) => p.reachable) && report.state !== null ? ExitCode.ok : ExitCode.failed;
    } finally {
      for (const client of clients) client.close();
    }
  },
});

function planeStatus(plane: Plane, endpoints: readonly string[], probes: readonly ClusterProbe[], index: number): PlaneStatus {
  const probe = probes[index]!;
  if (!probe.reachable) {
    return { plane, endpoints, reachable: false, latency_ms: null, etcd_version: null, cluster_id: null, members: null, leader_id: null, same_cluster_as: null, error: probe.error };
  }
  const sameAs = probes.findIndex((other) => other.reachable && other.clusterId === probe.clusterId);
  return {
    plane,
    endpoints,
    reachable: true,
    latency_ms: Math.round(probe.latencyMs * 100) / 100,
    etcd_version: probe.etcdVersion,
    cluster_id: probe.clusterId,
    members: probe.members,
    leader_id: probe.leaderId,
    same_cluster_as: sameAs < index ? (planes[sameAs] ?? null) : null,
    error: null,
  };
}

function render(report: StatusReport, nowMs: number): string[] {
  const rows = report.planes.map((p) => [
    p.plane,
    p.reachable ? "up" : "DOWN",
    p.latency_ms === null ? "-" : `${p.latency_ms.toFixed(1)} ms`,
    p.etcd_version ?? "-",
    p.members === null ? "-" : String(p.members),
    p.endpoints.join(",") + (p.same_cluster_as ? ` (same cluster as ${p.same_cluster_as})` : "") + (p.error ? `: ${p.error}` : ""),
  ]);
  const clusters = ["etcd clusters of the network planes", ...indent(formatTable(["PLANE", "STATE", "LATENCY", "ETCD", "MEMBERS", "ENDPOINTS"], rows)), ""];
  const { state } = report;
  if (state === null) return [...clusters, `hosts and controller state: unknown (${report.state_error})`];
  return [...clusters, `hosts: ${report.hosts.registered} registered`, ...indent(renderHosts(state.hosts)), ...renderState(state, nowMs)];
}

const indent = (lines: readonly string[]): string[] => lines.map((line) => `  ${line}`);

function renderHosts(hosts: readonly HostStatusJson[]): string[] {
  if (hosts.length === 0) return [];
  const rows = hosts.map(({ name, view }) => {
    if (view === null) return [name, ...planes.map(() => "-"), "-", "no controller view yet"];
    const plane = (p: Plane) => `${view.planes[p].state} ${formatDuration(view.planes[p].age_ms)}`;
    return [name, ...planes.map(plane), view.decision, view.reason];
  });
  return formatTable(["HOST", ...planes.map((p) => p.toUpperCase()), "DECISION", "REASON"], rows);
}

function renderState(state: ClusterStateJson, nowMs: number): string[] {
  const { mode } = state;
  const requests = state.recovery_requests.map((r) => [r.host, `${formatDuration(r.age_ms)} ago`, describeStates(r.planes), r.reason]);
  return [
    state.leader === null ? "controller: no leader (none running, or an election under way)" : `controller: ${state.leader} leads`,
    mode === null ? "mode: not decided yet (no controller has led)" : `mode: ${mode.mode} since ${formatSince(mode.since, nowMs)}: ${mode.reason}`,
    ...renderMaintenance(state.maintenance, nowMs),
    ...(requests.length === 0 ? ["recovery requests: none open"] : ["recovery requests:", ...indent(formatTable(["HOST", "REQUESTED", "PLANES", "REASON"], requests))]),
    state.events.length === 0 ? "events: none" : `last events (at most ${statusEventCount}, newest last):`,
    ...indent(state.events.map(formatEvent)),
    ...(state.bad_values.length === 0 ? [] : ["bad values (the daemons ignore them):", ...indent(state.bad_values)]),
  ];
}
