/**
 * A real `fitha lockd` as a systemd Type=notify service would run it: NOTIFY_SOCKET (and
 * WATCHDOG_USEC) in its environment, a real unix datagram socket bound by a stand-in for systemd
 * (test/helpers/notify-socket.ts), at a path and at an abstract address. READY=1 comes only once
 * its socket serves; STATUS= follows what it holds; WATCHDOG=1 only when asked for; STOPPING=1 at
 * shutdown.
 */
import { afterEach, expect, test } from "bun:test";
import { join } from "node:path";
import { runFitha } from "../helpers/fitha.ts";
import { formatLeaseFile, killStartedLockds, lockdHost, startLockd } from "../helpers/lockd.ts";
import { notifySocket } from "../helpers/notify-socket.ts";
import { tempDir } from "../helpers/tmp.ts";

afterEach(killStartedLockds);

const vm = "0f6c2f1e-4b7a-4c55-9d0e-6a1f8e2b7c01";

test("path socket with a watchdog: status while joining, READY once serving, keep-alives, status follows the leases, STOPPING at SIGTERM", async () => {
  await using dir = await tempDir("lockd-notify");
  await formatLeaseFile(dir);
  await using systemd = await notifySocket(join(dir.path, "notify.sock"));
  const h = lockdHost(dir, 1);
  const child = await startLockd(h, { env: { NOTIFY_SOCKET: systemd.address, WATCHDOG_USEC: "400000" } });

  const ready = await systemd.waitFor("READY=1", (m) => m.startsWith("READY=1\n"));
  expect(systemd.messages[ready]).toMatch(new RegExp(`^READY=1\\nSTATUS=host lease ok \\(host id 1, generation \\d+, joined\\), 0 VM lease\\(s\\), socket ${h.socket}\\n$`));
  // Before it: what it was doing, and no keep-alive (a daemon not ready yet has nothing to vouch for).
  expect(systemd.messages.slice(0, ready)).toEqual([`STATUS=joining or resuming the host lease (host id 1) in ${join(dir.path, "leases")}\n`]);
  // READY means serving: its socket answers now.
  expect((await runFitha(["lease", "status", "--socket", h.socket, "--json"])).exitCode).toBe(0);

  // WATCHDOG_USEC 400 ms: a keep-alive every 200 ms while the renewal loop moves.
  await systemd.waitFor("a second keep-alive", (m) => m === "WATCHDOG=1\n" && systemd.messages.filter((x) => x === "WATCHDOG=1\n").length >= 2);

  expect((await runFitha(["lease", "acquire", vm, "--slot", "1", "--socket", h.socket])).exitCode).toBe(0);
  await systemd.waitFor("a status with the VM lease", (m) => m.startsWith("STATUS=host lease ok (host id 1,") && m.includes(", 1 VM lease(s), "));

  child.kill("SIGTERM");
  expect(await child.exited).toBe(0);
  expect(systemd.messages.at(-1)).toBe("STOPPING=1\nSTATUS=stopping on SIGTERM; 1 VM lease(s) stay held for the next lockd to resume\n");
});

test("abstract socket without a watchdog: READY, status updates, no keep-alives", async () => {
  await using dir = await tempDir("lockd-notify-abstract");
  await formatLeaseFile(dir);
  await using systemd = await notifySocket(`@fitha-test-notify-${process.pid}-${crypto.randomUUID()}`);
  const h = lockdHost(dir, 2);
  const child = await startLockd(h, { env: { NOTIFY_SOCKET: systemd.address } });

  await systemd.waitFor("READY=1", (m) => m.startsWith("READY=1\nSTATUS=host lease ok (host id 2,"));
  expect((await runFitha(["lease", "acquire", vm, "--slot", "1", "--socket", h.socket])).exitCode).toBe(0);
  // A status change reaches the service manager only through the periodic loop: it ran.
  await systemd.waitFor("a status with the VM lease", (m) => m.startsWith("STATUS=") && m.includes(", 1 VM lease(s), "));
  child.kill("SIGTERM");
  expect(await child.exited).toBe(0);
  expect(systemd.messages.at(-1)).toStartWith("STOPPING=1\n");
  expect(systemd.messages.filter((m) => m.includes("WATCHDOG"))).toEqual([]);
});
