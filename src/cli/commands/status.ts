import { defineCommand } from "citty";
import { planes, type Plane } from "../../config/fitha-config.ts";
import { ExitCode } from "../../errors.ts";
import { logger } from "../../log.ts";
import { connectPlane, probeCluster, type ClusterProbe } from "../../store/cluster.ts";
import { keys } from "../../store/keys.ts";
import { withDeadline } from "../../deadline.ts";
import { configArg, jsonArg, logArgs } from "../args.ts";
import { loadCommandConfig } from "../command-config.ts";
import { formatTable, printJson, printLines } from "../output.ts";

const log = logger("status");

/**
 * JSON shape (`--json`); every key is always present, null where unknown:
 * {
 *   "planes": [ { "plane": "management"|"storage"|"service", "endpoints": ["http://..."],
 *                 "reachable": bool, "latency_ms": number|null, "etcd_version": string|null,
 *                 "cluster_id": hex string|null, "members": number|null, "leader_id": hex string|null,
 *                 "same_cluster_as": plane|null, "error": string|null } ],
 *   "hosts": { "registered": number|null }
 * }
 */
export interface StatusReport {
  planes: PlaneStatus[];
  hosts: { registered: number | null };
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
  meta: { description: "Show the state of the fitha cluster: the etcd cluster of each network plane and the hosts" },
  args: { ...configArg, ...jsonArg, ...logArgs },
  async run({ args }) {
    const { file, config } = await loadCommandConfig(args);
    log.debug("probing the etcd cluster of each plane", { config: file });
    const clients = planes.map((plane) => connectPlane(config.etcd, plane));
    try {
      const probes = await Promise.all(planes.map((plane, i) => probeCluster(clients[i]!, config.etcd, plane)));
      const report: StatusReport = { planes: planes.map((plane, i) => planeStatus(plane, config.etcd[plane].endpoints, probes, i)), hosts: { registered: null } };
      if (probes[0]!.reachable) {
        const management = clients[0]!;
        const timeoutMs = config.etcd.request_timeout_ms;
        report.hosts.registered = await withDeadline(management.getAll().prefix(keys(config.etcd.prefix).hostsPrefix).count(), timeoutMs, "counting hosts");
      }
      if (args.json) printJson(report);
      else printLines(...render(report));
      // Scripts and monitoring can rely on the exit code: 0 only when every plane answered.
      return report.planes.every((p) => p.reachable) ? ExitCode.ok : ExitCode.failed;
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

function render(report: StatusReport): string[] {
  const rows = report.planes.map((p) => [
    p.plane,
    p.reachable ? "up" : "DOWN",
    p.latency_ms === null ? "-" : `${p.latency_ms.toFixed(1)} ms`,
    p.etcd_version ?? "-",
    p.members === null ? "-" : String(p.members),
    p.endpoints.join(",") + (p.same_cluster_as ? ` (same cluster as ${p.same_cluster_as})` : "") + (p.error ? `: ${p.error}` : ""),
  ]);
  const registered = report.hosts.registered;
  return [
    "etcd clusters of the network planes",
    ...formatTable(["PLANE", "STATE", "LATENCY", "ETCD", "MEMBERS", "ENDPOINTS"], rows).map((line) => `  ${line}`),
    "",
    registered === null ? "hosts: unknown (management cluster unreachable)" : `hosts: ${registered} registered`,
  ];
}
