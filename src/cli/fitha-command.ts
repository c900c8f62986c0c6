/**
 * The `fitha` command tree. Sub-commands are imported lazily, so that `fitha --help` or
 * `fitha version` loads neither etcd nor any native library.
 */
import { defineCommand } from "citty";
import { buildInfo } from "../version.ts";

export const fithaCommand = defineCommand({
  meta: {
    name: "fitha",
    version: buildInfo.version,
    description: "VM high availability for KVM/libvirt: restarts the HA VMs of failed hosts elsewhere, never two copies at once",
  },
  subCommands: {
    status: () => import("./commands/status.ts").then((m) => m.statusCommand),
    events: () => import("./commands/events.ts").then((m) => m.eventsCommand),
    alarms: () => import("./commands/alarms.ts").then((m) => m.alarmsCommand),
    maintenance: () => import("./commands/maintenance.ts").then((m) => m.maintenanceCommand),
    strategy: () => import("./commands/strategy.ts").then((m) => m.strategyCommand),
    vm: () => import("./commands/vm.ts").then((m) => m.vmCommand),
    tasks: () => import("./commands/tasks.ts").then((m) => m.tasksCommand),
    lockd: () => import("./commands/lockd.ts").then((m) => m.lockdCommand),
    agent: () => import("./commands/agent.ts").then((m) => m.agentCommand),
    controller: () => import("./commands/controller.ts").then((m) => m.controllerCommand),
    lease: () => import("./commands/lease.ts").then((m) => m.leaseCommand),
    watchdog: () => import("./commands/watchdog.ts").then((m) => m.watchdogCommand),
    hook: () => import("./commands/hook.ts").then((m) => m.hookCommand),
    doctor: () => import("./commands/doctor.ts").then((m) => m.doctorCommand),
    config: () => import("./commands/config.ts").then((m) => m.configCommand),
    etcd: () => import("./commands/etcd.ts").then((m) => m.etcdCommand),
    version: () => import("./commands/version.ts").then((m) => m.versionCommand),
  },
});
