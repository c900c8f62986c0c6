/**
 * A local fitha cluster on one machine, shown step by step with the real binary: a real etcd
 * (the three network planes share it here), three compute hosts' agents heartbeating on every
 * plane, a controller, and then one host failing — the controller sees its planes go down and,
 * after the grace period, requests the recovery of its HA VMs. (Restarting those VMs elsewhere
 * comes with the recovery executor; until then the demo stops at the request.)
 *
 * Heartbeats are made fast for the demo (every 1 s, living 3 s; grace 5 s) with the same
 * commands an operator would use: `fitha config set` and `fitha strategy set`.
 */
import { join } from "node:path";
import { startEtcd } from "../test/helpers/etcd.ts";
import { writeConfig } from "../test/helpers/config.ts";
import { terminate } from "../test/helpers/terminate.ts";
import { tempDir } from "../test/helpers/tmp.ts";

const binary = join(import.meta.dir, "../dist/fitha");
const hosts = ["compute-1", "compute-2", "compute-3"];
const env = { PATH: process.env["PATH"] ?? "/usr/bin:/bin" };
const daemons = new Map<string, Bun.Subprocess>();

function step(text: string): void {
  process.stdout.write(`\n== ${text}\n`);
}

/** Runs dist/fitha with the output shown as the operator would see it; returns the exit code. */
async function fitha(...args: string[]): Promise<number> {
  process.stdout.write(`$ fitha ${args.join(" ")}\n`);
  const child = Bun.spawn([binary, ...args], { stdout: "inherit", stderr: "inherit", env });
  return await child.exited;
}

/** A daemon in the background; its logs go to a file in the demo's dir. */
function daemon(name: string, args: string[], logDir: string): void {
  const log = Bun.file(join(logDir, `${name}.log`));
  daemons.set(name, Bun.spawn([binary, ...args], { stdin: "ignore", stdout: log, stderr: log, env }));
}

/** Polls `fitha status --json` until `condition` holds, at most `timeoutMs`. */
async function waitForStatus(config: string, condition: (state: StatusState) => boolean, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const child = Bun.spawn([binary, "status", "--config", config, "--json"], { stdout: "pipe", stderr: "ignore", env });
    const text = await new Response(child.stdout).text();
    await child.exited;
    try {
      const state = (JSON.parse(text) as { state: StatusState | null }).state;
      if (state !== null && condition(state)) return true;
    } catch {
      // Not ready yet: try again.
    }
    await Bun.sleep(500);
  }
  return false;
}

interface StatusState {
  leader: { name: string } | null;
  hosts: Array<{ name: string; recovery_requested: boolean; view: { decision: string } | null }>;
}

await using dir = await tempDir("demo");
try {
  step("Starting a local etcd server (on a free loopback port, data in a temp dir)");
  await using etcd = await startEtcd({ name: "demo" });
  process.stdout.write(`etcd is up at ${etcd.endpoint}\n`);

  step("Writing one fitha.toml per host: on one machine the three network planes share this etcd");
  const configs = new Map<string, string>();
  for (const name of [...hosts, "controller"]) {
    const hostDir = join(dir.path, name);
    await Bun.$`mkdir -p ${hostDir}`.quiet();
    const extra = name === "controller" ? `[controller]\nname = "controller-1"\nelection_ttl_ms = 3000\n` : `[host]\nname = "${name}"\nhypervisor = "test:///default"\n`;
    configs.set(name, await writeConfig(hostDir, { management: etcd.endpoint, extra }));
  }
  const config = configs.get("controller")!;
  process.stdout.write(await Bun.file(configs.get("compute-1")!).text());
  process.stdout.write("\n");
  await fitha("config", "check", config);

  step("Fast heartbeats and a short grace period for the demo (an operator's runtime settings)");
  await fitha("config", "set", "heartbeat_interval_ms", "1000", "--config", config);
  await fitha("config", "set", "heartbeat_ttl_ms", "3000", "--config", config);
  const strategyFile = join(dir.path, "strategy.json");
  const strategy = JSON.parse(await new Response(Bun.spawn([binary, "strategy", "default"], { stdout: "pipe", env }).stdout).text()) as { grace_ms: number };
  await Bun.write(strategyFile, JSON.stringify({ ...strategy, grace_ms: 5_000 }, null, 2));
  await fitha("strategy", "set", strategyFile, "--config", config);

  step("Starting the agents of three compute hosts and a controller");
  for (const host of hosts) daemon(host, ["agent", "--config", configs.get(host)!], dir.path);
  daemon("controller", ["controller", "--config", config], dir.path);
  const healthy = await waitForStatus(config, (s) => s.leader !== null && s.hosts.length === 3 && s.hosts.every((h) => h.view?.decision === "healthy"), 30_000);
  await fitha("status", "--config", config);
  if (!healthy) throw new Error(`the cluster did not come up healthy; logs in ${dir.path}`);

  step("compute-2 fails: its agent is killed (SIGKILL), so its heartbeats stop on every plane");
  daemons.get("compute-2")!.kill("SIGKILL");
  process.stdout.write("waiting for the heartbeats to expire (3 s) and the grace period (5 s)...\n");
  const detected = await waitForStatus(config, (s) => s.hosts.some((h) => h.name === "compute-2" && h.recovery_requested), 30_000);
  await fitha("status", "--config", config);
  await fitha("events", "--config", config, "--host", "compute-2");
  if (!detected) throw new Error(`compute-2's failure was not detected; logs in ${dir.path}`);

  step("Done: compute-2's HA VMs would now be restarted on compute-1 and compute-3");
  process.stdout.write("(The recovery executor that starts them there is the next piece of fitha; stopping everything.)\n");
} finally {
  for (const child of daemons.values()) await terminate(child, 3_000);
}
