import { join } from "node:path";

export interface TestConfig {
  /** One cluster per plane (an endpoint, or a member list); all three may be the same cluster. */
  management: string | readonly string[];
  storage?: string | readonly string[];
  service?: string | readonly string[];
  /** Key prefix, unique per test so tests sharing an etcd never see each other's keys. */
  prefix?: string;
  dialTimeoutMs?: number;
  requestTimeoutMs?: number;
  /**
   * Where the agent and the controller serve metrics ([metrics] agent_address and
   * controller_address); "" (none) by default: the daemons of one machine would all want the
   * default ports. "127.0.0.1:0" takes a free port (the daemon logs which).
   */
  metricsAddress?: string;
  /** More TOML, appended as is (e.g. the [host] and [controller] sections). */
  extra?: string;
}

/** Writes a fitha.toml into `dir` and returns its path. */
export async function writeConfig(dir: string, config: TestConfig): Promise<string> {
  const path = join(dir, "fitha.toml");
  const cluster = (endpoints: string | readonly string[]) => `endpoints = [${(typeof endpoints === "string" ? [endpoints] : endpoints).map((e) => JSON.stringify(e)).join(", ")}]`;
  await Bun.write(
    path,
    [
      "[etcd]",
      `prefix = ${JSON.stringify(config.prefix ?? "/fitha")}`,
      `dial_timeout_ms = ${config.dialTimeoutMs ?? 3000}`,
      `request_timeout_ms = ${config.requestTimeoutMs ?? 5000}`,
      "[etcd.management]",
      cluster(config.management),
      "[etcd.storage]",
      cluster(config.storage ?? config.management),
      "[etcd.service]",
      cluster(config.service ?? config.management),
      "[metrics]",
      `agent_address = ${JSON.stringify(config.metricsAddress ?? "")}`,
      `controller_address = ${JSON.stringify(config.metricsAddress ?? "")}`,
      config.extra ?? "",
    ].join("\n"),
  );
  return path;
}
