/**
 * `fitha doctor`'s verdicts on facts a real host rarely shows on demand (a clock going backwards,
 * corrupt records, lockd late or failed, lockd's state from an earlier boot); the integration test
 * (test/integration/doctor.test.ts) covers the rest on real parts.
 */
import { describe, expect, test } from "bun:test";
import { doctorReport, renderReport, check } from "../../src/doctor/check.ts";
import { clockVerdict, lockdVerdict, lockspaceVerdict, timeSyncVerdict, watchdogVerdict, type LeaseFacts, type LockdStatusFacts } from "../../src/doctor/verdicts.ts";
import type { Dump } from "../../src/lease/lease-file.ts";

const dump: Dump = {
  path: "/dev/sdx",
  lockspace: { name: "fitha", id: "ab", sector_size: 512, hosts: 8, slots: 16, max_io_timeout_ms: 10_000, kill_budget_ms: 60_000 },
  hosts: [{ host_id: 2, host_name: "compute-2", state: "held", generation: 4, timestamp_ms: 1, io_timeout_ms: 10_000, install_id: "cd" }],
  leases: [],
  corrupt: [],
};
const lease = (d: Dump): LeaseFacts => ({
  state: "opened",
  path: "/dev/sdx",
  device: { blockDevice: true, sectorSize: 512, alignmentBytes: 512, sizeBytes: 1 << 20 },
  openMs: 1,
  firstRead: { ok: true, bytes: 4096, ms: 1 },
  lockspace: { state: "read", dump: d },
});

describe("doctor verdicts", () => {
  test("lockspace: corrupt records fail; a host id held by another host warns; released or own is ok", () => {
    const corrupt = lockspaceVerdict(lease({ ...dump, corrupt: ["/dev/sdx delta lease of host id 3: corrupt lease record: bad checksum"] }), { hostId: 2, hostName: "compute-2" });
    expect(corrupt.status).toBe("fail");
    expect(corrupt.detail).toEndWith("; 1 corrupt record, the first: /dev/sdx delta lease of host id 3: corrupt lease record: bad checksum");
    expect(corrupt.fix).toBe("investigate before any host uses it (`fitha lease dump --path /dev/sdx` lists them)");

    const taken = lockspaceVerdict(lease(dump), { hostId: 2, hostName: "compute-9" });
    expect(taken.status).toBe("warn");
    expect(taken.detail).toEndWith('; host id 2 is held by "compute-2" (generation 4), not by this host ("compute-9")');
    expect(lockspaceVerdict(lease(dump), { hostId: 2, hostName: "compute-2" }).status).toBe("ok");
    const released = { ...dump, hosts: [{ ...dump.hosts[0]!, state: "released" as const }] };
    expect(lockspaceVerdict(lease(released), { hostId: 2, hostName: "compute-9" }).status).toBe("ok");
    expect(lockspaceVerdict(lease(dump), { hostId: undefined, hostName: "compute-9" }).detail).toEndWith("; this host's id unknown (give --host-id to check it)");
  });

  test("clock: CLOCK_BOOTTIME standing still or disagreeing with /proc/uptime fails", () => {
    expect(clockVerdict({ boottimeMs: [5_000, 5_020], uptimeMs: 5_020, boottimeAfterUptimeMs: 5_021 }).status).toBe("ok");
    // /proc/uptime's 10 ms resolution is no disagreement.
    expect(clockVerdict({ boottimeMs: [5_000, 5_029], uptimeMs: 5_020, boottimeAfterUptimeMs: 5_030 }).status).toBe("ok");
    const still = clockVerdict({ boottimeMs: [5_000, 5_000], uptimeMs: 5_000, boottimeAfterUptimeMs: 5_000 });
    expect(still).toMatchObject({ status: "fail", detail: "CLOCK_BOOTTIME did not move forward: 5000 ms, then 5000 ms, then 5000 ms" });
    expect(still.fix).toStartWith("lockd's lease timing relies on CLOCK_BOOTTIME");
    expect(clockVerdict({ boottimeMs: [5_000, 5_020], uptimeMs: 9_000, boottimeAfterUptimeMs: 5_021 })).toMatchObject({
      status: "fail",
      detail: "CLOCK_BOOTTIME (5020 ms) and /proc/uptime (9000 ms) disagree by 3979 ms",
    });
    expect(clockVerdict({ error: "clock_gettime CLOCK_BOOTTIME: Invalid argument (EINVAL)" }).status).toBe("fail");
  });

  test("time sync: synchronized is ok, unsynchronized a warning with the fix, unreadable skipped", () => {
    expect(timeSyncVerdict({ synchronized: true, maxErrorMs: 12 })).toMatchObject({ status: "ok", fix: null, values: { synchronized: true, max_error_ms: 12 } });
    expect(timeSyncVerdict({ synchronized: false, maxErrorMs: 16_000 })).toMatchObject({ status: "warn", fix: "run an NTP client: `systemctl enable --now systemd-timesyncd` (or chrony)" });
    expect(timeSyncVerdict({ error: "adjtimex: Operation not permitted (EPERM)" }).status).toBe("skipped");
  });

  test("lockd: a late host lease warns, a lost one fails", () => {
    const status: LockdStatusFacts = { phase: "ok", host_id: 3, host_name: "compute-3", generation: 2, lost_reason: null, last_renewal_age_ms: 1_500, valid_for_ms: 78_000, leases: [{}, {}] };
    expect(lockdVerdict({ socket: "/run/fitha/lockd.sock", ok: true, status })).toMatchObject({
      status: "ok",
      detail: '/run/fitha/lockd.sock: host "compute-3" (host id 3, generation 2), host lease ok, renewed 1500 ms ago, valid for 78000 ms, 2 VM leases held',
    });
    for (const phase of ["warn", "grace"]) expect(lockdVerdict({ socket: "/s", ok: true, status: { ...status, phase } }).status).toBe("warn");
    const lost = lockdVerdict({ socket: "/s", ok: true, status: { ...status, phase: "failed", lost_reason: "renewal failed" } });
    expect(lost.status).toBe("fail");
    expect(lost.detail).toContain("host lease failed (renewal failed)");
  });

  test("watchdog: lockd's state from an earlier boot or unreadable is named; an expired one is shown as such", () => {
    const base = { stateDir: "/var/lib/fitha/lockd", processes: [{ pid: 42, stateDir: "/var/lib/fitha/lockd" }], hypervisor: "qemu:///system" };
    expect(watchdogVerdict({ ...base, lockdState: { pid: 7, running: false, thisBoot: false, leases: 1, validForMs: -5 } }).detail).toBe("pid 42 watches /var/lib/fitha/lockd; its state is from an earlier boot (nothing to guard)");
    expect(watchdogVerdict({ ...base, lockdState: { error: "/var/lib/fitha/lockd/state.json: not valid JSON" } }).status).toBe("warn");
    expect(watchdogVerdict({ ...base, lockdState: { pid: 7, running: false, thisBoot: true, leases: 1, validForMs: -2_500 } }).detail).toBe(
      "pid 42 watches /var/lib/fitha/lockd; lockd pid 7 (not running), 1 VM lease, expired 2500 ms ago",
    );
  });

  test("the report: ok only without failures; fixes under their check, aligned; a summary", () => {
    const report = doctorReport([check("config", "ok", "/etc/fitha/fitha.toml: valid"), check("hook", "warn", "runs /bin/true", "fitha hook install --force"), check("lease-file", "skipped", "no lease file")]);
    expect(report.ok).toBe(true);
    expect(renderReport(report)).toEqual([
      "ok    config      /etc/fitha/fitha.toml: valid",
      "warn  hook        runs /bin/true",
      "      fix: fitha hook install --force",
      "skip  lease-file  no lease file",
      "",
      "no failures, 1 warning (1 skipped)",
    ]);
    const failed = doctorReport([check("lockd", "fail", "cannot reach lockd", "start it")]);
    expect(failed.ok).toBe(false);
    expect(renderReport(failed).at(-1)).toBe("1 failed, 0 warnings: this host is not ready to join");
  });
});
