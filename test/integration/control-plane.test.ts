/**
 * The control plane as it runs: real etcd clusters (one per plane), `fitha agent` and
 * `fitha controller` processes from the built binary, and each agent reaching each plane's
 * cluster through a proxy of its own that the test cuts — one host's plane failing while the
 * others' go on. Heartbeats every 500 ms living 2 s (etcd's smallest lease), a 2 s grace period,
 * controller leases of 2 s.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { planes, type Plane } from "../../src/config/fitha-config.ts";
import { defaultSettings, settingsToJson } from "../../src/core/settings.ts";
import { defaultStrategy, haWanted, strategyToJson, type PlaneStates } from "../../src/core/strategy.ts";
import { EtcdKv } from "../../src/store/etcd-kv.ts";
import { keys as keysFor } from "../../src/store/keys.ts";
import type { Kv } from "../../src/store/kv.ts";
import { writeConfig } from "../helpers/config.ts";
import { startEtcd, type LocalEtcd } from "../helpers/etcd.ts";
import { etcdSettings } from "../helpers/etcd-settings.ts";
import { daemonCommand } from "../helpers/fitha.ts";
import { startLinkProxy, type LinkProxy } from "../helpers/link-proxy.ts";
import { eventually } from "../helpers/eventually.ts";
import { terminate } from "../helpers/terminate.ts";
import { tempDir, type TempDir } from "../helpers/tmp.ts";

const prefix = "/fitha-cp";
const keys = keysFor(prefix);
const ttlMs = 2_000;
const graceMs = 2_000;
/** From a cut to the request: the key's TTL, the grace period, and slack for a loaded machine. */
const detectionBoundMs = ttlMs + graceMs + 6_000;

let dir: TempDir;
const etcds = {} as Record<Plane, LocalEtcd>;
const admin = {} as Record<Plane, Kv>;
const children = new Set<Bun.Subprocess>();
/** Controller processes by name. */
const controllers = new Map<string, Bun.Subprocess<"ignore", "ignore", "pipe">>();

beforeAll(async () => {
  dir = await tempDir("control-plane");
  for (const plane of planes) {
    etcds[plane] = await startEtcd();
    admin[plane] = EtcdKv.connect(etcdSettings({ endpoint: etcds[plane].endpoint }), plane);
  }
}, 60_000);

afterAll(async () => {
  for (const child of children) await terminate(child, 2_000);
  for (const plane of planes) {
    admin[plane].close();
    await etcds[plane].stop();
  }
  await dir.remove();
}, 60_000);

function spawnFitha(args: string[]): Bun.Subprocess<"ignore", "ignore", "pipe"> {
  const child = Bun.spawn(daemonCommand([...args, "--log-format", "json"]), { stdin: "ignore", stdout: "ignore", stderr: "pipe", env: { PATH: "/usr/bin:/bin" } });
  children.add(child);
  return child;
}

interface Host {
  name: string;
  links: Record<Plane, LinkProxy>;
  agent: Bun.Subprocess;
}

async function startHost(name: string): Promise<Host> {
  const links = {} as Record<Plane, LinkProxy>;
  for (const plane of planes) links[plane] = await startLinkProxy(etcds[plane].endpoint);
  const config = await writeConfig(await subdir(name), {
    prefix,
    management: links.management.endpoint,
    storage: links.storage.endpoint,
    service: links.service.endpoint,
    dialTimeoutMs: 500,
    requestTimeoutMs: 1_000,
    extra: `[host]\nname = "${name}"\nhypervisor = "test:///default"\n`,
  });
  return { name, links, agent: spawnFitha(["agent", "--config", config]) };
}

async function startController(name: string): Promise<Bun.Subprocess<"ignore", "ignore", "pipe">> {
  const config = await writeConfig(await subdir(name), {
    prefix,
    management: etcds.management.endpoint,
    storage: etcds.storage.endpoint,
    service: etcds.service.endpoint,
    dialTimeoutMs: 500,
    requestTimeoutMs: 1_000,
    extra: `[controller]\nname = "${name}"\nelection_ttl_ms = 2000\nprobe_interval_ms = 300\n`,
  });
  const child = spawnFitha(["controller", "--config", config]);
  controllers.set(name, child);
  return child;
}

async function subdir(name: string): Promise<string> {
  const path = join(dir.path, name);
  await Bun.$`mkdir -p ${path}`.quiet();
  return path;
}

async function hostsOf(prefixKey: string, kv: Kv = admin.management): Promise<string[]> {
  return (await kv.getPrefix(prefixKey)).entries.map((e) => e.key.slice(prefixKey.length)).sort();
}

async function leader(): Promise<string | undefined> {
  const entry = await admin.management.get(keys.election);
  return entry === undefined ? undefined : (JSON.parse(entry.value) as { name: string }).name;
}

describe("control plane with real etcd and processes", () => {
  test("every strategy row at once: one host per row, its plane links cut → recovery requested exactly for the rows that call for HA, not before the grace period", async () => {
    await admin.management.put(keys.settings, JSON.stringify({ ...settingsToJson(defaultSettings), heartbeat_interval_ms: 500, heartbeat_ttl_ms: ttlMs, self_defense_down_percent: 90, self_recovery_healthy_percent: 95 }));
    await admin.management.put(keys.strategy, JSON.stringify({ ...strategyToJson(defaultStrategy), grace_ms: graceMs }));
    const hosts = await Promise.all(Array.from({ length: 8 }, (_, row) => startHost(`row-${row}`)));
    await startController("controller-a");
    await startController("controller-b");
    await eventually("the leader sees all 8 hosts", async () => (await hostsOf(keys.hostStatesPrefix)).length === 8, 30_000);
    await eventually("every heartbeat up", async () => (await Promise.all(planes.map((p) => hostsOf(keys.heartbeatsPrefix(p), admin[p])))).every((h) => h.length === 8), 10_000);

    const wanted: string[] = [];
    for (const [row, host] of hosts.entries()) {
      const states: PlaneStates = { management: row & 4 ? "up" : "down", service: row & 2 ? "up" : "down", storage: row & 1 ? "up" : "down" };
      if (haWanted(defaultStrategy, states)) wanted.push(host.name);
      for (const plane of planes) if (states[plane] === "down") host.links[plane].cut("reset");
    }
    const cutAtMs = Date.now();
    await Bun.sleep(graceMs / 2);
    // Not before the key's TTL plus the grace period can have passed.
    expect(await hostsOf(keys.recoveryRequestsPrefix)).toEqual([]);
    await eventually("recovery requests for the HA rows", async () => (await hostsOf(keys.recoveryRequestsPrefix)).length >= wanted.length, detectionBoundMs);
    expect(Date.now() - cutAtMs).toBeGreaterThanOrEqual(graceMs);
    // Give a wrong one time to show up, then check: exactly the √ rows.
    await Bun.sleep(graceMs);
    expect(await hostsOf(keys.recoveryRequestsPrefix)).toEqual(wanted.sort());
    expect(wanted).toEqual(["row-0", "row-1", "row-2", "row-4", "row-6"]);
    for (const host of hosts) for (const plane of planes) host.links[plane].restore();
  }, 120_000);

  test("leader SIGSTOPped: a standby takes over; resumed, the old leader writes nothing more", async () => {
    const first = await leader();
    expect(first).toBeDefined();
    const leaderProcess = controllers.get(first!)!;
    leaderProcess.kill("SIGSTOP");
    const stoppedAtMs = Date.now();
    await eventually("a standby leads", async () => {
      const now = await leader();
      return now !== undefined && now !== first;
    }, 4 * 2_000 + 4_000);
    expect(Date.now() - stoppedAtMs).toBeLessThan(2 * 2_000 + 4_000);
    const takeover = (await admin.management.getPrefix(keys.prefix + "/")).revision;
    leaderProcess.kill("SIGCONT");
    // The new leader rewrites what it decides; the old one, resumed, must not write a thing.
    await Bun.sleep(3_000);
    const written = (await admin.management.getPrefix(keys.prefix + "/")).entries.filter((e) => e.modRevision > takeover && e.value.includes(first!));
    expect(written.map((e) => e.key)).toEqual([]);
    expect(await leader()).not.toBe(first);
  }, 60_000);

  test("leader SIGKILLed: the other controller leads within twice the lease TTL", async () => {
    const current = await leader();
    expect(current).toBeDefined();
    const victim = controllers.get(current!)!;
    victim.kill("SIGKILL");
    await victim.exited;
    const killedAtMs = Date.now();
    await eventually("the other controller leads", async () => {
      const now = await leader();
      return now !== undefined && now !== current;
    }, 2 * 2_000 + 4_000);
    // etcd's lease expiry runs every 500 ms and the standby needs a round trip or two: 2 × TTL plus slack.
    expect(Date.now() - killedAtMs).toBeLessThan(2 * 2_000 + 2_000);
  }, 30_000);
});
