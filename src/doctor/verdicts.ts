/**
 * `fitha doctor`'s verdicts: from what was found on this host (facts.ts gathers it, each look
 * bounded by a deadline) to ok, warn, fail or skipped, with the numbers and, for each problem,
 * the fix. Pure: no I/O here, so every verdict can be tested on facts made up for it.
 */
import type { Plane } from "../config/fitha-config.ts";
import type { Dump } from "../lease/lease-file.ts";
import type { ClusterProbe } from "../store/cluster.ts";
import type { InstalledHook } from "../virt/qemu-hook-install.ts";
import { check, type Check } from "./check.ts";

export type ConfigFacts = { readonly file: string } & (
  | { readonly ok: true }
  /** unreadable: no such file, no permission, not TOML; invalid: values the schema refuses. */
  | { readonly ok: false; readonly unreadable: boolean; readonly problems: readonly string[] }
);

export function configVerdict(facts: ConfigFacts): Check {
  if (facts.ok) return check("config", "ok", `${facts.file}: valid`, null, { file: facts.file });
  return check(
    "config",
    "fail",
    facts.problems.join("; "),
    `correct ${facts.file} (\`fitha config check ${facts.file}\` lists every problem; scripts/fitha.example.toml documents each key), or point --config or FITHA_CONFIG at the right file`,
    { file: facts.file, problems: facts.problems.length },
  );
}

export interface PlaneFacts {
  readonly plane: Plane;
  readonly endpoints: readonly string[];
  readonly probe: ClusterProbe;
}

/** One check per plane; `planes` undefined: the config could not be read, so there is nothing to probe. */
export function etcdVerdicts(configFile: string, planes: readonly PlaneFacts[] | undefined, planeNames: readonly Plane[]): Check[] {
  if (planes === undefined) return planeNames.map((plane) => check(`etcd-${plane}`, "skipped", "needs a valid config"));
  return planes.map((facts, index) => {
    const { plane, endpoints, probe } = facts;
    const name = `etcd-${plane}`;
    const where = endpoints.join(",");
    if (!probe.reachable) {
      return check(
        name,
        "fail",
        `${where}: unreachable: ${probe.error}`,
        `start etcd there, or make it reachable from this host over the ${plane} network (\`etcdctl --endpoints ${where} endpoint health\`); or correct [etcd.${plane}] endpoints in ${configFile}`,
        { endpoints: where, reachable: false },
      );
    }
    const latencyMs = Math.round(probe.latencyMs * 100) / 100;
    const values = { endpoints: where, reachable: true, latency_ms: latencyMs, etcd_version: probe.etcdVersion, cluster_id: probe.clusterId, members: probe.members };
    const detail = `${where}: etcd ${probe.etcdVersion}, ${count(probe.members, "member")}, ${latencyMs.toFixed(1)} ms`;
    const shared = planes.slice(0, index).find((other) => other.probe.reachable && other.probe.clusterId === probe.clusterId);
    if (shared === undefined) return check(name, "ok", detail, null, values);
    return check(
      name,
      "warn",
      `${detail}; the same etcd cluster as the ${shared.plane} plane (fine in a lab; in production a fault of one network then looks like a fault of both)`,
      `give [etcd.${plane}] endpoints of the ${plane} network's own etcd cluster in ${configFile}`,
      { ...values, same_cluster_as: shared.plane },
    );
  });
}

/** The lease file or device, as opened with O_DIRECT. */
export interface DeviceFacts {
  readonly blockDevice: boolean;
  /** The smallest sector size it can be used with (512 or 4096). */
  readonly sectorSize: number;
  /** The I/O alignment O_DIRECT needs on it (logical sector size, or the file system's). */
  readonly alignmentBytes: number;
  readonly sizeBytes: number;
}

export type LockspaceFacts =
  | { readonly state: "read"; readonly dump: Dump }
  | { readonly state: "not-formatted" }
  | { readonly state: "sector-size"; readonly lockspaceSectorSize: number; readonly deviceSectorSize: number }
  | { readonly state: "corrupt" | "unreadable"; readonly error: string };

export type LeaseFacts =
  /** No lease file named (no --lease-file, no lockd state). */
  | { readonly state: "unknown"; readonly reason: string }
  | { readonly state: "unopened"; readonly path: string; readonly error: string; readonly code: string | undefined }
  | {
      readonly state: "opened";
      readonly path: string;
      readonly device: DeviceFacts;
      readonly openMs: number;
      /** The first sectors (the lockspace header): how long they took, or why they could not be read. */
      readonly firstRead: { readonly ok: true; readonly bytes: number; readonly ms: number } | { readonly ok: false; readonly error: string };
      /** Undefined when the first read failed. */
      readonly lockspace: LockspaceFacts | undefined;
    };

const formatCommand = (path: string) => `\`fitha lease format --path ${path} --hosts N\` (once, from one host: every host shares it)`;

export function leaseFileVerdict(facts: LeaseFacts): Check {
  const name = "lease-file";
  if (facts.state === "unknown") return check(name, "skipped", facts.reason, null);
  if (facts.state === "unopened") return check(name, "fail", facts.error, openFix(facts.path, facts.code), { path: facts.path, error_code: facts.code ?? null });
  const { path, device, firstRead } = facts;
  const values = {
    path,
    kind: device.blockDevice ? "block device" : "file",
    size_bytes: device.sizeBytes,
    alignment_bytes: device.alignmentBytes,
    sector_size: device.sectorSize,
    open_ms: round(facts.openMs),
    read_ms: firstRead.ok ? round(firstRead.ms) : null,
  };
  const opened = `${path}: ${values.kind} of ${device.sizeBytes} bytes, opens with O_DIRECT, needs ${device.alignmentBytes}-byte aligned I/O`;
  if (!firstRead.ok) {
    return check(name, "fail", `${opened}; reading its first sectors failed: ${firstRead.error}`, "the shared storage does not answer as it must: check its path from this host (`multipath -ll`, `dmesg`) before this host joins", values);
  }
  return check(name, "ok", firstRead.bytes === 0 ? `${opened}; empty` : `${opened}; first ${firstRead.bytes} bytes read in ${firstRead.ms.toFixed(1)} ms`, null, values);
}

function openFix(path: string, code: string | undefined): string {
  switch (code) {
    case "ENOENT":
      return `give the lease file lockd uses (--lease-file), or create it on the shared storage: ${formatCommand(path)}`;
    case "EACCES":
    case "EPERM":
      return "run fitha doctor as root (as lockd runs), or give it read-write access to the lease file";
    case "EINVAL":
      return "put the lease file where O_DIRECT works with 512 or 4096-byte sectors: a shared block device (a LUN) or a file on ext4, xfs or a cluster file system; not tmpfs";
    case "ETIMEDOUT":
      return "the shared storage does not answer: check its path from this host (`multipath -ll`, `dmesg`)";
    default:
      return "make the lease file readable and writable here with O_DIRECT (a shared block device, or a file on a file system that supports O_DIRECT)";
  }
}

export interface HostIdentity {
  /** This host's lockspace host id, when known. */
  readonly hostId: number | undefined;
  /** This host's name in the lockspace (lockd's --host, the system host name by default). */
  readonly hostName: string;
}

export function lockspaceVerdict(facts: LeaseFacts, host: HostIdentity): Check {
  const name = "lockspace";
  if (facts.state === "unknown") return check(name, "skipped", "no lease file to read");
  if (facts.state !== "opened" || facts.lockspace === undefined) return check(name, "skipped", "the lease file cannot be read");
  const { path, lockspace } = facts;
  switch (lockspace.state) {
    case "not-formatted":
      return check(name, "fail", `${path}: no lockspace (not formatted)`, formatCommand(path), { path });
    case "sector-size":
      return check(
        name,
        "fail",
        `${path}: the lockspace uses ${lockspace.lockspaceSectorSize}-byte sectors, but the device needs ${lockspace.deviceSectorSize}-byte I/O`,
        `format it again for ${lockspace.deviceSectorSize}-byte sectors once every host has left it: \`fitha lease format --path ${path} --sector-size ${lockspace.deviceSectorSize} --force\``,
        { path, sector_size: lockspace.lockspaceSectorSize, device_sector_size: lockspace.deviceSectorSize },
      );
    case "corrupt":
      return check(name, "fail", lockspace.error, `investigate before any host uses it (\`fitha lease dump --path ${path}\`); format it again only once every host has left it`, { path });
    case "unreadable":
      return check(name, "fail", `${path}: cannot read the lockspace: ${lockspace.error}`, "the shared storage does not answer as it must: check its path from this host (`multipath -ll`, `dmesg`)", { path });
    case "read":
      return readLockspaceVerdict(path, lockspace.dump, facts.device, host);
  }
}

function readLockspaceVerdict(path: string, dump: Dump, device: DeviceFacts, host: HostIdentity): Check {
  const ls = dump.lockspace;
  const values = {
    path,
    name: ls.name,
    id: ls.id,
    sector_size: ls.sector_size,
    device_alignment_bytes: device.alignmentBytes,
    hosts: ls.hosts,
    slots: ls.slots,
    hosts_joined: dump.hosts.length,
    leases_used: dump.leases.length,
    corrupt: dump.corrupt.length,
    host_id: host.hostId ?? null,
  };
  const summary = `lockspace "${ls.name}" (${ls.id}): ${ls.sector_size}-byte sectors (the device needs ${device.alignmentBytes}), ${ls.hosts} host ids, ${ls.slots} VM lease slots; ${count(dump.hosts.length, "host")} joined, ${count(dump.leases.length, "slot")} used`;
  if (dump.corrupt.length > 0) {
    return check("lockspace", "fail", `${summary}; ${count(dump.corrupt.length, "corrupt record")}, the first: ${dump.corrupt[0]}`, `investigate before any host uses it (\`fitha lease dump --path ${path}\` lists them)`, values);
  }
  if (host.hostId === undefined) return check("lockspace", "ok", `${summary}; this host's id unknown (give --host-id to check it)`, null, values);
  const id = `host id ${host.hostId}`;
  if (host.hostId > ls.hosts) {
    return check(
      "lockspace",
      "fail",
      `${summary}; ${id} is outside 1..${ls.hosts}`,
      `give this host an id in 1..${ls.hosts}, or format the lockspace again with more --hosts once every host has left it: \`fitha lease format --path ${path} --hosts N --force\``,
      values,
    );
  }
  const record = dump.hosts.find((h) => h.host_id === host.hostId);
  if (record === undefined) return check("lockspace", "ok", `${summary}; ${id}: never used`, null, values);
  const owner = { ...values, host_id_owner: record.host_name, host_id_state: record.state, host_id_generation: record.generation };
  if (record.host_name === host.hostName || record.state === "released") {
    return check("lockspace", "ok", `${summary}; ${id}: last ${record.state} by "${record.host_name}" (generation ${record.generation})`, null, owner);
  }
  return check(
    "lockspace",
    "warn",
    `${summary}; ${id} is held by "${record.host_name}" (generation ${record.generation}), not by this host ("${host.hostName}")`,
    `if "${record.host_name}" still runs, this host needs another id (lockd refuses one in use); if it is gone for good, lockd here takes the id over once that host's lease has expired`,
    owner,
  );
}

export type LibvirtFacts = { readonly uri: string } & (
  | { readonly ok: true; readonly connectMs: number; readonly cpus: number; readonly memoryKiB: number }
  | { readonly ok: false; readonly error: string }
);

export function libvirtVerdict(facts: LibvirtFacts | undefined, configFile: string): Check {
  if (facts === undefined) return check("libvirt", "skipped", "needs a valid config ([host] hypervisor)");
  if (!facts.ok) {
    return check(
      "libvirt",
      "fail",
      // HypervisorError names the URI itself.
      facts.error,
      `start libvirt's daemon (\`systemctl start libvirtd\`, or virtqemud), or correct [host] hypervisor in ${configFile}`,
      { uri: facts.uri, reachable: false },
    );
  }
  const detail = `${facts.uri}: connected and answered in ${facts.connectMs.toFixed(1)} ms; ${facts.cpus} CPUs, ${Math.round(facts.memoryKiB / 1024)} MiB`;
  return check("libvirt", "ok", detail, null, { uri: facts.uri, reachable: true, connect_ms: round(facts.connectMs), cpus: facts.cpus, memory_kib: facts.memoryKiB });
}

export interface HookFacts {
  readonly hooksDir: string;
  readonly hook: InstalledHook | { readonly state: "error"; readonly error: string };
  /** The fitha executable running this doctor. */
  readonly thisBinary: string;
}

export function hookVerdict(facts: HookFacts): Check {
  const { hook, hooksDir } = facts;
  const install = `\`fitha hook install --dir ${hooksDir}\``;
  switch (hook.state) {
    case "error":
      return check("hook", "fail", hook.error, `make ${hooksDir} readable, then run ${install}`, { dir: hooksDir });
    case "missing":
      return check("hook", "fail", `${hook.path}: not installed: libvirt would start HA domains without their VM leases`, `${install}, then restart libvirtd (it looks for hooks only when it starts)`, { path: hook.path });
    case "not-a-file":
      return check("hook", "fail", `${hook.path}: not a regular file`, `remove it, then ${install}`, { path: hook.path });
    case "foreign":
      return check("hook", "fail", `${hook.path}: not what \`fitha hook install\` writes (edited, or another program's)`, `${install} --force (\`--dry-run\` shows what it writes)`, { path: hook.path });
    case "installed": {
      const values = { path: hook.path, binary: hook.binary, executable: hook.executable };
      if (hook.binaryProblem !== undefined) return check("hook", "fail", `${hook.path}: ${hook.binaryProblem}`, `${install} --force --binary /path/to/fitha`, values);
      if (!hook.executable) return check("hook", "fail", `${hook.path}: not executable: libvirt skips it`, `${install} (it sets mode 0755)`, values);
      if (hook.binary !== facts.thisBinary) {
        return check("hook", "warn", `${hook.path} runs ${hook.binary}, not this fitha (${facts.thisBinary}): two installations?`, `${install} --force to run this one, or remove the other`, values);
      }
      return check("hook", "ok", `${hook.path} runs ${hook.binary}`, null, values);
    }
  }
}

/** What `fitha lease status` shows of lockd's host lease. */
export interface LockdStatusFacts {
  readonly phase: string;
  readonly host_id: number;
  readonly host_name: string;
  readonly generation: number;
  readonly lost_reason: string | null;
  readonly last_renewal_age_ms: number;
  readonly valid_for_ms: number;
  readonly leases: readonly unknown[];
}

export type LockdFacts = { readonly socket: string } & ({ readonly ok: true; readonly status: LockdStatusFacts } | { readonly ok: false; readonly error: string });

export function lockdVerdict(facts: LockdFacts): Check {
  const start = "start it (`fitha lockd --lease-file F --host-id N`, as its service); [host] lockd_socket (or --socket) must be its --socket";
  if (!facts.ok) return check("lockd", "fail", facts.error, start, { socket: facts.socket, reachable: false });
  const s = facts.status;
  const values = { socket: facts.socket, reachable: true, phase: s.phase, host_id: s.host_id, generation: s.generation, last_renewal_age_ms: s.last_renewal_age_ms, valid_for_ms: s.valid_for_ms, leases: s.leases.length };
  const detail = `${facts.socket}: host "${s.host_name}" (host id ${s.host_id}, generation ${s.generation}), host lease ${s.phase}${s.lost_reason === null ? "" : ` (${s.lost_reason})`}, renewed ${s.last_renewal_age_ms} ms ago, valid for ${s.valid_for_ms} ms, ${count(s.leases.length, "VM lease")} held`;
  if (s.phase === "ok") return check("lockd", "ok", detail, null, values);
  if (s.phase === "failed") return check("lockd", "fail", detail, "its host lease is lost: it exits and its service restarts it, joining again; if it does not, restart it", values);
  return check("lockd", "warn", detail, "its renewals are late: check the shared storage from this host (`fitha lease status` shows the timeline)", values);
}

/** A running `fitha watchdog` and the state dir it watches. */
export interface WatchdogProcess {
  readonly pid: number;
  readonly stateDir: string;
}

export interface WatchdogFacts {
  /** lockd's state dir, which the watchdog must watch. */
  readonly stateDir: string;
  readonly processes: readonly WatchdogProcess[];
  /** What lockd's state file there says (undefined: no file yet). */
  readonly lockdState: { readonly pid: number; readonly running: boolean; readonly thisBoot: boolean; readonly leases: number; readonly validForMs: number } | { readonly error: string } | undefined;
  readonly hypervisor: string;
}

export function watchdogVerdict(facts: WatchdogFacts | { readonly error: string }): Check {
  if ("error" in facts) return check("watchdog", "skipped", facts.error);
  const start = `start it beside lockd, as its service: \`fitha watchdog --state-dir ${facts.stateDir} --hypervisor ${facts.hypervisor}\``;
  if (facts.processes.length === 0) {
    return check("watchdog", "fail", "no `fitha watchdog` process runs: VMs would keep running under a hung lockd's expired leases", start, { state_dir: facts.stateDir, pids: null });
  }
  const watching = facts.processes.filter((p) => p.stateDir === facts.stateDir);
  const pids = facts.processes.map((p) => p.pid).join(",");
  if (watching.length === 0) {
    const others = facts.processes.map((p) => `pid ${p.pid} watches ${p.stateDir}`).join(", ");
    return check("watchdog", "fail", `${others}, not lockd's state dir ${facts.stateDir}`, `run it with lockd's --state-dir: ${start} (or give doctor --state-dir)`, { state_dir: facts.stateDir, pids });
  }
  const who = `pid ${watching.map((p) => p.pid).join(",")} watches ${facts.stateDir}`;
  const values = { state_dir: facts.stateDir, pids: watching.map((p) => p.pid).join(",") };
  const state = facts.lockdState;
  if (state === undefined) return check("watchdog", "ok", `${who}; no lockd state there yet (lockd has not joined)`, null, values);
  if ("error" in state) return check("watchdog", "warn", `${who}; lockd's state there is unreadable: ${state.error}`, "look at lockd's log: it rewrites the file after every renewal", values);
  const about = `lockd pid ${state.pid} (${state.running ? "running" : "not running"}), ${count(state.leases, "VM lease")}`;
  if (!state.thisBoot) return check("watchdog", "ok", `${who}; its state is from an earlier boot (nothing to guard)`, null, values);
  const armed = `${who}; ${about}, ${state.validForMs >= 0 ? `valid for ${Math.round(state.validForMs)} ms` : `expired ${Math.round(-state.validForMs)} ms ago`}`;
  return check("watchdog", "ok", armed, null, { ...values, lockd_pid: state.pid, lockd_running: state.running, leases: state.leases, valid_for_ms: Math.round(state.validForMs) });
}

export interface ClockFacts {
  /** Two CLOCK_BOOTTIME readings, the second taken after a short sleep. */
  readonly boottimeMs: readonly [number, number];
  /** /proc/uptime, read between the two readings' second and a third. */
  readonly uptimeMs: number;
  readonly boottimeAfterUptimeMs: number;
}

/** /proc/uptime has a resolution of 10 ms; a larger gap means the clocks disagree. */
const uptimeToleranceMs = 1_000;

export function clockVerdict(facts: ClockFacts | { readonly error: string }): Check {
  const fix = "lockd's lease timing relies on CLOCK_BOOTTIME: run fitha on a Linux kernel where it works (report this with the kernel version)";
  if ("error" in facts) return check("boottime", "fail", facts.error, fix);
  const [first, second] = facts.boottimeMs;
  const values = { boottime_ms: Math.round(second), uptime_ms: Math.round(facts.uptimeMs) };
  if (!(second > first && facts.boottimeAfterUptimeMs >= second)) {
    return check("boottime", "fail", `CLOCK_BOOTTIME did not move forward: ${first} ms, then ${second} ms, then ${facts.boottimeAfterUptimeMs} ms`, fix, values);
  }
  // /proc/uptime is CLOCK_BOOTTIME too, read between `second` and `boottimeAfterUptimeMs`.
  const gapMs = facts.uptimeMs < second ? second - facts.uptimeMs : Math.max(0, facts.uptimeMs - facts.boottimeAfterUptimeMs);
  if (gapMs > uptimeToleranceMs + 10) {
    return check("boottime", "fail", `CLOCK_BOOTTIME (${Math.round(second)} ms) and /proc/uptime (${Math.round(facts.uptimeMs)} ms) disagree by ${Math.round(gapMs)} ms`, fix, values);
  }
  return check("boottime", "ok", `CLOCK_BOOTTIME moves forward and agrees with /proc/uptime (up ${Math.round(second / 1000)} s)`, null, values);
}

export function timeSyncVerdict(facts: { readonly synchronized: boolean; readonly maxErrorMs: number } | { readonly error: string }): Check {
  if ("error" in facts) return check("time-sync", "skipped", `cannot read the kernel's NTP state: ${facts.error}`);
  const values = { synchronized: facts.synchronized, max_error_ms: facts.maxErrorMs };
  if (facts.synchronized) return check("time-sync", "ok", `the wall clock is synchronized (NTP; maximum error ${facts.maxErrorMs} ms)`, null, values);
  return check(
    "time-sync",
    "warn",
    "the wall clock is not synchronized (no NTP): leases do not depend on it (CLOCK_BOOTTIME), but event times and ages compare hosts' clocks",
    "run an NTP client: `systemctl enable --now systemd-timesyncd` (or chrony)",
    values,
  );
}

/** "1 host", "2 hosts". */
function count(n: number, noun: string): string {
  return `${n} ${noun}${n === 1 ? "" : "s"}`;
}

function round(ms: number): number {
  return Math.round(ms * 100) / 100;
}
