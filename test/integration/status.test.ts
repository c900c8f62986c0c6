/** `fitha status` against real etcd servers: the planes' clusters, and the state the management cluster holds. */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Etcd3 } from "etcd3";
import { freePorts, startEtcd, type LocalEtcd } from "../helpers/etcd.ts";
import { writeConfig } from "../helpers/config.ts";
import { runFitha } from "../helpers/fitha.ts";
import { etcdSettings } from "../helpers/etcd-settings.ts";
import { commandTestTimeoutMs, hostRecord } from "../helpers/management.ts";
import { EtcdKv } from "../../src/store/etcd-kv.ts";
import { appendEvent } from "../../src/store/events.ts";
import { keys } from "../../src/store/keys.ts";
import type { HostStateRecord, ModeRecord, RecoveryRequest } from "../../src/store/records.ts";
import { tempDir, type TempDir } from "../helpers/tmp.ts";

let management: LocalEtcd;
let storage: LocalEtcd;
let dir: TempDir;

beforeAll(async () => {
  dir = await tempDir("status");
  [management, storage] = await Promise.all([startEtcd({ name: "status-mgmt" }), startEtcd({ name: "status-stor" })]);
});

afterAll(async () => {
  await Promise.all([management?.stop(), storage?.stop()]);
  await dir?.remove();
});

describe("fitha status", () => {
  test("reports each plane's cluster, which planes share one, and the registered hosts", async () => {
    const config = await writeConfig(dir.path, { management: management.endpoint, storage: storage.endpoint, prefix: "/status-a" });
    const result = await runFitha(["status", "--config", config, "--json"]);
    expect(result.stderr).toBe("");
    expect(result.exitCode).toBe(0);
    const report = JSON.parse(result.stdout);
    expect(report.planes.map((p: { plane: string }) => p.plane)).toEqual(["management", "storage", "service"]);
    const [mgmt, stor, serv] = report.planes;
    expect(mgmt).toEqual({
      plane: "management",
      endpoints: [management.endpoint],
      reachable: true,
      latency_ms: expect.any(Number),
      etcd_version: expect.stringMatching(/^3\./),
      cluster_id: expect.stringMatching(/^[0-9a-f]+$/),
      members: 1,
      leader_id: expect.stringMatching(/^[0-9a-f]+$/),
      same_cluster_as: null,
      error: null,
    });
    expect(stor.same_cluster_as).toBeNull();
    expect(stor.cluster_id).not.toBe(mgmt.cluster_id);
    // The service plane was configured on the management cluster.
    expect(serv.same_cluster_as).toBe("management");
    expect(serv.cluster_id).toBe(mgmt.cluster_id);
    expect(report.hosts).toEqual({ registered: 0 });
    // Nothing written under the prefix yet: no leader, no mode, nothing in maintenance.
    expect(report.state).toEqual({ leader: null, mode: null, maintenance: { global: null, hosts: [] }, hosts: [], recovery_requests: [], events: [], bad_values: [] });
    expect(report.state_error).toBeNull();
  });

  test("counts the hosts registered under its own prefix only", async () => {
    const client = new Etcd3({ hosts: management.endpoint });
    try {
      await client.put("/status-b/hosts/compute-1").value("{}");
      await client.put("/status-b/hosts/compute-2").value("{}");
      await client.put("/status-other/hosts/compute-9").value("{}");
    } finally {
      client.close();
    }
    const config = await writeConfig(dir.path, { management: management.endpoint, prefix: "/status-b" });
    const json = await runFitha(["status", "--config", config, "--json"]);
    const report = JSON.parse(json.stdout);
    expect(report.hosts).toEqual({ registered: 2 });
    // "{}" is no HostRecord: still registered hosts, and the bad values are listed.
    expect(report.state.hosts.map((h: { name: string }) => h.name)).toEqual(["compute-1", "compute-2"]);
    expect(report.state.bad_values).toEqual([expect.stringMatching(/^\/status-b\/hosts\/compute-1: /), expect.stringMatching(/^\/status-b\/hosts\/compute-2: /)]);
    const text = await runFitha(["status", "--config", config]);
    expect(text.exitCode).toBe(0);
    expect(text.stdout).toMatch(/^  management +up +[0-9.]+ ms +3\.[0-9.]+ +1 +http:\/\/127\.0\.0\.1:\d+$/m);
    expect(text.stdout).toContain("(same cluster as management)");
    expect(text.stdout).toContain("hosts: 2 registered");
  });

  test("shows the leader, the mode, maintenance, each host's view, open recovery requests and the last events", async () => {
    const prefix = "/status-state";
    const k = keys(prefix);
    const kv = EtcdKv.connect(etcdSettings({ endpoint: management.endpoint, prefix }), "management");
    const ago = (ms: number) => new Date(Date.now() - ms).toISOString();
    try {
      await kv.put(k.election, JSON.stringify({ name: "ctl-1", leaseId: "7587868352" }));
      const mode: ModeRecord = { mode: "normal", since: ago(600_000), reason: "fewer than 50 % of hosts down", leader: "ctl-1" };
      await kv.put(k.mode, JSON.stringify(mode));
      for (const [name, id] of [["compute-1", 1], ["compute-2", 2]] as const) await kv.put(k.host(name), JSON.stringify(hostRecord(name, id)));
      const view: HostStateRecord = {
        host: "compute-1",
        planes: { management: { state: "up", since: ago(3_600_000) }, storage: { state: "down", since: ago(90_000) }, service: { state: "up", since: ago(3_600_000) } },
        decision: "ha-needed",
        reason: "storage down for 90 s: HA",
        at: ago(1_000),
        leader: "ctl-1",
      };
      await kv.put(k.hostState("compute-1"), JSON.stringify(view));
      const request: RecoveryRequest = { host: "compute-1", requestedAt: ago(1_000), reason: "storage down for 90 s", planes: { management: "up", storage: "down", service: "up" }, cause: "planes" };
      await kv.put(k.recoveryRequest("compute-1"), JSON.stringify(request));
      await kv.put(k.recoveryRequest("compute-9"), "{}");
      await kv.put(k.maintenanceHost("compute-2"), JSON.stringify({ on: true, reason: "disk swap", by: "ops@admin-1", at: ago(120_000) }));
      for (let minute = 6; minute >= 1; minute--) {
        await appendEvent(kv, k, { time: ago(minute * 60_000), kind: "plane-up", host: "compute-1", reason: `event ${minute} min ago`, by: "controller@ctl-1" });
      }
    } finally {
      kv.close();
    }
    const config = await writeConfig(dir.path, { management: management.endpoint, prefix });
    const json = await runFitha(["status", "--config", config, "--json"]);
    expect(json.exitCode).toBe(0);
    const { state, state_error, hosts } = JSON.parse(json.stdout);
    expect({ hosts, state_error }).toEqual({ hosts: { registered: 2 }, state_error: null });
    const age = expect.any(Number);
    const time = expect.stringMatching(/Z$/);
    expect(state).toEqual({
      leader: "ctl-1",
      mode: { mode: "normal", since: time, age_ms: age, reason: "fewer than 50 % of hosts down", leader: "ctl-1" },
      maintenance: { global: null, hosts: [{ host: "compute-2", reason: "disk swap", by: "ops@admin-1", at: time }] },
      hosts: [
        {
          name: "compute-1",
          host_id: 1,
          maintenance: false,
          recovery_requested: true,
          view: {
            planes: { management: { state: "up", since: time, age_ms: age }, storage: { state: "down", since: time, age_ms: age }, service: { state: "up", since: time, age_ms: age } },
            decision: "ha-needed",
            reason: "storage down for 90 s: HA",
            at: time,
            leader: "ctl-1",
          },
        },
        { name: "compute-2", host_id: 2, maintenance: true, recovery_requested: false, view: null },
      ],
      recovery_requests: [{ host: "compute-1", requested_at: time, age_ms: age, reason: "storage down for 90 s", planes: { management: "up", storage: "down", service: "up" } }],
      events: [5, 4, 3, 2, 1].map((minute) => ({ sequence: expect.any(String), time, host: "compute-1", kind: "plane-up", reason: `event ${minute} min ago`, by: "controller@ctl-1" })),
      bad_values: [expect.stringMatching(/^\/status-state\/recovery-requests\/compute-9: /)],
    });
    expect(state.mode.age_ms).toBeGreaterThanOrEqual(600_000);
    expect(state.hosts[0].view.planes.storage.age_ms).toBeGreaterThanOrEqual(90_000);

    const text = await runFitha(["status", "--config", config]);
    expect(text.exitCode).toBe(0);
    const lines = text.stdout.split("\n");
    const after = (heading: string, count: number) => lines.slice(lines.indexOf(heading) + 1, lines.indexOf(heading) + 1 + count);
    expect(after("hosts: 2 registered", 3)).toEqual([
      expect.stringMatching(/^  HOST +MANAGEMENT +STORAGE +SERVICE +DECISION +REASON$/),
      expect.stringMatching(/^  compute-1 +up 1h00m +down 1m\d\ds +up 1h00m +ha-needed +storage down for 90 s: HA$/),
      expect.stringMatching(/^  compute-2 +- +- +- +- +no controller view yet$/),
    ]);
    expect(text.stdout).toContain("\ncontroller: ctl-1 leads\n");
    expect(text.stdout).toMatch(/^mode: normal since \S+ \(10m\d\ds ago\): fewer than 50 % of hosts down$/m);
    expect(text.stdout).toMatch(/^maintenance: off cluster-wide\n  host compute-2 on since \S+ \(2m\d\ds ago\) by ops@admin-1: disk swap$/m);
    expect(after("recovery requests:", 2)).toEqual([expect.stringMatching(/^  HOST +REQUESTED +PLANES +REASON$/), expect.stringMatching(/^  compute-1 +\d+s ago +management up, storage down, service up +storage down for 90 s$/)]);
    expect(after("last events (at most 5, newest last):", 6)).toEqual([...[5, 4, 3, 2, 1].map((minute) => expect.stringMatching(new RegExp(`^  \\S+Z  compute-1 +plane-up +event ${minute} min ago  \\(by controller@ctl-1\\)$`))), "bad values (the daemons ignore them):"]);
  }, commandTestTimeoutMs);

  test("an unreachable plane is DOWN with the reason, within the configured deadlines, exit 1", async () => {
    const [deadPort] = await freePorts(1);
    const dead = `http://127.0.0.1:${deadPort}`;
    const config = await writeConfig(dir.path, { management: management.endpoint, service: dead, dialTimeoutMs: 300, requestTimeoutMs: 300 });
    const started = performance.now();
    const json = await runFitha(["status", "--config", config, "--json"]);
    const elapsedMs = performance.now() - started;
    expect(json.exitCode).toBe(1);
    const service = JSON.parse(json.stdout).planes[2];
    expect(service).toMatchObject({ plane: "service", reachable: false, latency_ms: null, cluster_id: null });
    expect(service.error).toContain("ECONNREFUSED");
    // dial + request deadline is 600 ms; allow a loaded machine plenty, but not the 30 s test limit.
    expect(elapsedMs).toBeLessThan(10_000);
    const text = await runFitha(["status", "--config", config]);
    expect(text.exitCode).toBe(1);
    expect(text.stdout).toMatch(new RegExp(`^  service +DOWN +- +- +- +${dead}: .+$`, "m"));
  });

  test("with the management cluster down the hosts are unknown", async () => {
    const [deadPort] = await freePorts(1);
    const config = await writeConfig(dir.path, { management: `http://127.0.0.1:${deadPort}`, storage: storage.endpoint, service: storage.endpoint, dialTimeoutMs: 300, requestTimeoutMs: 300 });
    const result = await runFitha(["status", "--config", config, "--json"]);
    expect(result.exitCode).toBe(1);
    const report = JSON.parse(result.stdout);
    expect(report.hosts).toEqual({ registered: null });
    expect(report.state).toBeNull();
    expect(report.state_error).toStartWith("etcd of the management plane is unreachable: ");
    expect(report.planes[1]).toMatchObject({ reachable: true, same_cluster_as: null });
    expect(report.planes[2]).toMatchObject({ reachable: true, same_cluster_as: "storage" });
  });

  test("--log-format json --log-level debug writes JSON log lines to stderr, stdout stays the report", async () => {
    const config = await writeConfig(dir.path, { management: management.endpoint });
    const result = await runFitha(["status", "--config", config, "--json", "--log-format", "json", "--log-level", "debug"]);
    expect(result.exitCode).toBe(0);
    JSON.parse(result.stdout);
    const lines = result.stderr.trim().split("\n").map((line) => JSON.parse(line));
    expect(lines).toContainEqual(expect.objectContaining({ level: "debug", tag: "status", config }));
  });

  test("the [log] section of the file applies when no flag overrides it", async () => {
    const config = await writeConfig(dir.path, { management: management.endpoint });
    await Bun.write(config, `[log]\nlevel = "debug"\nformat = "json"\n${await Bun.file(config).text()}`);
    const fromFile = await runFitha(["status", "--config", config]);
    expect(JSON.parse(fromFile.stderr.trim().split("\n")[0]!)).toMatchObject({ level: "debug", tag: "status" });
    const overridden = await runFitha(["status", "--config", config, "--log-level", "info"]);
    expect(overridden.stderr).toBe("");
  });
});
