/**
 * `fitha doctor`: checks this host before it joins: the config, each plane's etcd, the lease file
 * and its lockspace, libvirt, the qemu hook, lockd, the watchdog and the clocks. Every check is
 * bounded by a deadline and all run at once, so doctor answers within a few seconds even when
 * etcd or the storage hangs (the lease file is checked by `fitha lease check` in a process of its
 * own, which doctor abandons if it hangs). src/doctor/ gathers the facts (facts.ts) and judges
 * them (verdicts.ts).
 */
import { defineCommand } from "citty";
import { hostname } from "node:os";
import { planes } from "../../config/fitha-config.ts";
import { resolveConfigPath } from "../../config/load.ts";
import { doctorReport, renderReport } from "../../doctor/check.ts";
import { inspectHook, leaseChecksInChild, leaseTarget, probeLibvirt, probeLockd, probePlanes, readClock, readConfigFacts, readLockdState, readTimeSync, watchdogFacts } from "../../doctor/facts.ts";
import {
  clockVerdict,
  configVerdict,
  etcdVerdicts,
  hookVerdict,
  leaseFileVerdict,
  libvirtVerdict,
  lockdVerdict,
  lockspaceVerdict,
  timeSyncVerdict,
  watchdogVerdict,
  type LeaseFacts,
} from "../../doctor/verdicts.ts";
import { ExitCode, UsageError } from "../../errors.ts";
import { defaultSocketPath } from "../../lockd/client.ts";
import { defaultHostIdFile, readHostIdFile } from "../../agent/host-id-file.ts";
import { defaultStateDir } from "../../lockd/state-file.ts";
import { defaultHooksDir } from "../../virt/qemu-hook-install.ts";
import { configArg, jsonArg, logArgs } from "../args.ts";
import { printJson, printLines } from "../output.ts";

export const doctorCommand = defineCommand({
  meta: { description: "Check this host before it joins: config, each plane's etcd, lease file and lockspace, libvirt, qemu hook, lockd, watchdog, clocks; each problem with its fix (exit 1 if any check fails)" },
  args: {
    ...configArg,
    "lease-file": { type: "string", valueHint: "FILE", description: "lockd's lease file or device (default: the one in lockd's state, see --state-dir)" },
    "host-id": { type: "string", valueHint: "N", description: "This host's id in the lockspace (default: the one in lockd's state, else in --host-id-file)" },
    "host-id-file": { type: "string", valueHint: "FILE", description: `The id the agent handed over for lockd (default ${defaultHostIdFile})` },
    "state-dir": { type: "string", valueHint: "DIR", description: `lockd's --state-dir, which the watchdog must watch (default ${defaultStateDir})` },
    socket: { type: "string", valueHint: "PATH", description: `lockd's socket (default: [host] lockd_socket, else ${defaultSocketPath})` },
    "hook-dir": { type: "string", valueHint: "DIR", description: `libvirt's hooks directory (default ${defaultHooksDir})` },
    ...jsonArg,
    ...logArgs,
  },
  async run({ args }) {
    const hostIdFlag = args["host-id"] === undefined ? undefined : hostIdArg(args["host-id"]);
    const configFile = resolveConfigPath(args.config, process.env);
    const stateDir = args["state-dir"] ?? defaultStateDir;
    const [{ facts: configFacts, config }, lockdState, handedOverHostId] = await Promise.all([
      readConfigFacts(configFile),
      readLockdState(stateDir),
      // Missing (the agent has not registered the host yet) or damaged (lockd names that itself): no id from it.
      readHostIdFile(args["host-id-file"] ?? defaultHostIdFile).catch(() => undefined),
    ]);
    const state = lockdState === undefined || "error" in lockdState ? undefined : lockdState;
    const target = leaseTarget({ leaseFile: args["lease-file"], hostId: hostIdFlag }, state, handedOverHostId);
    const hypervisor = config?.host.hypervisor;
    const host = { hostId: target.hostId, hostName: state?.incarnation.hostName ?? (config?.host.name || hostname()) };
    const noLeaseFile: LeaseFacts = { state: "unknown", reason: `no lease file: give --lease-file (lockd's), or run lockd first (its state in ${stateDir} names it)` };
    const [planeFacts, leaseChecks, libvirtFacts, hookFacts, lockdFacts, watchdog, clock] = await Promise.all([
      config === undefined ? undefined : probePlanes(config),
      target.path === undefined ? [leaseFileVerdict(noLeaseFile), lockspaceVerdict(noLeaseFile, host)] : leaseChecksInChild(target.path, host),
      hypervisor === undefined ? undefined : probeLibvirt(hypervisor),
      inspectHook(args["hook-dir"] ?? defaultHooksDir, process.execPath),
      probeLockd(args.socket ?? config?.host.lockd_socket ?? defaultSocketPath),
      watchdogFacts(stateDir, lockdState, hypervisor ?? "qemu:///system"),
      readClock(),
    ]);
    const report = doctorReport([
      configVerdict(configFacts),
      ...etcdVerdicts(configFile, planeFacts, planes),
      ...leaseChecks,
      libvirtVerdict(libvirtFacts, configFile),
      hookVerdict(hookFacts),
      lockdVerdict(lockdFacts),
      watchdogVerdict(watchdog),
      clockVerdict(clock),
      timeSyncVerdict(readTimeSync()),
    ]);
    if (args.json) printJson(report);
    else printLines(...renderReport(report));
    return report.ok ? ExitCode.ok : ExitCode.failed;
  },
});

function hostIdArg(value: string): number {
  const id = Number(value);
  if (!/^[0-9]+$/.test(value) || !Number.isSafeInteger(id) || id < 1) throw new UsageError(`doctor: --host-id must be a positive whole number, not "${value}"`);
  return id;
}
