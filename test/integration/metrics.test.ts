/**
 * /metrics of the real daemons (dist/fitha), scraped over HTTP and parsed with the strict
 * text-format parser: lockd alone on a lease file, then a cluster (test/helpers/cluster.ts: two
 * controllers, two hosts) through a host failure and its recovery. Each daemon binds port 0 and
 * logs the URL it serves.
 */
import { afterEach, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { startCluster, type ClusterHost } from "../helpers/cluster.ts";
import { eventually } from "../helpers/eventually.ts";
import { runFitha } from "../helpers/fitha.ts";
import { formatLeaseFile, killStartedLockds, lockdHost, startLockd } from "../helpers/lockd.ts";
import { logLines, metricsUrl, scrape, valueOf } from "../helpers/metrics.ts";
import { tempDir } from "../helpers/tmp.ts";

const planes = ["management", "storage", "service"] as const;

afterEach(killStartedLockds);

describe("metrics", () => {
  test("lockd: its phase, held leases and renewals; a second lockd whose address is taken logs why and serves its leases anyway", async () => {
    await using dir = await tempDir("metrics-lockd");
    await formatLeaseFile(dir);
    const a = lockdHost(dir, 1, { metricsAddress: "127.0.0.1:0" });
    const aLog = join(dir.path, "lockd-1.log");
    await startLockd(a, { logFile: aLog });
    const url = await metricsUrl(aLog);
    let scraped = await scrape(url);
    expect(valueOf(scraped, "fitha_lockd_vm_leases_held")).toBe(0);
    expect(valueOf(scraped, "fitha_lockd_host_lease_phase", { phase: "ok" })).toBe(1);
    expect(valueOf(scraped, "fitha_lockd_host_lease_phase", { phase: "failed" })).toBe(0);
    expect(scraped.get("fitha_build_info")!.samples).toEqual([expect.objectContaining({ labels: { version: expect.any(String), commit: expect.any(String) }, value: 1 })]);

    expect((await runFitha(["lease", "acquire", "vm-1", "--slot", "3", "--socket", a.socket])).exitCode).toBe(0);
    scraped = await scrape(url);
    expect(valueOf(scraped, "fitha_lockd_vm_leases_held")).toBe(1);
    // Renewals every 2T = 1 s: each one counted, and timed.
    await eventually("a renewal counted", async () => valueOf(await scrape(url), "fitha_lockd_renewals_total", { result: "ok" }) >= 2, 10_000, 100);
    scraped = await scrape(url);
    expect(valueOf(scraped, "fitha_lockd_renewal_duration_seconds_count")).toBe(valueOf(scraped, "fitha_lockd_renewals_total", { result: "ok" }));
    expect(valueOf(scraped, "fitha_lockd_last_renewal_age_seconds")).toBeGreaterThanOrEqual(0);
    const elsewhere = await fetch(url.replace(/\/metrics$/, "/status"));
    expect(elsewhere.status).toBe(404);
    await elsewhere.text();

    // Metrics matter less than the leases: a taken address is an error naming it and the flag, and lockd runs on.
    const taken = url.replace(/^http:\/\/(.*)\/metrics$/, "$1");
    const b = lockdHost(dir, 2, { metricsAddress: taken });
    const bLog = join(dir.path, "lockd-2.log");
    await startLockd(b, { logFile: bLog });
    const bindError = `cannot serve metrics on ${taken}; running on without metrics (change --metrics-address, or "" to turn them off)`;
    await eventually("the bind error logged", async () => (await logLines(bLog)).some((line) => line["level"] === "error" && line["msg"] === bindError), 10_000, 50);
    expect((await runFitha(["lease", "acquire", "vm-2", "--slot", "4", "--socket", b.socket])).exitCode).toBe(0);
    expect(valueOf(await scrape(url), "fitha_lockd_vm_leases_held")).toBe(1);
  }, 60_000);

  test("controllers, agents and lockds of a cluster: leadership, each host's planes and decision, heartbeats; a host dies and its recovery is measured", async () => {
    const cluster = await startCluster({ label: "metrics", hosts: 2, controllers: 2, metrics: true });
    try {
      const [host1, host2] = cluster.hosts as [ClusterHost, ClusterHost];
      const url = {
        controller: await Promise.all([1, 2].map((i) => metricsUrl(join(cluster.dir.path, `ctl-${i}`, "controller.log")))),
        agent: await Promise.all(cluster.hosts.map((h) => metricsUrl(join(cluster.dir.path, h.name, "agent.log")))),
        lockd: await Promise.all(cluster.hosts.map((h) => metricsUrl(join(cluster.dir.path, h.name, "lockd.log")))),
      };
      let leader: string | undefined;
      await eventually("a leader", async () => (leader = await cluster.leader()) !== undefined, 20_000, 100);
      const leaderUrl = url.controller[leader === "ctl-1" ? 0 : 1]!;
      const standbyUrl = url.controller[leader === "ctl-1" ? 1 : 0]!;
      const hostsHealthy = async () => {
        const scraped = await scrape(leaderUrl);
        return cluster.hosts.every((h) => planes.every((plane) => scraped.get("fitha_controller_host_plane_up")!.samples.some((s) => s.labels["host"] === h.name && s.labels["plane"] === plane && s.value === 1)));
      };
      await eventually("the leader sees every plane of both hosts up", hostsHealthy, 20_000, 100);
      let scraped = await scrape(leaderUrl);
      expect(valueOf(scraped, "fitha_controller_is_leader")).toBe(1);
      expect(valueOf(scraped, "fitha_controller_leader_changes_total", { change: "elected" })).toBe(1);
      expect(valueOf(scraped, "fitha_controller_self_defense_active")).toBe(0);
      for (const plane of planes) expect(valueOf(scraped, "fitha_controller_platform_fault", { plane })).toBe(0);
      expect(valueOf(scraped, "fitha_controller_recovery_concurrency_limit", { scope: "cluster" })).toBe(10);
      const decided = async (host: string) => (await scrape(leaderUrl)).get("fitha_controller_host_decision")!.samples.filter((s) => s.labels["host"] === host && s.value === 1).map((s) => s.labels["decision"]);
      await eventually("both hosts healthy in the leader's decisions", async () => (await decided("host-1"))[0] === "healthy" && (await decided("host-2"))[0] === "healthy", 20_000, 100);
      scraped = await scrape(leaderUrl);
      for (const h of cluster.hosts) expect(scraped.get("fitha_controller_host_decision")!.samples.filter((s) => s.labels["host"] === h.name).map((s) => s.labels["decision"])).toEqual(["healthy"]);
      const standby = await scrape(standbyUrl);
      expect(valueOf(standby, "fitha_controller_is_leader")).toBe(0);
      expect(standby.get("fitha_controller_host_plane_up")!.samples).toEqual([]);

      for (const agentUrl of url.agent) {
        const agent = await scrape(agentUrl);
        for (const plane of planes) {
          expect(valueOf(agent, "fitha_agent_plane_reachable", { plane })).toBe(1);
          expect(valueOf(agent, "fitha_agent_heartbeat_age_seconds", { plane })).toBeGreaterThanOrEqual(0);
          expect(valueOf(agent, "fitha_agent_heartbeat_renewals_total", { plane, result: "ok" })).toBeGreaterThanOrEqual(1);
        }
      }
      await eventually("host-1's agent subscribed to its lockd's questions", async () => valueOf(await scrape(url.lockd[0]!), "fitha_lockd_subscribers") === 1, 20_000, 100);

      // host-1 runs an HA VM, and dies.
      const vm = await cluster.runVm(host1, "web-1", { ha: true });
      expect(valueOf(await scrape(url.lockd[0]!), "fitha_lockd_vm_leases_held")).toBe(1);
      host1.agent.kill("SIGKILL");
      host1.lockd.kill("SIGKILL");
      await host1.hypervisor.close();
      await host1.libvirtd.stop();
      await eventually("web-1 running on host-2", async () => (await cluster.runningOn(host2, [vm])).length === 1, 60_000, 250);
      await eventually("the recovery measured", async () => valueOf(await scrape(leaderUrl), "fitha_controller_recovery_duration_seconds_count", { result: "done" }) === 1, 10_000, 100);
      scraped = await scrape(leaderUrl);
      expect(valueOf(scraped, "fitha_controller_recovery_tasks", { state: "done" })).toBe(1);
      for (const state of ["queued", "starting", "retrying", "failed"]) expect(valueOf(scraped, "fitha_controller_recovery_tasks", { state })).toBe(0);
      expect(valueOf(scraped, "fitha_controller_recovery_duration_seconds_sum", { result: "done" })).toBeGreaterThan(0);
      for (const plane of planes) expect(valueOf(scraped, "fitha_controller_host_plane_up", { host: "host-1", plane })).toBe(0);
      expect(await decided("host-1")).toEqual(["ha-needed"]);
      const agent2 = await scrape(url.agent[1]!);
      expect(valueOf(agent2, "fitha_agent_orders_total", { action: "start", outcome: "done" })).toBe(1);
      expect(valueOf(await scrape(url.lockd[1]!), "fitha_lockd_vm_leases_held")).toBe(1);
    } finally {
      await cluster.stop();
    }
  }, 120_000);
});
