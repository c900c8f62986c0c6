/** The etcd section of a fitha configuration for tests, validated like a real fitha.toml. */
import { parseConfig } from "../../src/config/load.ts";
import type { EtcdSettings } from "../../src/store/cluster.ts";

export interface TestEtcdSettings {
  /** Every plane's cluster, unless given per plane. */
  endpoint: string;
  prefix?: string;
  requestTimeoutMs?: number;
  dialTimeoutMs?: number;
}

export function etcdSettings(options: TestEtcdSettings): EtcdSettings {
  const endpoints = `endpoints = [${JSON.stringify(options.endpoint)}]`;
  return parseConfig(
    "test settings",
    [
      "[etcd]",
      `prefix = ${JSON.stringify(options.prefix ?? "/fitha")}`,
      `request_timeout_ms = ${options.requestTimeoutMs ?? 2_000}`,
      `dial_timeout_ms = ${options.dialTimeoutMs ?? 2_000}`,
      `[etcd.management]\n${endpoints}`,
      `[etcd.storage]\n${endpoints}`,
      `[etcd.service]\n${endpoints}`,
    ].join("\n"),
  ).etcd;
}
