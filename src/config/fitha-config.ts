/**
 * The schema of fitha.toml: the one place that lists every option, its type, bounds, default and
 * meaning. `scripts/fitha.example.toml` documents the same keys for operators; a test keeps the
 * two in step.
 */
import { listenAddressAccepts, listenAddressPattern } from "../metrics/listen-address.ts";
import { choice, integer, list, section, text, type ConfigOf } from "./schema.ts";

export const logLevels = ["error", "warn", "info", "debug", "trace"] as const;
export type LogLevel = (typeof logLevels)[number];
export const logFormats = ["human", "json"] as const;
export type LogFormat = (typeof logFormats)[number];

/** The three network planes; each has its own etcd cluster (they may be one cluster on a lab machine). */
export const planes = ["management", "storage", "service"] as const;
export type Plane = (typeof planes)[number];

const endpoint = text({
  doc: "etcd client URL",
  // An explicit port: etcd has two well-known ports (2379 client, 2380 peer) and guessing wrong
  // fails far from the typo.
  pattern: /^https?:\/\/(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$/,
  accepts: 'an etcd client URL with scheme and port, like "http://10.0.0.1:2379"',
});

/** A path to a file read at start (TLS material, a password); "" means none. */
function optionalFile(doc: string) {
  return text({
    doc,
    pattern: /^(|\/[^\0\n]{0,4095})$/,
    accepts: 'an absolute file path, or "" for none',
    default: "",
  });
}

function planeCluster(plane: Plane, role: string) {
  return section(`The etcd cluster of the ${plane} network plane: ${role}`, {
    endpoints: list(endpoint, {
      doc: `Client URLs of the ${plane} plane's etcd members, reached over that plane's network.`,
      maxItems: 9,
    }),
  });
}

export const fithaConfigSchema = {
  log: section("Logging of daemons and commands (to stderr; journald captures it under systemd).", {
    level: choice(logLevels, { doc: "Least severe level written.", default: "info" }),
    format: choice(logFormats, {
      doc: "human: readable lines (coloured on a terminal); json: one JSON object per line, for journald and log shippers.",
      default: "human",
    }),
  }),
  etcd: section("Where fitha keeps its shared state and heartbeats.", {
    prefix: text({
      doc: "Key prefix of all fitha keys, so that several fitha clusters (or tests) can share one etcd.",
      pattern: /^(\/[A-Za-z0-9._-]+)+$/,
      accepts: 'an absolute key path like "/fitha" (letters, digits, ".", "_", "-"; no trailing "/")',
      default: "/fitha",
    }),
    dial_timeout_ms: integer({
      doc: "How long to wait for a connection to an etcd cluster before calling it unreachable.",
      min: 100,
      max: 60_000,
      default: 3_000,
    }),
    request_timeout_ms: integer({
      doc: "Deadline of one etcd request; a request still pending then counts as failed.",
      min: 100,
      max: 60_000,
      default: 5_000,
    }),
    management: planeCluster("management", "holds all fitha state (hosts, VMs, tasks, events) and the management heartbeats."),
    storage: planeCluster("storage", "carries the storage-plane heartbeats."),
    service: planeCluster("service", "carries the service-plane heartbeats."),
    // Checked and read when fitha connects (src/store/credentials.ts), not here: `fitha config
    // check` validates a file offline, on a machine that may not hold the certificates.
    tls: section("TLS of the connections to every plane's etcd; all empty: plain http.", {
      ca_file: optionalFile("CA certificate (PEM) that signed the etcd servers' certificates; when set, every endpoint must be https://."),
      cert_file: optionalFile("Client certificate (PEM), for clusters that check client certificates; needs key_file and ca_file."),
      key_file: optionalFile("Private key (PEM) of cert_file."),
    }),
    auth: section("etcd user authentication (etcd's auth enable); both empty: none.", {
      username: text({
        doc: "etcd user fitha authenticates as; needs password_file.",
        pattern: /^[\x21-\x7e]{0,128}$/,
        accepts: 'a user name of printable ASCII characters without spaces (at most 128), or "" for none',
        default: "",
      }),
      password_file: optionalFile("File holding that user's password (one line; read at start, never logged); keep it mode 0600."),
    }),
  }),
  host: section("This compute host, for `fitha agent` (and lockd's fencing).", {
    name: hostNameField("This host's name in fitha (its etcd keys, events, status)."),
    hypervisor: text({
      doc: "libvirt URI of this host's VMs.",
      pattern: /^[a-z0-9+]+:\/\/[\x21-\x7e]*$/,
      accepts: 'a libvirt URI like "qemu:///system"',
      default: "qemu:///system",
    }),
    lockd_socket: text({
      doc: "Unix socket of this host's `fitha lockd` (its --socket): the agent acquires and releases VM leases through it.",
      // sun_path holds 108 bytes with the terminating NUL.
      pattern: /^\/[^\0\n]{0,106}$/,
      accepts: "an absolute path of at most 107 characters (a unix socket's limit)",
      default: "/run/fitha/lockd.sock",
    }),
    addresses: section("This host's address on each network plane.", {
      management: planeAddress("management"),
      storage: planeAddress("storage"),
      service: planeAddress("service"),
    }),
  }),
  controller: section("`fitha controller`: three run, one leads (an etcd election on the management cluster).", {
    name: hostNameField("This controller's name in the election and in events."),
    election_ttl_ms: integer({
      doc: "Leadership lease: a standby takes over within twice this after the leader dies or is cut off; the leader stops deciding before its lease can lapse.",
      min: 2_000,
      max: 120_000,
      default: 10_000,
    }),
    probe_interval_ms: integer({
      doc: "How often the leader checks that each plane's etcd answers; a silent one is a platform fault (no HA decisions from its heartbeats).",
      min: 100,
      max: 60_000,
      default: 2_000,
    }),
  }),
  alarms: section("Alarms: the leading controller sends each alarm (src/alarms/README.md) to a webhook, besides the event log.", {
    webhook_url: text({
      doc: "URL that gets each alarm as a JSON POST; \"\" means no webhook (alarms stay in the event log).",
      pattern: /^(|https?:\/\/[^\s]{1,2040})$/,
      accepts: 'an http:// or https:// URL, or "" for none',
      default: "",
    }),
    webhook_timeout_ms: integer({
      doc: "Deadline of one POST; a slower answer is a failed attempt, retried with backoff.",
      min: 100,
      max: 60_000,
      default: 5_000,
    }),
    queue_limit: integer({
      doc: "Alarms waiting for delivery at most; more are dropped (and counted in an alarms-dropped alarm).",
      min: 1,
      max: 100_000,
      default: 1_000,
    }),
  }),
  // One section for both daemons (not a key in [host] and one in [controller]): they may run on
  // one machine, so their addresses are chosen together.
  metrics: section("Prometheus metrics at http://ADDRESS/metrics (src/metrics/README.md lists them); lockd takes --metrics-address.", {
    agent_address: metricsAddress("`fitha agent`", "127.0.0.1:9731"),
    controller_address: metricsAddress("`fitha controller`", "127.0.0.1:9732"),
  }),
};

export type FithaConfig = ConfigOf<typeof fithaConfigSchema>;

/** "" means: the system host name (what `hostname` prints). */
function hostNameField(doc: string) {
  return text({
    doc,
    pattern: /^([A-Za-z0-9][A-Za-z0-9._-]{0,62})?$/,
    accepts: 'a host name (letters, digits, ".", "_", "-"; at most 63), or "" for the system host name',
    default: "",
  });
}

function metricsAddress(daemon: string, address: string) {
  return text({
    doc: `Where ${daemon} serves its metrics; "" for none. Loopback by default: reach it through a local Prometheus or a proxy.`,
    pattern: listenAddressPattern,
    accepts: listenAddressAccepts,
    default: address,
  });
}

function planeAddress(plane: Plane) {
  return text({
    doc: `This host's address on the ${plane} plane (for operators and placement); "" if unknown.`,
    pattern: /^[0-9A-Za-z.:_-]{0,253}$/,
    accepts: 'an IP address or host name, or ""',
    default: "",
  });
}
