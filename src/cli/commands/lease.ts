import { defineCommand } from "citty";
import { open, stat } from "node:fs/promises";
import { hostname } from "node:os";
import { doctorReport, renderReport } from "../../doctor/check.ts";
import { inspectLease } from "../../doctor/lease-facts.ts";
import { leaseFileVerdict, lockspaceVerdict } from "../../doctor/verdicts.ts";
import { ExitCode, FithaError, UsageError } from "../../errors.ts";
import { DirectDevice } from "../../lease/direct-device.ts";
import { layout } from "../../lease/layout.ts";
import { dumpLockspace, formatLockspace, LockspaceExistsError, type Dump } from "../../lease/lease-file.ts";
import { NotFormattedError } from "../../lease/lockspace.ts";
import { CorruptionError } from "../../lease/records.ts";
import { IoError } from "../../lease/sector-device.ts";
import { defaultIoTimeoutMs, defaultKillBudgetMs } from "../../lease/timeline.ts";
import { acquireVmLease, askLockd, defaultSocketPath, releaseVmLease } from "../../lockd/client.ts";
import { jsonArg, logArgs } from "../args.ts";
import { formatTable, printJson, printLines } from "../output.ts";

const pathArg = {
  path: { type: "string", required: true, valueHint: "FILE", description: "Lease file or block device on shared storage" },
} as const;

/** Deadline of each I/O of these offline tools: generous, they run by hand. */
const toolIoTimeoutMs = 30_000;

const formatCommand = defineCommand({
  meta: { description: "Create a lockspace: a header, delta leases for --hosts host ids and --slots VM lease slots" },
  args: {
    ...pathArg,
    "sector-size": { type: "enum", options: ["512", "4096"], description: "Sector size (default: what the device needs, 512 on most)" },
    hosts: { type: "string", valueHint: "N", description: "Host ids 1..N (default 64; every ballot reads N sectors)" },
    slots: { type: "string", valueHint: "N", description: "VM lease slots (default 1024)" },
    name: { type: "string", valueHint: "NAME", description: "Lockspace name (default: fitha)" },
    "max-io-timeout-ms": { type: "string", valueHint: "MS", description: `Largest io timeout a host may join with (default ${defaultIoTimeoutMs})` },
    "kill-budget-ms": { type: "string", valueHint: "MS", description: `Time allowed to kill a failed host's VMs, part of host-dead (default ${defaultKillBudgetMs})` },
    force: { type: "boolean", description: "Overwrite an existing lockspace (every host must have left it)" },
    ...logArgs,
  },
  async run({ args }) {
    const hosts = integerArg("--hosts", args.hosts, 64);
    const slots = integerArg("--slots", args.slots, 1024);
    const requestedSectorSize = args["sector-size"] === undefined ? undefined : (Number(args["sector-size"]) as 512 | 4096);
    const geometryCheck = (sectorSize: 512 | 4096) => {
      try {
        return layout({ sectorSize, hosts, slots });
      } catch (error) {
        throw new UsageError(`lease format: ${(error as Error).message}`);
      }
    };
    // A new file is sized for the sector size the device turns out to need (512 on most).
    let sectorSize = requestedSectorSize ?? 512;
    await ensureFileSize(args.path, geometryCheck(sectorSize).totalBytes);
    let device = await openDevice(args.path, requestedSectorSize);
    if (requestedSectorSize === undefined && device.sectorSize !== sectorSize) {
      sectorSize = device.sectorSize;
      await device.close();
      await ensureFileSize(args.path, geometryCheck(sectorSize).totalBytes);
      device = await openDevice(args.path, sectorSize);
    }
    try {
      const header = await formatLockspace(device, {
        sectorSize,
        hosts,
        slots,
        name: args.name ?? "fitha",
        maxIoTimeoutMs: integerArg("--max-io-timeout-ms", args["max-io-timeout-ms"], defaultIoTimeoutMs),
        killBudgetMs: integerArg("--kill-budget-ms", args["kill-budget-ms"], defaultKillBudgetMs),
        force: args.force === true,
        ioTimeoutMs: toolIoTimeoutMs,
      }).catch(rethrowExpected);
      printLines(`${args.path}: lockspace "${header.name}" (${header.lockspaceId}): ${sectorSize}-byte sectors, ${hosts} host ids, ${slots} VM lease slots`);
    } finally {
      await device.close();
    }
  },
});

const dumpCommand = defineCommand({
  meta: { description: "Show a lockspace: its hosts with generation and timestamp, and its VM leases with owner and version" },
  args: { ...pathArg, ...jsonArg, ...logArgs },
  async run({ args }) {
    const device = await openDevice(args.path, undefined);
    let dump: Dump;
    try {
      dump = await dumpLockspace(device, toolIoTimeoutMs).catch(rethrowExpected);
    } finally {
      await device.close();
    }
    if (args.json) printJson(dump);
    else printLines(...renderDump(dump));
    // Corruption is the one thing an operator must not miss in a dump.
    return dump.corrupt.length > 0 ? ExitCode.failed : ExitCode.ok;
  },
});

const checkCommand = defineCommand({
  meta: { description: "Check a lease file as lockd would use it: O_DIRECT, alignment, a first read, the lockspace (formatted, sector size, corrupt records, a host id); each problem with its fix (exit 1 if any)" },
  args: {
    ...pathArg,
    "host-id": { type: "string", valueHint: "N", description: "A host id to check: within the lockspace, and whose delta lease it is" },
    host: { type: "string", valueHint: "NAME", description: "The name the host id should belong to (default: the system host name)" },
    ...jsonArg,
    ...logArgs,
  },
  async run({ args }) {
    const hostId = args["host-id"] === undefined ? undefined : integerArg("--host-id", args["host-id"], 0);
    if (hostId === 0) throw new UsageError("lease check: --host-id must be 1 or more");
    const facts = await inspectLease(args.path);
    // The same verdicts and shape as `fitha doctor`, which runs this command for its lease checks.
    const report = doctorReport([leaseFileVerdict(facts), lockspaceVerdict(facts, { hostId, hostName: args.host ?? hostname() })]);
    if (args.json) printJson(report);
    else printLines(...renderReport(report));
    return report.ok ? ExitCode.ok : ExitCode.failed;
  },
});

const socketArg = {
  socket: { type: "string", valueHint: "PATH", description: `lockd's socket (default ${defaultSocketPath})` },
} as const;
const vmLeaseArgs = {
  vm: { type: "positional", required: true, description: "The VM (its UUID) whose lease this is" },
  slot: { type: "string", required: true, valueHint: "N", description: "The VM's lease slot" },
  ...socketArg,
} as const;
/** A lease request waits for lockd's ballots; bounded well above a few I/O timeouts. */
const requestTimeoutMs = 120_000;

const acquireCommand = defineCommand({
  meta: { description: "Acquire a VM's lease through lockd (exit 3 if another live host holds it)" },
  args: { ...vmLeaseArgs, ...logArgs },
  async run({ args }) {
    const lease = await acquireVmLease(args.socket ?? defaultSocketPath, args.vm, integerArg("--slot", args.slot, 0), requestTimeoutMs);
    printLines(`${args.vm}: lease acquired (slot ${args.slot}, version ${lease.lver}${lease.already ? ", already held" : ""})`);
  },
});

const releaseCommand = defineCommand({
  meta: { description: "Release a VM's lease through lockd" },
  args: { ...vmLeaseArgs, ...logArgs },
  async run({ args }) {
    const released = await releaseVmLease(args.socket ?? defaultSocketPath, args.vm, integerArg("--slot", args.slot, 0), requestTimeoutMs);
    printLines(`${args.vm}: ${released ? "lease released" : "lease was not held by this host"}`);
  },
});

const inquireCommand = defineCommand({
  meta: { description: "Show one VM lease slot as on disk now, through lockd" },
  args: { slot: vmLeaseArgs.slot, ...socketArg, ...jsonArg, ...logArgs },
  async run({ args }) {
    const reply = await askLockd(args.socket ?? defaultSocketPath, { op: "inquire", slot: integerArg("--slot", args.slot, 0) }, requestTimeoutMs);
    if (args.json) printJson(reply["lease"]);
    else printLines(...Object.entries(reply["lease"] as Record<string, unknown>).map(([key, value]) => `${key}: ${value === null ? "-" : String(value)}`));
  },
});

const statusCommand = defineCommand({
  meta: { description: "Show lockd: host lease phase, renewal age, held VM leases, other hosts' liveness" },
  args: { ...socketArg, ...jsonArg, ...logArgs },
  async run({ args }) {
    const status = (await askLockd(args.socket ?? defaultSocketPath, { op: "status" }, requestTimeoutMs))["status"] as LockdStatus;
    if (args.json) printJson(status);
    else printLines(...renderStatus(status));
  },
});

const answerCommand = defineCommand({
  meta: { description: "Answer lockd's fencing question N: fence (stop the VMs now) or no-fence (keep them on a grace; see src/lockd/README.md for what that vouches for)" },
  args: {
    question: { type: "positional", required: true, description: "The question's number (fitha lease status shows it)" },
    answer: { type: "positional", required: true, description: "fence or no-fence" },
    ...socketArg,
    ...logArgs,
  },
  async run({ args }) {
    if (args.answer !== "fence" && args.answer !== "no-fence") throw new UsageError(`lease answer: the answer must be fence or no-fence, not "${args.answer}"`);
    const question = integerArg("QUESTION", args.question, 0);
    await askLockd(args.socket ?? defaultSocketPath, { op: "answer", question, answer: args.answer }, requestTimeoutMs);
    printLines(`question ${question}: answered ${args.answer}`);
  },
});

export const leaseCommand = defineCommand({
  meta: { description: "Leases: format, inspect and check lease files; acquire, release and inspect VM leases through lockd" },
  subCommands: { format: formatCommand, dump: dumpCommand, check: checkCommand, acquire: acquireCommand, release: releaseCommand, inquire: inquireCommand, status: statusCommand, answer: answerCommand },
});

interface LockdStatus {
  host_id: number;
  host_name: string;
  generation: number;
  started_by: string;
  phase: string;
  lost_reason: string | null;
  last_renewal_age_ms: number;
  valid_for_ms: number;
  grace_for_ms: number | null;
  question: { id: number; age_ms: number; answer_within_ms: number; answer: string | null } | null;
  fenced: { age_ms: number; reason: string; vms: string[]; failed: string[] } | null;
  timeline: Record<string, number>;
  leases: Array<{ slot: number; vm: string; lver: number }>;
  hosts: Array<{ host_id: number; host_name: string | null; generation: number | null; state: string; silent_ms: number | null }>;
}

function renderStatus(s: LockdStatus): string[] {
  return [
    `host "${s.host_name}" (host id ${s.host_id}, generation ${s.generation}, ${s.started_by})`,
    `host lease: ${s.phase}${s.lost_reason ? ` (${s.lost_reason})` : ""}, last renewal ${s.last_renewal_age_ms} ms ago (warn at ${s.timeline["renewal_warn_ms"]}, fail at ${s.timeline["renewal_fail_ms"]}), valid for ${s.valid_for_ms} ms${s.grace_for_ms === null ? "" : ` (no-fence grace: ${s.grace_for_ms} ms left)`}`,
    ...(s.question === null
      ? []
      : [`fencing question ${s.question.id}, asked ${s.question.age_ms} ms ago: ${s.question.answer ?? `unanswered; fencing in ${s.question.answer_within_ms} ms unless answered (fitha lease answer ${s.question.id} fence|no-fence)`}`]),
    ...(s.fenced === null ? [] : [`fenced ${s.fenced.age_ms} ms ago (${s.fenced.reason}): ${s.fenced.vms.join(", ") || "no VMs"}${s.fenced.failed.length > 0 ? `; STILL RUNNING: ${s.fenced.failed.join(", ")}` : ""}`]),
    "",
    ...table("VM leases held", "none", ["SLOT", "VM", "LVER"], s.leases.map((l) => [String(l.slot), l.vm, String(l.lver)])),
    "",
    ...table("hosts", "none seen", ["HOST ID", "NAME", "GENERATION", "STATE", "SILENT MS"], s.hosts.map((h) => [String(h.host_id), h.host_name ?? "-", String(h.generation ?? "-"), h.state, h.silent_ms === null ? "-" : String(h.silent_ms)])),
  ];
}

function integerArg(flag: string, value: string | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  const parsed = Number(value);
  if (!/^[0-9]+$/.test(value) || !Number.isSafeInteger(parsed)) throw new UsageError(`lease: ${flag} must be a whole number, not "${value}"`);
  return parsed;
}

/** A lease file that does not exist yet is created at the size the lockspace needs. */
async function ensureFileSize(path: string, bytes: number): Promise<void> {
  const existing = await stat(path).catch(() => undefined);
  if (existing !== undefined && !existing.isFile()) return; // a block device: its size is checked on open
  const handle = await open(path, existing === undefined ? "wx" : "r+").catch((error: NodeJS.ErrnoException) => {
    throw new FithaError(`${path}: cannot create lease file (${error.code ?? error.message})`);
  });
  try {
    if ((existing?.size ?? 0) < bytes) await handle.truncate(bytes);
  } finally {
    await handle.close();
  }
}

async function openDevice(path: string, sectorSize: 512 | 4096 | undefined): Promise<DirectDevice> {
  try {
    return await DirectDevice.open(path, sectorSize === undefined ? {} : { sectorSize });
  } catch (error) {
    if (error instanceof IoError) throw new FithaError(error.message);
    throw error;
  }
}

/** Errors an operator can act on become one-line FithaErrors; anything else stays a bug. */
function rethrowExpected(error: unknown): never {
  if (error instanceof LockspaceExistsError) throw new FithaError(error.message, ExitCode.usage);
  if (error instanceof NotFormattedError || error instanceof CorruptionError || error instanceof IoError || error instanceof RangeError) {
    throw new FithaError(error.message);
  }
  throw error;
}

function renderDump(dump: Dump): string[] {
  const ls = dump.lockspace;
  return [
    `lockspace "${ls.name}" (${ls.id}) on ${dump.path}`,
    `  ${ls.sector_size}-byte sectors, ${ls.hosts} host ids, ${ls.slots} VM lease slots, max io timeout ${ls.max_io_timeout_ms} ms, kill budget ${ls.kill_budget_ms} ms`,
    "",
    ...table(
      "hosts",
      "none has joined",
      ["HOST ID", "NAME", "STATE", "GENERATION", "TIMESTAMP MS", "IO TIMEOUT MS", "INSTALL ID"],
      dump.hosts.map((h) => [String(h.host_id), h.host_name, h.state, String(h.generation), String(h.timestamp_ms), String(h.io_timeout_ms), h.install_id]),
    ),
    "",
    ...table(
      "VM leases",
      "none used yet",
      ["SLOT", "VM", "STATE", "OWNER HOST ID", "OWNER GENERATION", "LVER"],
      dump.leases.map((l) => [String(l.slot), l.resource, l.state, String(l.owner_host_id), String(l.owner_generation), String(l.lver)]),
    ),
    ...(dump.corrupt.length === 0 ? [] : ["", "CORRUPT RECORDS (not repaired; investigate before using this lockspace):", ...dump.corrupt.map((c) => `  ${c}`)]),
  ];
}

function table(title: string, empty: string, header: readonly string[], rows: readonly string[][]): string[] {
  if (rows.length === 0) return [`${title}: ${empty}`];
  return [`${title}:`, ...formatTable(header, rows).map((line) => `  ${line}`)];
}
