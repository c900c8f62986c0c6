/**
 * WorkerHypervisor's own behaviour, on real libvirt: deadlines that hold while libvirtd hangs (a
 * private libvirtd stopped with SIGSTOP), replacement workers and giving up, bounded open and
 * close, processes that exit on their own, and libvirt used from several threads. What it shares
 * with the other hypervisors is checked in hypervisor-contract.test.ts.
 */
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { readdirSync } from "node:fs";
import { join } from "node:path";
import { Writable } from "node:stream";
import { configureLogging } from "../../src/log.ts";
import { HypervisorError } from "../../src/virt/hypervisor.ts";
import { WorkerHypervisor } from "../../src/virt/worker-hypervisor.ts";
import { domainXml, startLibvirtd, type LocalLibvirtd } from "../helpers/libvirtd.ts";

const workerHypervisorModule = join(import.meta.dir, "../../src/virt/worker-hypervisor.ts");
const libvirtHypervisorModule = join(import.meta.dir, "../../src/virt/libvirt-hypervisor.ts");
const childTimeoutMs = 10_000;
/** How late a deadline may fire on a loaded machine before the test calls it broken. */
const latenessMs = 700;
/**
 * Call deadlines in the tests below: short, yet ample for starting a worker and connecting
 * (~30 ms here, several times that on a busy machine), which a call after a replacement includes.
 */
const callTimeoutMs = 500;
/** For opens that are not what a test is about: a busy machine must not fail them. */
const openTimeoutMs = 10_000;

/** How `work` failed and how long it took from its start; fails the test if it succeeded or threw something else. */
async function timedFailure(work: () => Promise<unknown>): Promise<{ error: HypervisorError; elapsedMs: number }> {
  const startedMs = performance.now();
  const error = await work().then(
    () => undefined,
    (e: unknown) => e,
  );
  const elapsedMs = performance.now() - startedMs;
  expect(error).toBeInstanceOf(HypervisorError);
  return { error: error as HypervisorError, elapsedMs };
}

/** Runs `code` (an ES module body; `WorkerHypervisor` and `LibvirtHypervisor` are imported) in a child bun, bounded by childTimeoutMs. */
async function runChild(code: string): Promise<{ exitCode: number | null; signalCode: Bun.Subprocess["signalCode"]; stdout: string; stderr: string; elapsedMs: number }> {
  const source = `import { WorkerHypervisor } from ${JSON.stringify(workerHypervisorModule)};
import { LibvirtHypervisor } from ${JSON.stringify(libvirtHypervisorModule)};
${code}`;
  const startedMs = performance.now();
  const child = Bun.spawn([process.execPath, "-e", source], { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  const timer = setTimeout(() => child.kill("SIGKILL"), childTimeoutMs);
  try {
    const [stdout, stderr] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text()]);
    await child.exited;
    return { exitCode: child.exitCode, signalCode: child.signalCode, stdout, stderr, elapsedMs: performance.now() - startedMs };
  } finally {
    clearTimeout(timer);
  }
}

/** Routes logging (json, warnings and errors) into memory and returns the lines as they are written. */
function captureLogs(): Record<string, unknown>[] {
  const lines: Record<string, unknown>[] = [];
  const stream = new Writable({
    write(chunk, _encoding, done) {
      for (const line of String(chunk).split("\n")) if (line !== "") lines.push(JSON.parse(line) as Record<string, unknown>);
      done();
    },
  });
  configureLogging({ level: "warn", format: "json", stream });
  return lines;
}

/** One JSON value per line of `stdout`. */
function jsonLines(stdout: string): unknown[] {
  return stdout
    .trim()
    .split("\n")
    .map((line) => JSON.parse(line) as unknown);
}

describe("a hung libvirtd (stopped with SIGSTOP)", () => {
  let daemon: LocalLibvirtd | undefined;
  beforeAll(async () => {
    daemon = await startLibvirtd();
  });
  // A test that failed while the daemon was stopped must not leave it stopped for the next one.
  afterEach(() => {
    resume();
    configureLogging({ level: "info", format: "human" });
  });
  afterAll(async () => {
    await daemon?.stop();
  });

  function hang(): void {
    process.kill(daemon!.pid, "SIGSTOP");
  }
  function resume(): void {
    if (daemon !== undefined) process.kill(daemon.pid, "SIGCONT");
  }

  test("a call times out on time while the caller's timers keep firing; later calls go to a fresh worker", async () => {
    // One replacement in a row: the second hang below is allowed only because a call was answered in between.
    const hypervisor = await WorkerHypervisor.open(daemon!.uri, { callTimeoutMs, openTimeoutMs, maxReplacements: 1 });
    const logs = captureLogs();
    try {
      for (let round = 1; round <= 2; round++) {
        hang();
        let ticks = 0;
        const ticker = setInterval(() => ticks++, 10);
        const { error, elapsedMs } = await timedFailure(() => hypervisor.lookup("test"));
        clearInterval(ticker);
        expect(error).toMatchObject({ operation: "lookup", domain: "test", kind: "unanswered", detail: `timed out after ${callTimeoutMs} ms` });
        expect(error.message).toBe(`cannot look up domain "test" on ${daemon!.uri}: timed out after ${callTimeoutMs} ms`);
        expect(elapsedMs).toBeGreaterThanOrEqual(callTimeoutMs - 5);
        expect(elapsedMs).toBeLessThan(callTimeoutMs + latenessMs);
        // 50 ticks if the event loop never stalled; a libvirt call on this thread would allow none.
        expect(ticks).toBeGreaterThanOrEqual(25);

        // The worker is still blocked in libvirt; the next call goes to a new one, which connects once libvirtd answers.
        expect(logs).toHaveLength(round);
        expect(logs[round - 1]).toMatchObject({ level: "warn", tag: "libvirt", uri: daemon!.uri, when: "during lookup", reason: `timed out after ${callTimeoutMs} ms`, inARow: 1 });
        resume();
        expect(await hypervisor.lookup("test")).toMatchObject({ name: "test", state: "running" });
      }
    } finally {
      await hypervisor.close();
    }
  });

  test("an abandoned worker closes its connection once libvirt answers again", async () => {
    /** The daemon's open files: one socket per client connection, among others that do not change here. */
    const daemonFiles = () => readdirSync(`/proc/${daemon!.pid}/fd`).length;
    /** `daemonFiles()` once it is `expected`, or its last value after a bounded wait (libvirtd closes a client's socket on its own time). */
    const settledFiles = async (expected: number) => {
      for (const deadline = Date.now() + 3_000; daemonFiles() !== expected && Date.now() < deadline; ) await Bun.sleep(20);
      return daemonFiles();
    };
    const hypervisor = await WorkerHypervisor.open(daemon!.uri, { callTimeoutMs, openTimeoutMs });
    captureLogs();
    try {
      await Bun.sleep(100);
      const files = daemonFiles();
      hang();
      await timedFailure(() => hypervisor.listDomains());
      resume();
      // A second connection, from the replacement; the first one's goes once its worker has closed it.
      await hypervisor.listDomains();
      expect(await settledFiles(files)).toBe(files);
    } finally {
      await hypervisor.close();
    }
  });

  test("the deadline counts from when a call is made; a call that waited past it is never sent", async () => {
    const hypervisor = await WorkerHypervisor.open(daemon!.uri, { callTimeoutMs, openTimeoutMs });
    const logs = captureLogs();
    try {
      hang();
      // The define waits behind the list, which hangs: both fail at their deadline, counted from now.
      const [listed, defined] = await Promise.all([timedFailure(() => hypervisor.listDomains()), timedFailure(() => hypervisor.define(domainXml("never-sent")))]);
      expect(listed.error).toMatchObject({ operation: "list", detail: `timed out after ${callTimeoutMs} ms` });
      expect(defined.error).toMatchObject({ operation: "define", domain: "never-sent", detail: `timed out after ${callTimeoutMs} ms` });
      expect(defined.elapsedMs).toBeLessThan(callTimeoutMs + latenessMs);
      // The list's worker; the define's went on connecting when its call was dropped.
      expect(logs).toEqual([expect.objectContaining({ level: "warn", when: "during list" })]);
      resume();
      expect(await hypervisor.lookup("never-sent")).toBeUndefined();
    } finally {
      await hypervisor.close();
    }
  });

  test("after maxReplacements abandoned workers in a row, every call fails at once, naming why", async () => {
    // The replacement must give up connecting within the test: here openTimeoutMs is callTimeoutMs.
    const hypervisor = await WorkerHypervisor.open(daemon!.uri, { callTimeoutMs, maxReplacements: 1 });
    const logs = captureLogs();
    try {
      hang();
      // The first worker hangs in the call; its replacement hangs connecting, and is the last one allowed.
      expect((await timedFailure(() => hypervisor.listDomains())).error.detail).toBe(`timed out after ${callTimeoutMs} ms`);
      expect((await timedFailure(() => hypervisor.nodeInfo())).error.detail).toBe(`timed out after ${callTimeoutMs} ms`);
      const gaveUp = `gave up after 2 libvirt workers in a row were abandoned (the last during connect: timed out after ${callTimeoutMs} ms)`;
      const { error, elapsedMs } = await timedFailure(() => hypervisor.xml("test"));
      expect(error).toMatchObject({ operation: "xml", domain: "test", kind: "unanswered", detail: gaveUp });
      // It may have waited for the connect's own deadline, which ends just after the nodeInfo's.
      expect(elapsedMs).toBeLessThan(200);
      expect(logs.map((line) => [line["level"], line["when"], line["inARow"]])).toEqual([
        ["warn", "during list", 1],
        ["error", "during connect", 2],
      ]);

      // For good: a libvirtd that answers again does not bring it back (the caller opens a new one).
      resume();
      const later = await timedFailure(() => hypervisor.start("test"));
      expect(later.error).toMatchObject({ operation: "start", detail: gaveUp });
      expect(later.elapsedMs).toBeLessThan(100);
    } finally {
      await hypervisor.close();
    }
  });

  test("open and close are bounded too; after close every call fails", async () => {
    const logs = captureLogs();
    hang();
    const opening = await timedFailure(() => WorkerHypervisor.open(daemon!.uri, { callTimeoutMs: 5_000, openTimeoutMs: 200 }));
    expect(opening.error).toMatchObject({ operation: "connect", kind: "failed", message: `cannot connect to ${daemon!.uri}: timed out after 200 ms` });
    expect(opening.elapsedMs).toBeLessThan(200 + latenessMs);
    expect(logs).toEqual([expect.objectContaining({ level: "warn", when: "during connect" })]);
    resume();

    const hypervisor = await WorkerHypervisor.open(daemon!.uri, { callTimeoutMs, openTimeoutMs });
    hang();
    const closing = await timedFailure(() => hypervisor.close());
    expect(closing.error).toMatchObject({ operation: "close", message: `cannot close the connection to ${daemon!.uri}: timed out after ${callTimeoutMs} ms` });
    expect(closing.elapsedMs).toBeLessThan(callTimeoutMs + latenessMs);
    resume();
    await expect(hypervisor.listDomains()).rejects.toMatchObject({ operation: "list", detail: "the connection is closed" });
  });

  test("a process exits on its own, with an idle worker and with one stuck in libvirt", async () => {
    hang();
    const { exitCode, stdout, stderr, elapsedMs } = await runChild(`
      const idle = await WorkerHypervisor.open("test:///default");
      console.log(JSON.stringify((await idle.listDomains()).map((domain) => domain.name)));
      const error = await WorkerHypervisor.open(${JSON.stringify(daemon!.uri)}, { callTimeoutMs: 200 }).catch((e) => e);
      console.log(JSON.stringify(error.message));
    `);
    // Logged: the worker stuck connecting was abandoned.
    expect(stderr).toStartWith("[warn] [libvirt] libvirt worker abandoned; a new one connects for the next call");
    expect(jsonLines(stdout)).toEqual([["test"], `cannot connect to ${daemon!.uri}: timed out after 200 ms`]);
    expect(exitCode).toBe(0);
    expect(elapsedMs).toBeLessThan(childTimeoutMs / 2);
  });
});

test("libvirt fails quietly and safely on every thread, also after workers that used it ended", async () => {
  // libvirt has one error handler for the process; a JavaScript one, bound to the thread that set
  // it, made the main thread's next failure crash the process once a worker had ended.
  const { exitCode, signalCode, stdout, stderr } = await runChild(`
    const report = (work) => work.then(() => console.log('"succeeded"'), (error) => console.log(JSON.stringify(error.message)));
    const onMain = await LibvirtHypervisor.open("test:///default");
    await report(onMain.start("none"));
    const [first, second] = await Promise.all([WorkerHypervisor.open("test:///default"), WorkerHypervisor.open("test:///default")]);
    await Promise.all([report(first.start("none")), report(second.start("none"))]);
    await first.close();
    await report(second.xml("none"));
    await second.close();
    Bun.gc(true);
    await report(onMain.destroy("none"));
    await onMain.close();
  `);
  expect({ stderr, signalCode }).toEqual({ stderr: "", signalCode: null });
  expect(jsonLines(stdout)).toEqual([
    'cannot start domain "none" on test:///default: Domain not found',
    'cannot start domain "none" on test:///default: Domain not found',
    'cannot start domain "none" on test:///default: Domain not found',
    'cannot get the XML of domain "none" on test:///default: Domain not found',
    'cannot destroy domain "none" on test:///default: Domain not found',
  ]);
  expect(exitCode).toBe(0);
});
