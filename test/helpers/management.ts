/**
 * For tests of the operator commands: one real etcd for a test file, and per test a fresh key
 * prefix with a fitha.toml naming it, a Kv to write records directly (as the daemons would) and
 * the built binary run against it.
 */
import { mkdir } from "node:fs/promises";
import { EtcdKv } from "../../src/store/etcd-kv.ts";
import { keys, type Keys } from "../../src/store/keys.ts";
import type { Kv } from "../../src/store/kv.ts";
import type { HostRecord } from "../../src/store/records.ts";
import { writeConfig } from "./config.ts";
import { etcdSettings } from "./etcd-settings.ts";
import { startEtcd, type LocalEtcd } from "./etcd.ts";
import { runFitha, type RunResult } from "./fitha.ts";
import { tempDir, type TempDir } from "./tmp.ts";

/** For a test that runs the binary several times (~0.3 s each, several times that on a loaded machine). */
export const commandTestTimeoutMs = 20_000;

export interface Scope {
  /** The fitha.toml of this scope. */
  readonly config: string;
  readonly kv: Kv;
  readonly keys: Keys;
  /** `fitha ARGS --config <this scope's file>`. */
  fitha(...args: string[]): Promise<RunResult>;
}

export interface ManagementFixture {
  readonly etcd: LocalEtcd;
  /** A fresh prefix (`label` must be unique in the file). */
  scope(label: string): Promise<Scope>;
  stop(): Promise<void>;
}

export async function startManagement(name: string): Promise<ManagementFixture> {
  const dir: TempDir = await tempDir(name);
  const etcd = await startEtcd({ name });
  const clients: Kv[] = [];
  return {
    etcd,
    async scope(label) {
      const prefix = `/${label}`;
      const scopeDir = `${dir.path}/${label}`;
      await mkdir(scopeDir);
      const config = await writeConfig(scopeDir, { management: etcd.endpoint, prefix });
      const kv = EtcdKv.connect(etcdSettings({ endpoint: etcd.endpoint, prefix }), "management");
      clients.push(kv);
      return { config, kv, keys: keys(prefix), fitha: (...args) => runFitha([...args, "--config", config]) };
    },
    async stop() {
      for (const kv of clients) kv.close();
      await etcd.stop();
      await dir.remove();
    },
  };
}

/** A valid registration record of `name`, as an agent writes it. */
export function hostRecord(name: string, hostId: number): HostRecord {
  return {
    name,
    hostId,
    addresses: { management: "10.0.0.1", storage: "10.0.1.1", service: "10.0.2.1" },
    capacity: { cpus: 8, memoryKiB: 16_777_216 },
    agentVersion: "0.1.0",
    registeredAt: new Date().toISOString(),
  };
}
