/**
 * Connecting to the etcd cluster of one network plane, and probing its health for `fitha status`
 * and the daemons' start-up checks.
 */
import { Etcd3 } from "etcd3";
import type { FithaConfig, Plane } from "../config/fitha-config.ts";
import { withDeadline } from "../deadline.ts";
import { errorMessage } from "../errors.ts";
import { readEtcdCredentials, type EtcdCredentials } from "./credentials.ts";

export type EtcdSettings = FithaConfig["etcd"];

/**
 * etcd refuses client pings more often than every 5 s (--grpc-keepalive-min-time) with a GOAWAY;
 * one every 10 s finds a silently dead connection (a cut network leaves no RST) under a watch,
 * which would otherwise wait forever for events that cannot come.
 */
const keepalivePingMs = 10_000;

/**
 * A client for `plane`'s cluster whose every unary request carries the configured deadline.
 * `credentials` are read from their files unless given: a daemon reads them once for all planes.
 */
export function connectPlane(etcd: EtcdSettings, plane: Plane, credentials: EtcdCredentials = readEtcdCredentials(etcd)): Etcd3 {
  const { tls, auth } = credentials;
  return new Etcd3({
    hosts: [...etcd[plane].endpoints],
    dialTimeout: etcd.dial_timeout_ms,
    defaultCallOptions: (context) => (context.isStream ? {} : { deadline: Date.now() + etcd.request_timeout_ms }),
    grpcOptions: { "grpc.keepalive_time_ms": keepalivePingMs, "grpc.keepalive_timeout_ms": etcd.request_timeout_ms },
    ...(tls === undefined ? {} : { credentials: { rootCertificate: tls.rootCertificate, ...(tls.client === undefined ? {} : { certChain: tls.client.certChain, privateKey: tls.client.privateKey }) } }),
    ...(auth === undefined ? {} : { auth: { username: auth.username, password: auth.password.reveal() } }),
  });
}

export type ClusterProbe =
  | {
      readonly reachable: true;
      /** Round trip of one status request on an established connection. */
      readonly latencyMs: number;
      readonly clusterId: string;
      readonly etcdVersion: string;
      readonly leaderId: string;
      readonly members: number;
    }
  | { readonly reachable: false; readonly error: string };

/** Asks the cluster who it is; never rejects: an unreachable cluster is a result, not an error. */
export async function probeCluster(client: Etcd3, etcd: EtcdSettings, plane: Plane): Promise<ClusterProbe> {
  // Dialing and the request each get their own budget; the sum bounds the whole probe.
  const timeoutMs = etcd.dial_timeout_ms + etcd.request_timeout_ms;
  try {
    // The first request also dials; the second one's round trip is the latency an operator means.
    await withDeadline(client.maintenance.status(), timeoutMs, `etcd of the ${plane} plane`);
    const started = performance.now();
    const status = await withDeadline(client.maintenance.status(), timeoutMs, `etcd of the ${plane} plane`);
    const latencyMs = performance.now() - started;
    const members = await withDeadline(client.cluster.memberList({}), timeoutMs, `etcd of the ${plane} plane`);
    return {
      reachable: true,
      latencyMs,
      clusterId: BigInt(status.header.cluster_id).toString(16),
      etcdVersion: status.version,
      leaderId: BigInt(status.leader).toString(16),
      members: members.members.length,
    };
  } catch (error) {
    return { reachable: false, error: describeEtcdError(error) };
  }
}

/**
 * gRPC wraps the cause in boilerplate ("14 UNAVAILABLE: No connection established. Last error:
 * Error: connect ECONNREFUSED 127.0.0.1:1. Resolution note: "); operators need the cause.
 */
export function describeEtcdError(error: unknown): string {
  const message = errorMessage(error);
  const cause = /Last error: (?:Error: )?(.*?)\.?(?: Resolution note:.*)?$/s.exec(message)?.[1];
  return cause !== undefined && cause !== "" ? cause : message;
}
