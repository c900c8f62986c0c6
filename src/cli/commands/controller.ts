import { defineCommand } from "citty";
import { hostname } from "node:os";
import { ExitCode } from "../../errors.ts";
import { Controller } from "../../controller/controller.ts";
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

const log = logger("controller");

export const controllerCommand = defineCommand({
  meta: { description: "Run a controller: one of three leads (etcd election), detects host and plane faults, applies the strategy, recovers HA VMs, answers fencing questions" },
  args: { ...configArg, ...logArgs },
  async run({ args }) {
    const { config } = await loadCommandConfig(args);
    const name = config.controller.name === "" ? hostname() : config.controller.name;
    const kv = connectPlanes(config);
    const registry = new MetricsRegistry();
    registerBuildInfo(registry, buildInfo);
    const controller = new Controller(
      { name, electionTtlMs: config.controller.election_ttl_ms, probeIntervalMs: config.controller.probe_interval_ms },
      { clock: monotonicClock, now: () => new Date(), kv, keys: keys(config.etcd.prefix), metrics: new ControllerMetrics(registry) },
    );
    controller.start();
    const metrics = serveMetrics(registry, config.metrics.controller_address, "metrics.controller_address");
    log.info("controller campaigning", { name });
    const signal = await stopSignal();
    log.info("stopping; a standby takes over", { signal });
    await metrics?.stop();
    await controller.stop();
    closePlanes(kv);
    return ExitCode.ok;
  },
});
