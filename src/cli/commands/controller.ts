import { defineCommand } from "citty";
import { hostname } from "node:os";
import { ExitCode } from "../../errors.ts";
import { Controller } from "../../controller/controller.ts";
import { webhookTransport } from "../../alarms/webhook.ts";
import { ControllerMetrics } from "../../controller/controller-metrics.ts";
import { monotonicClock } from "../../core/clock.ts";
import { logger } from "../../log.ts";
import { serveMetrics } from "../../metrics/http-server.ts";
import { MetricsRegistry, registerBuildInfo } from "../../metrics/registry.ts";
import { keys } from "../../store/keys.ts";
import { buildInfo } from "../../version.ts";
import { configArg, logArgs } from "../args.ts";
import { loadCommandConfig } from "../command-config.ts";
import { closePlanes, connectPlanes, stopSignal } from "../daemon.ts";
import { keepServiceInformed, SystemdNotifier } from "../systemd-notify.ts";

const log = logger("controller");

export const controllerCommand = defineCommand({
  meta: { description: "Run a controller: one of three leads (etcd election), detects host and plane faults, applies the strategy, recovers HA VMs, answers fencing questions" },
  args: { ...configArg, ...logArgs },
  async run({ args }) {
    const { config } = await loadCommandConfig(args);
    const name = config.controller.name === "" ? hostname() : config.controller.name;
    const { alarms: alarmConfig } = config;
    const alarms = alarmConfig.webhook_url === "" ? undefined : { transport: webhookTransport(alarmConfig.webhook_url, { timeoutMs: alarmConfig.webhook_timeout_ms, cluster: config.etcd.prefix }), queueLimit: alarmConfig.queue_limit };
    const kv = connectPlanes(config);
    const registry = new MetricsRegistry();
    registerBuildInfo(registry, buildInfo);
    const controller = new Controller(
      { name, electionTtlMs: config.controller.election_ttl_ms, probeIntervalMs: config.controller.probe_interval_ms },
      { clock: monotonicClock, now: () => new Date(), kv, keys: keys(config.etcd.prefix), metrics: new ControllerMetrics(registry), ...(alarms === undefined ? {} : { alarms }) },
    );
    const notifier = SystemdNotifier.fromProcess();
    controller.start();
    const metrics = serveMetrics(registry, config.metrics.controller_address, "metrics.controller_address");
    log.info("controller campaigning", { name, alarms: alarms?.transport.name ?? "event log only" });
    const status = () => `controller ${name}: ${controller.leading ? "leader" : "standby"}`;
    // Ready once campaigning, leader or standby: both are a working controller.
    notifier.ready(status());
    // Keep-alives stand for a turning event loop only. The election already covers a controller
    // whose loops are wedged: a leader that stops renewing its election lease loses it to a
    // standby within 2 × election_ttl_ms, and a restart would not be faster than that.
    const informing = keepServiceInformed(notifier, monotonicClock, { stalled: () => undefined, status });
    const signal = await stopSignal();
    await informing.stop();
    log.info("stopping; a standby takes over", { signal });
    notifier.stopping(`stopping on ${signal}; a standby takes over`);
    notifier.close();
    await metrics?.stop();
    await controller.stop();
    closePlanes(kv);
    return ExitCode.ok;
  },
});
