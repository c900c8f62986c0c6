/**
 * `fitha doctor` on a host made of real parts: an etcd cluster per plane, a libvirtd with the
 * test driver, a formatted lease file, the qemu hook installed, a real lockd and watchdog. All
 * good first; then one thing broken at a time: that check fails with its fix, the others are
 * still reported.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { chmod, copyFile, mkdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { wallClockSync } from "../../ffi/libc.ts";
import { attachLoop, createBlkioCgroup, removeLeftovers } from "../helpers/block-device.ts";
import { writeConfig } from "../helpers/config.ts";
import { freePorts, startEtcd, type LocalEtcd } from "../helpers/etcd.ts";
import { eventually } from "../helpers/eventually.ts";
import { daemonCommand, fithaBinary, runFitha } from "../helpers/fitha.ts";
import { startLibvirtd, type LocalLibvirtd } from "../helpers/libvirtd.ts";
import { formatLeaseFile, killStartedLockds, lockdHost, startLockd, type LockdHost } from "../helpers/lockd.ts";
import { terminate } from "../helpers/terminate.ts";
import { tempDir, type TempDir } from "../helpers/tmp.ts";

interface Check {
  name: string;
  status: "ok" | "warn" | "fail" | "skipped";
  detail: string;
  fix: string | null;
  values: Record<string, unknown>;
}

const checkNames = ["config", "etcd-management", "etcd-storage", "etcd-service", "lease-file", "lockspace", "libvirt", "hook", "lockd", "watchdog", "boottime", "time-sync"];
/** This machine's NTP state, read here as doctor reads it: the one check whose verdict depends on the machine. */
const timeSyncStatus = wallClockSync().synchronized ? "ok" : "warn";

let dir: TempDir;
let etcds: LocalEtcd[];
let libvirtd: LocalLibvirtd;
let lockd: LockdHost;
let watchdog: Bun.Subprocess | undefined;
let hooks: string;
let leaseFile: string;

beforeAll(async () => {
  dir = await tempDir("doctor");
  etcds = await Promise.all(["mgmt", "stor", "serv"].map((plane) => startEtcd({ name: `doctor-${plane}` })));
  libvirtd = await startLibvirtd();
  leaseFile = join(dir.path, "leases");
  await formatLeaseFile(dir);
  hooks = join(dir.path, "hooks");
  const installed = await runFitha(["hook", "install", "--dir", hooks]);
  if (installed.exitCode !== 0) throw new Error(`fitha hook install: ${installed.stderr}`);
  lockd = lockdHost(dir, 1);
  await startLockd(lockd);
  watchdog = Bun.spawn(daemonCommand(["watchdog", "--state-dir", lockd.stateDir, "--hypervisor", "test:///default"]), { stdin: "ignore", stdout: "ignore", stderr: "ignore" });
  const pid = watchdog.pid;
  // setpriv execs fitha: from then on the command line is the watchdog's, as doctor looks for it.
  await eventually("the watchdog runs", async () => (await readFile(`/proc/${pid}/cmdline`, "utf8").catch(() => "")).startsWith(`${fithaBinary}\0watchdog\0`), 10_000);
}, 60_000);

afterAll(async () => {
  if (watchdog !== undefined) await terminate(watchdog, 5_000);
  await killStartedLockds();
  await removeLeftovers();
  await Promise.all([...(etcds ?? []).map((etcd) => etcd.stop()), libvirtd?.stop()]);
  await dir?.remove();
});

async function config(options: { storage?: string; hypervisor?: string; extra?: string } = {}): Promise<string> {
  const configDir = join(dir.path, `config-${Math.random().toString(36).slice(2)}`);
  await mkdir(configDir);
  const [management, storage, service] = etcds.map((etcd) => etcd.endpoint);
  return await writeConfig(configDir, {
    management: management!,
    storage: options.storage ?? storage!,
    service: service!,
    extra: ["[host]", 'name = "host-1"', `hypervisor = ${JSON.stringify(options.hypervisor ?? libvirtd.uri)}`, `lockd_socket = ${JSON.stringify(lockd.socket)}`, options.extra ?? ""].join("\n"),
  });
}

/** Runs doctor with this host's parts (lockd's state dir names the lease file and the host id) and more arguments. */
async function doctor(configFile: string, ...more: string[]): Promise<{ exitCode: number; checks: Map<string, Check>; stderr: string }> {
  // Never this machine's own /var/lib/fitha/host-id: a file that is not there, unless a test names one.
  const hostIdFile = more.includes("--host-id-file") ? [] : ["--host-id-file", join(dir.path, "no-host-id")];
  const result = await runFitha(["doctor", "--config", configFile, "--state-dir", lockd.stateDir, "--hook-dir", hooks, "--json", ...hostIdFile, ...more]);
  const report = JSON.parse(result.stdout) as { ok: boolean; checks: Check[] };
  expect(report.checks.map((c) => c.name)).toEqual(checkNames);
  expect(report.ok).toBe(result.exitCode === 0);
  for (const c of report.checks) expect(c.fix === null).toBe(c.status === "ok" || c.status === "skipped");
  return { exitCode: result.exitCode, checks: new Map(report.checks.map((c) => [c.name, c])), stderr: result.stderr };
}

/** What `stream` delivers until it ends with `end`; throws if that takes longer than `timeoutMs`. */
async function readUntil(stream: ReadableStream<Uint8Array>, end: string, timeoutMs: number): Promise<string> {
  const reader = stream.getReader();
  const decoder = new TextDecoder();
  let text = "";
  let timer: ReturnType<typeof setTimeout> | undefined;
  const expired = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`no complete answer within ${timeoutMs} ms: ${JSON.stringify(text)}`)), timeoutMs)));
  try {
    while (!text.endsWith(end)) {
      const { done, value } = await Promise.race([reader.read(), expired]);
      if (done) break;
      text += decoder.decode(value, { stream: true });
    }
    return text;
  } finally {
    clearTimeout(timer);
    reader.releaseLock();
  }
}

/** Every check but `broken` has the status it has on the healthy host. */
function expectOthersHealthy(checks: Map<string, Check>, ...broken: string[]): void {
  for (const name of checkNames) {
    if (broken.includes(name)) continue;
    expect({ name, status: checks.get(name)!.status }).toEqual({ name, status: name === "time-sync" ? timeSyncStatus : "ok" });
  }
}

describe("fitha doctor", () => {
  test("a healthy host: every check ok, with its numbers; exit 0", async () => {
    const { exitCode, checks, stderr } = await doctor(await config());
    expect(stderr).toBe("");
    expect(exitCode).toBe(0);
    expectOthersHealthy(checks);
    const [management] = etcds;
    expect(checks.get("etcd-management")!.values).toEqual({
      endpoints: management!.endpoint,
      reachable: true,
      latency_ms: expect.any(Number),
      etcd_version: expect.stringMatching(/^3\./),
      cluster_id: expect.stringMatching(/^[0-9a-f]+$/),
      members: 1,
    });
    expect(checks.get("lease-file")!.values).toEqual({ path: leaseFile, kind: "file", size_bytes: expect.any(Number), alignment_bytes: 512, sector_size: 512, open_ms: expect.any(Number), read_ms: expect.any(Number) });
    expect(checks.get("lockspace")!.values).toMatchObject({ path: leaseFile, name: "fitha", sector_size: 512, device_alignment_bytes: 512, hosts: 8, slots: 8, hosts_joined: 1, corrupt: 0, host_id: 1, host_id_owner: "host-1", host_id_state: "held" });
    expect(checks.get("lockspace")!.detail).toContain('host id 1: last held by "host-1"');
    expect(checks.get("libvirt")!.values).toMatchObject({ uri: libvirtd.uri, reachable: true, cpus: expect.any(Number) });
    expect(checks.get("hook")!.values).toEqual({ path: join(hooks, "qemu.d", "fitha"), binary: fithaBinary, executable: true });
    expect(checks.get("lockd")!.values).toMatchObject({ socket: lockd.socket, phase: "ok", host_id: 1, leases: 0 });
    expect(checks.get("watchdog")!.values).toMatchObject({ state_dir: lockd.stateDir, pids: String(watchdog!.pid), lockd_running: true, leases: 0 });
  }, 60_000);

  test("the human output: one aligned line per check, a fix under each problem, a summary", async () => {
    const result = await runFitha(["doctor", "--config", await config({ hypervisor: "test+unix:///default?socket=/nonexistent/sock" }), "--state-dir", lockd.stateDir, "--hook-dir", hooks]);
    expect(result.exitCode).toBe(1);
    const lines = result.stdout.split("\n");
    expect(lines[0]).toMatch(/^ok    config +\S+fitha\.toml: valid$/);
    const libvirt = lines.findIndex((line) => line.startsWith("FAIL  libvirt "));
    expect(lines[libvirt + 1]).toStartWith("      fix: start libvirt's daemon");
    const detailColumn = lines[0]!.indexOf("/");
    expect(lines[libvirt]!.indexOf("cannot connect to test+unix:")).toBe(detailColumn);
    expect(result.stdout).toMatch(/\n\n1 failed, \d+ warnings?: this host is not ready to join\n$/);
  }, 60_000);

  test("an etcd plane on a closed port fails with its fix; the same cluster for two planes is a warning", async () => {
    const [closedPort] = await freePorts(1);
    const down = await doctor(await config({ storage: `http://127.0.0.1:${closedPort}` }));
    expect(down.exitCode).toBe(1);
    const storage = down.checks.get("etcd-storage")!;
    expect(storage.status).toBe("fail");
    expect(storage.detail).toStartWith(`http://127.0.0.1:${closedPort}: unreachable: `);
    expect(storage.fix).toContain("[etcd.storage] endpoints");
    expectOthersHealthy(down.checks, "etcd-storage");

    const shared = await doctor(await config({ storage: etcds[0]!.endpoint }));
    expect(shared.exitCode).toBe(0);
    expect(shared.checks.get("etcd-storage")).toMatchObject({ status: "warn", values: { same_cluster_as: "management" } });
    expect(shared.checks.get("etcd-storage")!.detail).toContain("the same etcd cluster as the management plane");
    expectOthersHealthy(shared.checks, "etcd-storage");
  }, 60_000);

  test("a missing lease file fails with the format command; an unformatted one, a host id outside the lockspace", async () => {
    const configFile = await config();
    const missing = join(dir.path, "no-such-leases");
    const absent = await doctor(configFile, "--lease-file", missing);
    expect(absent.exitCode).toBe(1);
    expect(absent.checks.get("lease-file")).toMatchObject({ status: "fail", values: { path: missing, error_code: "ENOENT" } });
    expect(absent.checks.get("lease-file")!.fix).toContain(`fitha lease format --path ${missing}`);
    expect(absent.checks.get("lockspace")!.status).toBe("skipped");
    expectOthersHealthy(absent.checks, "lease-file", "lockspace");

    const blank = join(dir.path, "blank-leases");
    await writeFile(blank, new Uint8Array(1024 * 1024));
    const unformatted = await doctor(configFile, "--lease-file", blank);
    expect(unformatted.exitCode).toBe(1);
    expect(unformatted.checks.get("lease-file")!.status).toBe("ok");
    expect(unformatted.checks.get("lockspace")).toMatchObject({ status: "fail", detail: `${blank}: no lockspace (not formatted)` });
    expect(unformatted.checks.get("lockspace")!.fix).toStartWith(`\`fitha lease format --path ${blank} --hosts N\``);
    expectOthersHealthy(unformatted.checks, "lockspace");

    const outside = await doctor(configFile, "--host-id", "9");
    expect(outside.exitCode).toBe(1);
    expect(outside.checks.get("lockspace")!.status).toBe("fail");
    expect(outside.checks.get("lockspace")!.detail).toEndWith("host id 9 is outside 1..8");
    expectOthersHealthy(outside.checks, "lockspace");

    const taken = await doctor(configFile, "--host-id", "1", "--lease-file", leaseFile, "--state-dir", join(dir.path, "no-state"));
    // Without lockd's state this host's name is the config's, "host-1" as well: the id is its own.
    expect(taken.checks.get("lockspace")!.status).toBe("ok");

    // Before lockd ever ran: the id the agent handed over for it.
    const handedOver = join(dir.path, "handed-over-id");
    await writeFile(handedOver, "9\n");
    const fromAgent = await doctor(configFile, "--lease-file", leaseFile, "--state-dir", join(dir.path, "no-state"), "--host-id-file", handedOver);
    expect(fromAgent.checks.get("lockspace")!.detail).toEndWith("host id 9 is outside 1..8");
  }, 60_000);

  test("a lockspace of 512-byte sectors on a device that needs 4096-byte I/O fails with the re-format command", async () => {
    const copy = join(dir.path, "leases-copy");
    await copyFile(leaseFile, copy);
    await using loop = await attachLoop(copy, { sectorSize: 4096 });
    const { exitCode, checks } = await doctor(await config(), "--lease-file", loop.path);
    expect(exitCode).toBe(1);
    expect(checks.get("lease-file")).toMatchObject({ status: "ok", values: { kind: "block device", alignment_bytes: 4096, sector_size: 4096 } });
    expect(checks.get("lockspace")).toMatchObject({
      status: "fail",
      detail: `${loop.path}: the lockspace uses 512-byte sectors, but the device needs 4096-byte I/O`,
      fix: `format it again for 4096-byte sectors once every host has left it: \`fitha lease format --path ${loop.path} --sector-size 4096 --force\``,
    });
    expectOthersHealthy(checks, "lockspace");
  }, 60_000);

  test("a hung lease device: doctor still answers, the lease file failing at its deadline", async () => {
    await using cleanup = new AsyncDisposableStack();
    const hung = join(dir.path, "leases-hung");
    await copyFile(leaseFile, hung);
    const loop = cleanup.use(await attachLoop(hung));
    const cgroup = cleanup.use(await createBlkioCgroup("doctor-hang"));
    await cgroup.hang(loop.majorMinor);
    const configFile = await config();
    // doctor in the throttled cgroup from its first instruction: its every I/O to the device hangs.
    const child = Bun.spawn(["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', cgroup.path, fithaBinary, "doctor", "--config", configFile, "--state-dir", lockd.stateDir, "--hook-dir", hooks, "--lease-file", loop.path, "--json"], {
      stdin: "ignore",
      stdout: "pipe",
      stderr: "ignore",
      env: { PATH: "/usr/bin:/bin" },
    });
    // Disposed in reverse: the limits are lifted first (the hung read completes), then doctor is gone, then the cgroup and the device.
    cleanup.defer(async () => {
      child.kill("SIGKILL");
      await child.exited;
    });
    cleanup.defer(() => cgroup.release(loop.majorMinor));

    // Its answer comes, and it exits, while the read still hangs (in the child that checks the
    // lease file, which doctor leaves behind): only then are the limits lifted.
    const report = JSON.parse(await readUntil(child.stdout, "}\n", 30_000)) as { ok: boolean; checks: Check[] };
    expect(await Promise.race([child.exited, Bun.sleep(15_000).then(() => "still running")])).toBe(1);
    await cgroup.release(loop.majorMinor);
    const checks = new Map(report.checks.map((c) => [c.name, c]));
    expect(checks.get("lease-file")).toMatchObject({ status: "fail", detail: `${loop.path}: block device of ${(await stat(hung)).size} bytes, opens with O_DIRECT, needs 512-byte aligned I/O; reading its first sectors failed: ${loop.path}: I/O did not complete within 2000 ms` });
    expect(checks.get("lease-file")!.fix).toContain("multipath -ll");
    expect(checks.get("lockspace")!.status).toBe("skipped");
    expectOthersHealthy(checks, "lease-file", "lockspace");
  }, 60_000);

  test("a missing hook, a wrong libvirt URI, no watchdog for the state dir each fail with their fix", async () => {
    const configFile = await config();
    const noHooks = await runFitha(["doctor", "--config", configFile, "--state-dir", lockd.stateDir, "--hook-dir", join(dir.path, "no-hooks"), "--json"]);
    expect(noHooks.exitCode).toBe(1);
    const hook = (JSON.parse(noHooks.stdout).checks as Check[]).find((c) => c.name === "hook")!;
    expect(hook).toMatchObject({ status: "fail", detail: `${join(dir.path, "no-hooks", "qemu.d", "fitha")}: not installed: libvirt would start HA domains without their VM leases` });
    expect(hook.fix).toStartWith(`\`fitha hook install --dir ${join(dir.path, "no-hooks")}\``);

    const wrongUri = await doctor(await config({ hypervisor: "test+unix:///default?socket=/nonexistent/sock" }));
    expect(wrongUri.exitCode).toBe(1);
    expect(wrongUri.checks.get("libvirt")).toMatchObject({ status: "fail", values: { reachable: false } });
    expect(wrongUri.checks.get("libvirt")!.detail).toStartWith("cannot connect to test+unix:///default?socket=/nonexistent/sock: ");
    expectOthersHealthy(wrongUri.checks, "libvirt");

    // Another state dir: no watchdog watches it (this one watches lockd's), and lockd's state is not there.
    const elsewhere = await doctor(configFile, "--state-dir", join(dir.path, "other-state"), "--lease-file", leaseFile, "--host-id", "1");
    expect(elsewhere.exitCode).toBe(1);
    expect(elsewhere.checks.get("watchdog")!.status).toBe("fail");
    expect(elsewhere.checks.get("watchdog")!.detail).toContain(`pid ${watchdog!.pid} watches ${lockd.stateDir}`);
    expect(elsewhere.checks.get("watchdog")!.fix).toContain(`--state-dir ${join(dir.path, "other-state")}`);
    expectOthersHealthy(elsewhere.checks, "watchdog");
  }, 60_000);

  test("an invalid config fails with every problem; the checks that need it are skipped, the others still run", async () => {
    const configFile = await config({ extra: "" });
    const text = await readFile(configFile, "utf8");
    await writeFile(configFile, text.replace("dial_timeout_ms = 3000", "dial_timeout_ms = 5").replace('name = "host-1"', 'name = "-bad"'));
    const { exitCode, checks } = await doctor(configFile, "--socket", lockd.socket);
    expect(exitCode).toBe(1);
    const problems = checks.get("config")!;
    expect(problems.status).toBe("fail");
    expect(problems.values).toEqual({ file: configFile, problems: 2 });
    expect(problems.detail).toContain("etcd.dial_timeout_ms: ");
    expect(problems.detail).toContain("host.name: ");
    expect(problems.fix).toContain(`fitha config check ${configFile}`);
    for (const name of ["etcd-management", "etcd-storage", "etcd-service", "libvirt"]) expect(checks.get(name)!.status).toBe("skipped");
    expectOthersHealthy(checks, "config", "etcd-management", "etcd-storage", "etcd-service", "libvirt");
  }, 60_000);

  test("a hook that is edited, not executable, runs a missing binary or another program: each named, with its fix", async () => {
    const configFile = await config();
    const variants = join(dir.path, "hook-variants");
    const script = join(variants, "qemu.d", "fitha");
    const hookCheck = async () => {
      const result = await runFitha(["doctor", "--config", configFile, "--state-dir", lockd.stateDir, "--hook-dir", variants, "--json"]);
      const checks = JSON.parse(result.stdout).checks as Check[];
      return { exitCode: result.exitCode, hook: checks.find((c) => c.name === "hook")! };
    };
    const install = async (...more: string[]) => {
      const installed = await runFitha(["hook", "install", "--dir", variants, "--force", ...more]);
      if (installed.exitCode !== 0) throw new Error(`fitha hook install: ${installed.stderr}`);
    };

    await install();
    expect((await hookCheck()).hook.status).toBe("ok");
    await writeFile(script, `${await readFile(script, "utf8")}# edited by hand\n`);
    expect(await hookCheck()).toMatchObject({ exitCode: 1, hook: { status: "fail", detail: `${script}: not what \`fitha hook install\` writes (edited, or another program's)`, fix: `\`fitha hook install --dir ${variants}\` --force (\`--dry-run\` shows what it writes)` } });

    await install();
    await chmod(script, 0o644);
    expect(await hookCheck()).toMatchObject({ exitCode: 1, hook: { status: "fail", detail: `${script}: not executable: libvirt skips it` } });

    const gone = join(dir.path, "fitha-gone");
    await copyFile(fithaBinary, gone);
    await chmod(gone, 0o755);
    await install("--binary", gone);
    await rm(gone);
    expect(await hookCheck()).toMatchObject({ exitCode: 1, hook: { status: "fail", detail: `${script}: ${gone}: not an executable file; the hook would fail every domain start` } });

    await install("--binary", "/bin/true");
    expect(await hookCheck()).toMatchObject({ exitCode: 0, hook: { status: "warn", detail: `${script} runs /bin/true, not this fitha (${fithaBinary}): two installations?` } });
  }, 60_000);

  test("fitha lease check: the lease file's two checks on their own, for a host id", async () => {
    const healthy = await runFitha(["lease", "check", "--path", leaseFile, "--host-id", "1", "--host", "host-1"]);
    expect(healthy.exitCode).toBe(0);
    expect(healthy.stdout).toMatch(new RegExp(`^ok  lease-file  ${leaseFile}: file of \\d+ bytes, opens with O_DIRECT, needs 512-byte aligned I/O; first 4096 bytes read in [0-9.]+ ms\nok  lockspace   lockspace "fitha" \\([0-9a-f]+\\): 512-byte sectors \\(the device needs 512\\), 8 host ids, 8 VM lease slots; 1 host joined, 0 slots used; host id 1: last held by "host-1" \\(generation 1\\)\n\nall checks passed\n$`));
    const other = await runFitha(["lease", "check", "--path", leaseFile, "--host-id", "1", "--host", "host-7", "--json"]);
    expect(other.exitCode).toBe(0);
    expect(JSON.parse(other.stdout).checks[1]).toMatchObject({ status: "warn", fix: 'if "host-1" still runs, this host needs another id (lockd refuses one in use); if it is gone for good, lockd here takes the id over once that host\'s lease has expired' });
  }, 60_000);

  test("lockd not running fails with how to start it", async () => {
    const { exitCode, checks } = await doctor(await config(), "--socket", join(dir.path, "no-lockd.sock"));
    expect(exitCode).toBe(1);
    expect(checks.get("lockd")).toMatchObject({ status: "fail", detail: `cannot reach lockd at ${join(dir.path, "no-lockd.sock")} (is it running?)` });
    expect(checks.get("lockd")!.fix).toStartWith("start it (`fitha lockd --lease-file F --host-id N`");
    expectOthersHealthy(checks, "lockd");
  }, 60_000);
});
