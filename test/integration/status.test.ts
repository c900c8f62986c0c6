/** `fitha status` against real etcd servers. */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Etcd3 } from "etcd3";
import { freePorts, startEtcd, type LocalEtcd } from "../helpers/etcd.ts";
import { writeConfig } from "../helpers/config.ts";
import { runFitha } from "../helpers/fitha.ts";
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
    expect(JSON.parse(json.stdout).hosts).toEqual({ registered: 2 });
    const text = await runFitha(["status", "--config", config]);
    expect(text.exitCode).toBe(0);
    expect(text.stdout).toMatch(/^  management +up +[0-9.]+ ms +3\.[0-9.]+ +1 +http:\/\/127\.0\.0\.1:\d+$/m);
    expect(text.stdout).toContain("(same cluster as management)");
    expect(text.stdout).toContain("hosts: 2 registered");
  });

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
