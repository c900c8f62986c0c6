/**
 * `fitha hook qemu`: libvirt's qemu hook. libvirt runs it with DOMAIN OPERATION SUB_OPERATION
 * EXTRA and the domain XML on stdin, and waits for it. Before an HA domain starts ("prepare
 * begin") it acquires the domain's VM lease through lockd; a non-zero exit makes libvirt refuse
 * the start, with this command's stderr in its error. After the domain has stopped ("release
 * end") it releases the lease. A domain without fitha's lease metadata is left alone.
 *
 * `fitha hook install`: puts the script that runs it into libvirt's hooks directory.
 */
import { defineCommand } from "citty";
import { withDeadline } from "../../deadline.ts";
import { FithaError, UsageError } from "../../errors.ts";
import { acquireVmLease, defaultSocketPath, LockdUnavailableError, releaseVmLease } from "../../lockd/client.ts";
import { domainIdentity } from "../../virt/domain-xml.ts";
import { leaseMetadata, maxDomainXmlBytes, type LeaseMetadata } from "../../virt/lease-metadata.ts";
import { defaultHooksDir, installQemuHook } from "../../virt/qemu-hook-install.ts";
import { logArgs } from "../args.ts";
import { printLines } from "../output.ts";

/**
 * Deadline of each lockd request. Acquiring a free lease is six I/O batches in lockd (read the
 * slot, write and read in each of the two Paxos phases, write the leader), each bounded by
 * lockd's I/O timeout T: 6 × 10 s = 60 s at the default T. libvirt holds the domain's job while
 * it waits (other calls on the domain time out), so this is not longer "to be safe": past it
 * the start is refused, the safe side. Should lockd finish the acquire after all, this host
 * holds the lease of a domain that did not start: a retried start here gets it at once, a start
 * elsewhere is refused until `fitha lease release`.
 */
const defaultRequestTimeoutMs = 60_000;
const maxRequestTimeoutMs = 600_000;
/** libvirt writes the whole document and closes stdin at once; this bounds a caller that never does. */
const stdinTimeoutMs = 10_000;

const qemuCommand = defineCommand({
  meta: { description: "libvirt's qemu hook: acquire an HA domain's VM lease before it starts, release it after it stopped" },
  args: {
    domain: { type: "positional", required: true, description: "The domain's name" },
    op: { type: "positional", required: true, description: "libvirt's operation: prepare, start, started, stopped, release, migrate, restore, reconnect, attach" },
    subop: { type: "positional", required: true, description: "libvirt's sub-operation: begin or end" },
    extra: { type: "positional", required: false, description: "libvirt's extra argument (for release: why the domain stopped)" },
    socket: { type: "string", valueHint: "PATH", description: `lockd's socket (default ${defaultSocketPath})` },
    "timeout-ms": { type: "string", valueHint: "MS", description: `Deadline of each lockd request (default ${defaultRequestTimeoutMs})` },
    ...logArgs,
  },
  async run({ args }) {
    const lockd = { socket: args.socket ?? defaultSocketPath, timeoutMs: timeoutArg(args["timeout-ms"]) };
    // Only these two events touch the lease; every other one returns at once and prints nothing
    // (for migrate and restore, libvirt would take output as a replacement domain XML).
    const event = `${args.op} ${args.subop}`;
    if (event === "prepare begin") await acquireBeforeStart(args.domain, lockd);
    else if (event === "release end") await releaseAfterStop(args.domain, lockd);
  },
});

interface Lockd {
  readonly socket: string;
  readonly timeoutMs: number;
}

async function acquireBeforeStart(domain: string, lockd: Lockd): Promise<void> {
  try {
    const lease = await domainLease(domain);
    if (lease === undefined) return;
    const acquired = await acquireVmLease(lockd.socket, lease.resource, lease.slot, lockd.timeoutMs);
    printLines(`${domain}: lease of ${lease.resource} acquired (slot ${lease.slot}, version ${acquired.lver}${acquired.already ? ", already held" : ""})`);
  } catch (error) {
    const safeSide = error instanceof LockdUnavailableError ? "; refusing is the safe side: a domain started without its lease could run on two hosts" : "";
    throw withContext(`refusing to start "${domain}"`, error, safeSide);
  }
}

/**
 * libvirt ignores the exit status of "release end" (the domain has stopped; nothing can be
 * undone) but logs a failing hook with its stderr. So a failed release exits non-zero anyway:
 * that log line is where an operator learns that the lease is still held by this host.
 */
async function releaseAfterStop(domain: string, lockd: Lockd): Promise<void> {
  let lease: LeaseMetadata | undefined;
  try {
    lease = await domainLease(domain);
    if (lease === undefined) return;
    // lockd releases only a lease this host holds: after a start refused because another host
    // holds it, libvirt runs "release end" here too, and that lease stays with its owner.
    const released = await releaseVmLease(lockd.socket, lease.resource, lease.slot, lockd.timeoutMs);
    printLines(`${domain}: ${released ? `lease of ${lease.resource} released` : `lease of ${lease.resource} was not held by this host`} (slot ${lease.slot})`);
  } catch (error) {
    const stillHeld = lease === undefined ? "" : `; this host keeps the lease until \`fitha lease release ${lease.resource} --slot ${lease.slot}\``;
    throw withContext(`lease of "${domain}" not released`, error, stillHeld);
  }
}

/** The domain's lease from the XML libvirt passes on stdin; undefined for a domain that is not HA-managed. */
async function domainLease(domain: string): Promise<LeaseMetadata | undefined> {
  const xml = await readStdin();
  const identity = domainIdentity(xml);
  if (!identity.isDomain) throw new FithaError("stdin holds no domain XML (libvirt passes the domain's XML there)");
  if (identity.name !== domain) throw new FithaError(`stdin holds the XML of domain "${identity.name ?? ""}", not of "${domain}"`);
  return leaseMetadata(xml);
}

async function readStdin(): Promise<string> {
  const reader = Bun.stdin.stream().getReader();
  const chunks: Uint8Array[] = [];
  let bytes = 0;
  const readAll = async (): Promise<string> => {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      bytes += value.byteLength;
      if (bytes > maxDomainXmlBytes) throw new FithaError(`the domain XML on stdin is larger than ${maxDomainXmlBytes} bytes`);
      chunks.push(value);
    }
    try {
      return new TextDecoder("utf-8", { fatal: true }).decode(Buffer.concat(chunks));
    } catch {
      throw new FithaError("the domain XML on stdin is not UTF-8");
    }
  };
  try {
    return await withDeadline(readAll(), stdinTimeoutMs, "reading the domain XML on stdin");
  } finally {
    await reader.cancel();
  }
}

/** A FithaError gets `context` in front and keeps its exit code; anything else is a bug and stays as it is. */
function withContext(context: string, error: unknown, suffix: string): unknown {
  if (!(error instanceof FithaError)) return error;
  return new FithaError(`hook qemu: ${context}: ${error.message}${suffix}`, error.exitCode, { cause: error });
}

function timeoutArg(value: string | undefined): number {
  if (value === undefined) return defaultRequestTimeoutMs;
  const ms = Number(value);
  if (!/^[0-9]+$/.test(value) || ms < 1 || ms > maxRequestTimeoutMs) {
    throw new UsageError(`hook qemu: --timeout-ms must be a whole number from 1 to ${maxRequestTimeoutMs}, not "${value}"`);
  }
  return ms;
}

const installCommand = defineCommand({
  meta: { description: "Install the qemu hook: an executable qemu.d/fitha in libvirt's hooks directory (libvirt 6.5 or later)" },
  args: {
    root: { type: "string", valueHint: "DIR", description: "Install into the file system tree at DIR (a staging root): --dir and --binary are taken relative to it (default /)" },
    dir: { type: "string", valueHint: "DIR", description: `libvirt's hooks directory (default ${defaultHooksDir})` },
    binary: { type: "string", valueHint: "PATH", description: `The fitha executable the hook runs (default: this one, ${process.execPath})` },
    force: { type: "boolean", description: "Replace an existing qemu.d/fitha that has other content" },
    "dry-run": { type: "boolean", description: "Show what would be written, write nothing" },
    ...logArgs,
  },
  async run({ args }) {
    const dryRun = args["dry-run"] === true;
    const result = await installQemuHook({ root: args.root ?? "/", hooksDir: args.dir ?? defaultHooksDir, binary: args.binary ?? process.execPath, force: args.force === true, dryRun });
    if (result.outcome === "unchanged") {
      printLines(`${result.path} is already installed; nothing to do`);
      return;
    }
    const did = { installed: dryRun ? "would install" : "installed", updated: dryRun ? "would replace" : "replaced" }[result.outcome];
    printLines(`${did} ${result.path} (mode 0755):`, ...result.script.trimEnd().split("\n").map((line) => `  ${line}`));
    // libvirt notices a hook file's new content at once, but a new hook only when it starts.
    if (result.outcome === "installed") printLines("libvirt looks for hooks only when it starts: restart libvirtd (or virtqemud) before relying on this one");
  },
});

export const hookCommand = defineCommand({
  meta: { description: "libvirt hooks: the qemu hook that holds HA domains' VM leases, and its installation" },
  subCommands: { qemu: qemuCommand, install: installCommand },
});
