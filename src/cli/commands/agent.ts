import { defineCommand } from "citty";
import { hostname } from "node:os";
import { isAbsolute } from "node:path";
import { errorMessage, ExitCode, FithaError, UsageError } from "../../errors.ts";
import { Agent } from "../../agent/agent.ts";
import { defaultHostIdFile, writeHostIdFile } from "../../agent/host-id-file.ts";
import { AgentMetrics } from "../../agent/agent-metrics.ts";
import { monotonicClock } from "../../core/clock.ts";
import { logger } from "../../log.ts";
import { serveMetrics } from "../../metrics/http-server.ts";
import { MetricsRegistry, registerBuildInfo } from "../../metrics/registry.ts";
import { keys } from "../../store/keys.ts";
import { KvError } from "../../store/kv.ts";
import { buildInfo } from "../../version.ts";
import { HypervisorError } from "../../virt/hypervisor.ts";
import { WorkerHypervisor } from "../../virt/worker-hypervisor.ts";
import { LockdQuestionsClient } from "../../agent/lockd-questions.ts";
import { LockdVmLeases, lockdRequestTimeoutMs } from "../../agent/vm-leases.ts";
import { configArg, logArgs } from "../args.ts";
import { loadCommandConfig } from "../command-config.ts";
import { closePlanes, connectPlanes, stopSignal } from "../daemon.ts";
import { keepServiceInformed, SystemdNotifier } from "../systemd-notify.ts";

const log = logger("agent");

export const agentCommand = defineCommand({
  meta: { description: "Run the host agent: registers this host, heartbeats on the three network planes, reports and restarts its VMs, carries out start/stop orders, bridges fencing questions, fences its own host" },
  args: {
    ...configArg,
    "host-id-file": { type: "string", valueHint: "FILE", description: `Write this host's lockspace id here once registered, for fitha lockd --host-id-file (the systemd units pass ${defaultHostIdFile})` },
    ...logArgs,
  },
  async run({ args }) {
    const { config } = await loadCommandConfig(args);
    const hostIdFile = args["host-id-file"];
    if (hostIdFile !== undefined && !isAbsolute(hostIdFile)) throw new UsageError(`agent: --host-id-file must be an absolute path, not "${hostIdFile}"`);
    const host = config.host.name === "" ? hostname() : config.host.name;
    const notifier = SystemdNotifier.fromProcess();
    const kv = connectPlanes(config);
    const registry = new MetricsRegistry();
    registerBuildInfo(registry, buildInfo);
    let hypervisor: WorkerHypervisor | undefined;
    let agent: Agent;
    try {
      hypervisor = await WorkerHypervisor.open(config.host.hypervisor, { callTimeoutMs: 30_000 });
      agent = await Agent.start(
        { host, addresses: config.host.addresses, agentVersion: buildInfo.version },
        {
          clock: monotonicClock,
          now: () => new Date(),
          kv,
          keys: keys(config.etcd.prefix),
          hypervisor,
          leases: LockdVmLeases.overSocket(config.host.lockd_socket, lockdRequestTimeoutMs),
          questions: LockdQuestionsClient.overSocket(config.host.lockd_socket, monotonicClock),
          metrics: new AgentMetrics(registry),
        },
      );
    } catch (error) {
      await hypervisor?.close();
      closePlanes(kv);
      if (error instanceof KvError || error instanceof HypervisorError) throw new FithaError(`agent: cannot start: ${error.message}`);
      throw error;
    }
    const metrics = serveMetrics(registry, config.metrics.agent_address, "metrics.agent_address");
    if (hostIdFile !== undefined) {
      // Not fatal: the agent's heartbeats matter without lockd too; lockd says what it misses.
      await writeHostIdFile(hostIdFile, agent.hostId).then(
        (outcome) => log.info(outcome === "written" ? "host id written for lockd" : "host id for lockd already in place", { file: hostIdFile, host_id: agent.hostId }),
        (error: unknown) => log.error("could not write the host id for lockd: lockd cannot start with --host-id-file until it is there", { file: hostIdFile, error: errorMessage(error) }),
      );
    }
    log.info("agent ready", { host, host_id: agent.hostId });
    // Ready once registered with its heartbeat loops running (not once every plane answered: a
    // plane down at boot is what the agent is there to report, not a reason to fail its start).
    const status = () => {
      const reached = Object.entries(agent.reachability()).flatMap(([plane, ok]) => (ok ? [plane] : []));
      return `host ${host} (host id ${agent.hostId}); planes reached: ${reached.length === 0 ? "none" : reached.join(", ")}`;
    };
    notifier.ready(status());
    const informing = keepServiceInformed(notifier, monotonicClock, { stalled: () => agent.heartbeatStall(config.etcd.request_timeout_ms), status });
    const signal = await stopSignal();
    await informing.stop();
    // Heartbeats are left to expire: an agent restarted within their TTL keeps its planes up.
    log.info("stopping; heartbeats expire unless an agent renews them", { signal });
    notifier.stopping(`stopping on ${signal}; heartbeats expire unless an agent renews them`);
    notifier.close();
    await metrics?.stop();
    await agent.stop();
    await hypervisor.close();
    closePlanes(kv);
    return ExitCode.ok;
  },
});
