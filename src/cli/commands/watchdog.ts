import { defineCommand } from "citty";
import { ExitCode, UsageError } from "../../errors.ts";
import { bootId, boottimeClock } from "../../lockd/host-identity.ts";
import { defaultStateDir, fileStateStore } from "../../lockd/state-file.ts";
import { Watchdog, type WatchdogCheck } from "../../lockd/watchdog.ts";
import { logger } from "../../log.ts";
import { LazyHypervisor } from "../../virt/lazy-hypervisor.ts";
import { defaultQemuRunDir, qemuProcessKiller } from "../../virt/qemu-processes.ts";
import { WorkerHypervisor } from "../../virt/worker-hypervisor.ts";
import { logArgs } from "../args.ts";
import { keepServiceInformed, SystemdNotifier } from "../systemd-notify.ts";

const log = logger("watchdog");

export const watchdogCommand = defineCommand({
  meta: { description: "Run the VM watchdog beside lockd: stops the VMs under lockd's leases if lockd does not renew in time" },
  args: {
    "state-dir": { type: "string", valueHint: "DIR", description: `lockd's state dir, which it feeds the watchdog through (default ${defaultStateDir})` },
    hypervisor: { type: "string", valueHint: "URI", description: "libvirt URI of this host's VMs (default qemu:///system)" },
    "qemu-run-dir": { type: "string", valueHint: "DIR", description: `libvirt's qemu status files, to kill a VM's process when libvirt cannot stop it (default ${defaultQemuRunDir})` },
    "call-timeout-ms": { type: "string", valueHint: "MS", description: "Deadline of each libvirt call; past it the VM's process is killed directly (default 10000)" },
    "poll-interval-ms": { type: "string", valueHint: "MS", description: "Longest wait between checks; lockd's T/4 when shorter (default 1000)" },
    ...logArgs,
  },
  async run({ args }) {
    const maxPollMs = Number(args["poll-interval-ms"] ?? "1000");
    if (!(Number.isSafeInteger(maxPollMs) && maxPollMs >= 10 && maxPollMs <= 60_000)) {
      throw new UsageError(`watchdog: --poll-interval-ms must be a whole number from 10 to 60000, not "${args["poll-interval-ms"]}"`);
    }
    const callTimeoutMs = Number(args["call-timeout-ms"] ?? "10000");
    if (!(Number.isSafeInteger(callTimeoutMs) && callTimeoutMs >= 100 && callTimeoutMs <= 600_000)) {
      throw new UsageError(`watchdog: --call-timeout-ms must be a whole number from 100 to 600000, not "${args["call-timeout-ms"]}"`);
    }
    const stateDir = args["state-dir"] ?? defaultStateDir;
    const uri = args.hypervisor ?? "qemu:///system";
    // Connected on first use and again after a failure: the watchdog must run (and kill VM
    // processes itself) while libvirtd is down. In a Worker with a deadline per call: a hung
    // libvirtd delays the polls only that long.
    const hypervisor = new LazyHypervisor(uri, () => WorkerHypervisor.open(uri, { callTimeoutMs }));
    const watchdog = new Watchdog({ clock: boottimeClock, store: fileStateStore(stateDir), hypervisor, bootId: await bootId(), killer: qemuProcessKiller(args["qemu-run-dir"] ?? defaultQemuRunDir) });
    let stopping = false;
    let wake: (() => void) | undefined;
    const stop = () => {
      stopping = true;
      wake?.();
    };
    process.once("SIGTERM", stop);
    process.once("SIGINT", stop);
    log.info("watchdog ready", { state_dir: stateDir, hypervisor: uri });
    const notifier = SystemdNotifier.fromProcess();
    let last: WatchdogCheck | undefined;
    let checking = false;
    let lastCheckEndMs = boottimeClock.nowMs();
    notifier.ready(`watching ${stateDir}`);
    // Keep-alives while the poll loop turns: a check starts at most the poll interval after the
    // last one ended (a second of margin for a busy machine, doubled). A check under way counts
    // as moving: each of its hypervisor calls and kills has a deadline, and a restart in the
    // middle of stopping VMs would only delay the stopping.
    const stallLimitMs = 2 * maxPollMs + 1_000;
    const informing = keepServiceInformed(notifier, boottimeClock, {
      stalled: () => {
        const silentMs = boottimeClock.nowMs() - lastCheckEndMs;
        return checking || silentMs <= stallLimitMs ? undefined : `no check for ${Math.round(silentMs)} ms (limit ${stallLimitMs} ms)`;
      },
      status: () => (last === undefined ? `watching ${stateDir}` : checkStatus(last)),
    });
    let previous: WatchdogCheck["state"] | undefined;
    while (!stopping) {
      checking = true;
      const check = await watchdog.check();
      checking = false;
      lastCheckEndMs = boottimeClock.nowMs();
      last = check;
      // Log transitions, not every poll; every firing is logged by the watchdog itself.
      if (check.state !== previous) log.info(`watchdog ${check.state}`, check.state === "idle" ? { why: check.why } : check.state === "armed" ? { fires_in_ms: Math.round(check.firesInMs), vms: check.vms } : {});
      if (check.state === "fired" && check.failed.length > 0) log.error("VMs still running after the watchdog's attempts; retrying", { failed: check.failed });
      previous = check.state;
      await new Promise<void>((resolve) => {
        wake = resolve;
        setTimeout(resolve, watchdog.pollIntervalMs(maxPollMs));
      });
    }
    await informing.stop();
    log.info("watchdog stopping: VMs are no longer protected against a hung lockd");
    notifier.stopping("stopping: VMs are no longer protected against a hung lockd");
    notifier.close();
    await hypervisor.close();
    return ExitCode.ok;
  },
});

function checkStatus(check: WatchdogCheck): string {
  if (check.state === "idle") return `idle: ${check.why}`;
  if (check.state === "armed") return `armed: ${check.vms} VM(s) under lockd's leases`;
  return `fired: lockd did not renew in time; ${check.failed.length === 0 ? "its VMs are stopped" : `still running: ${check.failed.join(", ")}`}`;
}
