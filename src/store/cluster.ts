/**
 * Connecting to the etcd cluster of one network plane, and probing its health for `fitha status`
 * and the daemons' start-up checks.
 */
import { Etcd3 } from "etcd3";
import type { FithaConfig, Plane } from "../config/fitha-config.ts";
import { withDeadline } from "../deadline.ts";
import { errorMessage } from "../errors.ts";
import { readEtcdCredentials, type EtcdCredentials } from "./credentials.ts";
import { dropIpServerNames } from "./tls-servername.ts";

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
  dropIpServerNames();
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
 * Error: connect ECONNREFUSED 127.0.0.1:1. Resolution note: "); operators need the cause, and
 * for TLS and authentication failures, whose words come from OpenSSL or etcd, what to fix.
 */
export function describeEtcdError(error: unknown): string {
  const message = errorMessage(error);
  const cause = /Last error: (?:Error: )?(.*?)\.?(?: Resolution note:.*)?$/s.exec(message)?.[1];
  // grpc-js stamps some causes with the time, " (2026-01-02T03:04:05.678Z)": noise in a message.
  const described = (cause !== undefined && cause !== "" ? cause : message).replace(/ \(\d{4}-\d\d-\d\dT[\d:.]+Z\)/g, "");
  const hint = securityHints.find(([pattern]) => pattern.test(described))?.[1];
  return hint === undefined ? described : `${described}: ${hint}`;
}

/** What a TLS or authentication failure means for fitha.toml, by the words OpenSSL or etcd use for it. */
const securityHints: ReadonlyArray<readonly [RegExp, string]> = [
  // The server's TLS alert: Go's TLS sends "bad certificate" for a missing one and for one of an unknown CA alike.
  [
    /ALERT_(BAD_CERTIFICATE|UNKNOWN_CA|CERTIFICATE_REQUIRED|CERTIFICATE_UNKNOWN|UNSUPPORTED_CERTIFICATE|CERTIFICATE_EXPIRED)/,
    "the etcd server refused this client's certificate (or its lack of one): it accepts only client certificates signed by a CA it trusts (its --trusted-ca-file); set etcd.tls.cert_file and etcd.tls.key_file to one",
  ],
  [
    /unable to verify the first certificate|unable to get (local )?issuer certificate|self[- ]signed certificate|certificate signed by unknown authority/i,
    "the etcd server's certificate is not signed by the CA in etcd.tls.ca_file; set it to the CA that signed the servers' certificates",
  ],
  [/certificate has expired|certificate is not yet valid/i, "a certificate is outside its validity period (check its dates and this host's clock)"],
  [/does not match certificate's altnames|ERR_TLS_CERT_ALTNAME_INVALID/i, "the etcd server's certificate does not name the address of the endpoint: its subjectAltName must list that IP address or DNS name"],
  [/before secure TLS connection was established/i, "the endpoint is https:// but the server did not complete a TLS handshake; if it serves plain http, use http:// and leave etcd.tls empty"],
  [/^Failed to connect$/, "no gRPC connection; if the etcd server serves TLS, its endpoints must be https:// with etcd.tls.ca_file set"],
  [/authentication failed, invalid user ID or password/, "check etcd.auth.username and the password in etcd.auth.password_file"],
  [/user name is empty/, "the etcd cluster has authentication enabled: set etcd.auth.username and etcd.auth.password_file (or use a client certificate whose CN is an etcd user)"],
  [/permission denied/, "the etcd user (etcd.auth.username; without one, the client certificate's CN) has no permission for this key: `fitha etcd roles` prints the roles fitha needs"],
];
