/**
 * The agent, the controller and the watchdog as systemd Type=notify services (lockd's own test:
 * test/lease/lockd-notify.test.ts): the built binary with NOTIFY_SOCKET and WATCHDOG_USEC, a real
 * etcd, a stand-in for systemd's notify socket. Each says READY=1 once it works, what it is
 * doing in STATUS=, keeps its watchdog fed, and says STOPPING=1 at SIGTERM.
 */
import { afterAll, afterEach, beforeAll, expect, test } from "bun:test";
import { join } from "node:path";
import { writeConfig } from "../helpers/config.ts";
import { startEtcd, type LocalEtcd } from "../helpers/etcd.ts";
import { daemonCommand } from "../helpers/fitha.ts";
import { notifySocket, type NotifySocket } from "../helpers/notify-socket.ts";
import { tempDir } from "../helpers/tmp.ts";

let etcd: LocalEtcd;
const children = new Set<Bun.Subprocess>();

beforeAll(async () => {
  etcd = await startEtcd({ name: "systemd-notify" });
});
afterAll(async () => {
  await etcd[Symbol.asyncDispose]();
});
afterEach(async () => {
  for (const child of children) {
    child.kill("SIGKILL");
    await child.exited;
  }
  children.clear();
});

function start(args: string[], systemd: NotifySocket): Bun.Subprocess<"ignore", "ignore", "pipe"> {
  const child = Bun.spawn(daemonCommand([...args, "--log-format", "json"]), {
    stdin: "ignore",
    stdout: "ignore",
    stderr: "pipe",
    env: { PATH: "/usr/bin:/bin", NOTIFY_SOCKET: systemd.address, WATCHDOG_USEC: "400000" },
  });
  children.add(child);
  return child;
}

const keepAlives = (systemd: NotifySocket) => systemd.messages.filter((m) => m === "WATCHDOG=1\n").length;

test("controller: READY as leader (alone), keep-alives, STOPPING", async () => {
  await using dir = await tempDir("notify-controller");
  await using systemd = await notifySocket(join(dir.path, "notify.sock"));
  const config = await writeConfig(dir.path, { management: etcd.endpoint, prefix: `/notify-controller-${crypto.randomUUID()}`, extra: `[controller]\nname = "c1"\nelection_ttl_ms = 2000\n` });
  const child = start(["controller", "--config", config], systemd);
  const ready = await systemd.waitFor("READY=1", (m) => m.startsWith("READY=1\n"));
  expect(systemd.messages[ready]).toMatch(/^READY=1\nSTATUS=controller c1: (leader|standby)\n$/);
  await systemd.waitFor("leader status", (m) => m.includes("STATUS=controller c1: leader\n"));
  await systemd.waitFor("two keep-alives", () => keepAlives(systemd) >= 2);
  child.kill("SIGTERM");
  expect(await child.exited).toBe(0);
  expect(systemd.messages.at(-1)).toBe("STOPPING=1\nSTATUS=stopping on SIGTERM; a standby takes over\n");
});

test("agent: READY once registered, the planes it reaches in STATUS, keep-alives while its heartbeats go round, STOPPING", async () => {
  await using dir = await tempDir("notify-agent");
  await using systemd = await notifySocket(`@fitha-test-notify-agent-${process.pid}-${crypto.randomUUID()}`);
  const config = await writeConfig(dir.path, {
    management: etcd.endpoint,
    prefix: `/notify-agent-${crypto.randomUUID()}`,
    requestTimeoutMs: 1_000,
    extra: `[host]\nname = "h1"\nhypervisor = "test:///default"\nlockd_socket = "${join(dir.path, "no-lockd.sock")}"\n`,
  });
  const child = start(["agent", "--config", config], systemd);
  const ready = await systemd.waitFor("READY=1", (m) => m.startsWith("READY=1\n"));
  expect(systemd.messages[ready]).toMatch(/^READY=1\nSTATUS=host h1 \(host id \d+\); planes reached: /);
  await systemd.waitFor("every plane reached", (m) => m.startsWith("STATUS=") && m.endsWith("planes reached: management, storage, service\n"));
  await systemd.waitFor("two keep-alives", () => keepAlives(systemd) >= 2);
  child.kill("SIGTERM");
  expect(await child.exited).toBe(0);
  expect(systemd.messages.at(-1)).toBe("STOPPING=1\nSTATUS=stopping on SIGTERM; heartbeats expire unless an agent renews them\n");
});

test("watchdog: READY, what it found in STATUS, keep-alives while it polls, STOPPING", async () => {
  await using dir = await tempDir("notify-watchdog");
  await using systemd = await notifySocket(join(dir.path, "notify.sock"));
  const stateDir = join(dir.path, "lockd");
  const child = start(["watchdog", "--state-dir", stateDir, "--hypervisor", "test:///default", "--poll-interval-ms", "100"], systemd);
  await systemd.waitFor("READY=1", (m) => m === `READY=1\nSTATUS=watching ${stateDir}\n`);
  await systemd.waitFor("its finding", (m) => m === "STATUS=idle: no lockd state\n");
  await systemd.waitFor("two keep-alives", () => keepAlives(systemd) >= 2);
  child.kill("SIGTERM");
  expect(await child.exited).toBe(0);
  expect(systemd.messages.at(-1)).toBe("STOPPING=1\nSTATUS=stopping: VMs are no longer protected against a hung lockd\n");
});
