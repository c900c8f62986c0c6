import { defineCommand } from "citty";
import { readFile } from "node:fs/promises";
import { hostname } from "node:os";
import { dirname } from "node:path";
import { ExitCode, FithaError, UsageError } from "../../errors.ts";
import { HostIdInUseError } from "../../lease/delta-lease.ts";
import { DirectDevice } from "../../lease/direct-device.ts";
import { NotFormattedError } from "../../lease/lockspace.ts";
import { CorruptionError } from "../../lease/records.ts";
import { IoError } from "../../lease/sector-device.ts";
import { ioTimeoutRangeMs } from "../../lease/timeline.ts";
import { defaultSocketPath } from "../../lockd/client.ts";
import { bootId, boottimeClock, installId, lockdAlive } from "../../lockd/host-identity.ts";
import { LockDaemon } from "../../lockd/lock-daemon.ts";
import { readHostIdFile } from "../../agent/host-id-file.ts";
import { checkPrivateDir } from "../../lockd/private-dir.ts";
import { defaultLockdMetricsAddress, LockdMetrics } from "../../lockd/lockd-metrics.ts";
import { defaultStateDir, fileStateStore } from "../../lockd/state-file.ts";
import { serveSocket } from "../../lockd/socket-server.ts";
import { logger } from "../../log.ts";
import { serveMetrics } from "../../metrics/http-server.ts";
import { listenAddressAccepts, listenAddressPattern } from "../../metrics/listen-address.ts";
import { MetricsRegistry, registerBuildInfo } from "../../metrics/registry.ts";
import { buildInfo } from "../../version.ts";
import { HypervisorError } from "../../virt/hypervisor.ts";
import { defaultQemuRunDir, qemuProcessKiller } from "../../virt/qemu-processes.ts";
import { WorkerHypervisor } from "../../virt/worker-hypervisor.ts";
import { logArgs } from "../args.ts";
import { stopSignal } from "../daemon.ts";
import { keepServiceInformed, SystemdNotifier } from "../systemd-notify.ts";

const log = logger("lockd");

export const lockdCommand = defineCommand({
  meta: { description: "Run the lease daemon: host lease on shared storage, VM leases on request (unix socket)" },
  args: {
    "lease-file": { type: "string", required: true, valueHint: "FILE", description: "Lease file or device (formatted with fitha lease format)" },
    "host-id": { type: "string", valueHint: "N", description: "This host's id in the lockspace (or --host-id-file)" },
    "host-id-file": { type: "string", valueHint: "FILE", description: "Read this host's id from FILE, written by fitha agent --host-id-file once it registered the host; exit 1 while there is none" },
    host: { type: "string", valueHint: "NAME", description: "This host's name (default: the system host name)" },
    "id-allocation": {
      type: "enum",
      options: ["configured", "unique"],
      description: "configured: a hand-given id, checked for collisions (2T wait); unique: allocated to this host alone (fast join)",
    },
    socket: { type: "string", valueHint: "PATH", description: `Unix socket to serve (default ${defaultSocketPath})` },
    "socket-group": { type: "string", valueHint: "GROUP", description: "A group (name or id) whose members may use the socket besides root" },
    "state-dir": { type: "string", valueHint: "DIR", description: `Where lockd keeps its state across restarts (default ${defaultStateDir})` },
    hypervisor: { type: "string", valueHint: "URI", description: "libvirt URI of this host's VMs, which fencing stops (default qemu:///system)" },
    "qemu-run-dir": { type: "string", valueHint: "DIR", description: `libvirt's qemu status files, to kill a VM's process when libvirt cannot stop it (default ${defaultQemuRunDir})` },
    "io-timeout": { type: "string", valueHint: "SECONDS", description: "I/O timeout T; renewal every 2T, fail at 8T (default 10)" },
    "metrics-address": { type: "string", valueHint: "HOST:PORT", description: `Serve Prometheus metrics at http://HOST:PORT/metrics; "" for none (default ${defaultLockdMetricsAddress})` },
    ...logArgs,
  },
  async run({ args }) {
    // An empty value is what the systemd unit passes when lockd.env does not set LEASE_FILE.
    if (args["lease-file"] === "") throw new UsageError("lockd: --lease-file must name the lease file or device (for fitha-lockd.service: LEASE_FILE in /etc/fitha/lockd.env)");
    const hostId = await hostIdArgument(args["host-id"], args["host-id-file"]);
    const ioTimeoutMs = Math.round(Number(args["io-timeout"] ?? "10") * 1000);
    if (!(ioTimeoutMs >= ioTimeoutRangeMs.min && ioTimeoutMs <= ioTimeoutRangeMs.max)) {
      throw new UsageError(`lockd: --io-timeout must be ${ioTimeoutRangeMs.min / 1000} to ${ioTimeoutRangeMs.max / 1000} seconds, not "${args["io-timeout"]}"`);
    }
    const metricsAddress = args["metrics-address"] ?? defaultLockdMetricsAddress;
    if (!listenAddressPattern.test(metricsAddress)) throw new UsageError(`lockd: --metrics-address must be ${listenAddressAccepts}, not "${metricsAddress}"`);
    const stateDir = args["state-dir"] ?? defaultStateDir;
    const socketPath = args.socket ?? defaultSocketPath;
    const hypervisorUri = args.hypervisor ?? "qemu:///system";
    const socketGroupId = args["socket-group"] === undefined ? undefined : await groupId(args["socket-group"]);
    await checkPrivateDir(dirname(socketPath), "socket directory");
    await checkPrivateDir(stateDir, "state directory");
    const notifier = SystemdNotifier.fromProcess();
    // Without a hypervisor lockd could not fence: it must not hold any lease then.
    let hypervisor: WorkerHypervisor;
    try {
      // In a Worker, each call bounded: a hung libvirtd must not stop the renewals, and fencing
      // (from validUntil − T) gets a verdict on each call within T — but never less than 2 s, so
      // that a merely busy libvirtd is not taken for a hung one (which escalates to killing).
      // Connecting at start is not urgent: up to 30 s.
      hypervisor = await WorkerHypervisor.open(hypervisorUri, { callTimeoutMs: Math.max(2_000, ioTimeoutMs), openTimeoutMs: 30_000 });
    } catch (error) {
      if (error instanceof HypervisorError) throw new FithaError(`lockd: ${error.message} (fencing needs it; see --hypervisor)`);
      throw error;
    }
    const registry = new MetricsRegistry();
    registerBuildInfo(registry, buildInfo);
    let daemon: LockDaemon;
    notifier.status(`joining or resuming the host lease (host id ${hostId}) in ${args["lease-file"]}`);
    try {
      daemon = await LockDaemon.start(
        { leaseFile: args["lease-file"], hostId, hostName: args.host ?? hostname(), ioTimeoutMs, idAllocation: args["id-allocation"] === "unique" ? "unique" : "configured" },
        {
          clock: boottimeClock,
          openDevice: (path) => DirectDevice.open(path),
          bootId: await bootId(),
          pid: process.pid,
          lockdAlive,
          installId: await installId(stateDir),
          store: fileStateStore(stateDir),
          hypervisor,
          killer: qemuProcessKiller(args["qemu-run-dir"] ?? defaultQemuRunDir),
          metrics: new LockdMetrics(registry),
        },
      );
    } catch (error) {
      await hypervisor.close();
      if (error instanceof HostIdInUseError || error instanceof NotFormattedError || error instanceof CorruptionError || error instanceof IoError || error instanceof RangeError) {
        throw new FithaError(`lockd: ${error.message}`);
      }
      throw error;
    }
    const server = await serveSocket(
      socketPath,
      { handle: (request, push) => daemon.handle(request, push), disconnected: (push) => daemon.unsubscribe(push) },
      socketGroupId === undefined ? {} : { groupId: socketGroupId },
    );
    const metrics = serveMetrics(registry, metricsAddress, "--metrics-address");
    log.info("lockd ready", { socket: socketPath, host_id: daemon.lease.hostId, generation: daemon.lease.generation, started_by: daemon.startedBy });
    // Ready only now: the host lease is held and the socket answers, so the qemu hook of a
    // libvirtd ordered after this unit finds lockd serving.
    const status = () => `host lease ${daemon.lease.phase()} (host id ${daemon.lease.hostId}, generation ${daemon.lease.generation}, ${daemon.startedBy}), ${daemon.heldLeaseCount} VM lease(s), socket ${socketPath}`;
    notifier.ready(status());
    const informing = keepServiceInformed(notifier, boottimeClock, { stalled: () => daemon.renewalStall(), status });
    const ended = await Promise.race([stopSignal().then((signal) => ({ signal })), daemon.lost.then((reason) => ({ reason }))]);
    await informing.stop();
    if ("reason" in ended) {
      // Nothing more this incarnation can do; exiting non-zero lets systemd restart it, and a
      // restart joins the lockspace again (the VMs were fenced already).
      log.error("exiting: this lockd's host lease is lost for good; a restart joins the lockspace again", { reason: ended.reason });
      notifier.stopping(`exiting: ${ended.reason}; a restart joins the lockspace again`);
      notifier.close();
      await metrics?.stop();
      await server.close();
      await daemon.stop();
      await hypervisor.close();
      return ExitCode.failed;
    }
    // VM leases stay held and the state stays on disk: a lockd restarted within the renewal
    // window resumes them, and the VMs keep running.
    log.info("stopping; held VM leases stay held for the next lockd to resume", { signal: ended.signal });
    notifier.stopping(`stopping on ${ended.signal}; ${daemon.heldLeaseCount} VM lease(s) stay held for the next lockd to resume`);
    notifier.close();
    await metrics?.stop();
    await server.close();
    await daemon.stop();
    await hypervisor.close();
    return ExitCode.ok;
  },
});

/** A group id from a name (/etc/group) or a number. */
async function groupId(group: string): Promise<number> {
  if (/^\d+$/.test(group)) return Number(group);
  const entry = (await readFile("/etc/group", "utf8")).split("\n").find((line) => line.split(":")[0] === group);
  const id = entry?.split(":")[2];
  if (id === undefined || !/^\d+$/.test(id)) throw new UsageError(`lockd: --socket-group: no group "${group}" in /etc/group`);
  return Number(id);
}

/** --host-id N, or the id the agent handed over in --host-id-file (src/agent/host-id-file.ts): exactly one. */
async function hostIdArgument(given: string | undefined, file: string | undefined): Promise<number> {
  if ((given === undefined) === (file === undefined)) throw new UsageError("lockd: give --host-id N or --host-id-file FILE (one of them)");
  if (file !== undefined) {
    try {
      return await readHostIdFile(file);
    } catch (error) {
      if (error instanceof FithaError) throw new FithaError(`lockd: ${error.message}`, error.exitCode);
      throw error;
    }
  }
  const hostId = Number(given);
  if (!Number.isSafeInteger(hostId) || hostId < 1) throw new UsageError(`lockd: --host-id must be a positive whole number, not "${given}"`);
  return hostId;
}
