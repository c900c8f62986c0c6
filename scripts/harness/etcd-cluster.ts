/**
 * One real etcd cluster per plane (Debian's etcd-server), its members in the fabric namespace on
 * addresses of that plane's bridge only: a node reaches a plane's cluster exactly while its link
 * to that plane is up. Members can be killed and started again (same data dir) one by one.
 */
import { mkdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import type { Plane } from "../../src/config/fitha-config.ts";
import { terminate } from "../../test/helpers/terminate.ts";
import type { Fabric } from "./fabric.ts";
import { inNamespace } from "./namespace-command.ts";

const etcdBinary = "/usr/bin/etcd";
const clientPort = 2379;
const peerPort = 2380;
const startTimeoutMs = 20_000;
const stopTimeoutMs = 5_000;

export interface EtcdMember {
  readonly name: string;
  readonly address: string;
  readonly clientUrl: string;
  readonly process: Bun.Subprocess | undefined;
}

export class EtcdCluster {
  readonly #members: Array<{ name: string; address: string; dataDir: string; log: string; process: Bun.Subprocess | undefined }> = [];

  private constructor(
    readonly plane: Plane,
    readonly fabric: Fabric,
    readonly dir: string,
  ) {}

  /** `size` members for `plane`, data and logs under `dir`; resolves once every member is healthy. */
  static async start(fabric: Fabric, plane: Plane, size: number, dir: string): Promise<EtcdCluster> {
    if (!(Number.isInteger(size) && size >= 1 && size <= 5)) throw new RangeError(`etcd cluster size ${size} (1–5)`);
    const cluster = new EtcdCluster(plane, fabric, dir);
    try {
      for (let i = 1; i <= size; i++) {
        const name = `${plane}-${i}`;
        const address = await fabric.addServiceAddress(plane);
        await mkdir(join(dir, name), { recursive: true });
        cluster.#members.push({ name, address, dataDir: join(dir, name, "data"), log: join(dir, name, "etcd.log"), process: undefined });
      }
      for (let i = 0; i < size; i++) cluster.#spawn(i, "new");
      await cluster.waitHealthy();
    } catch (error) {
      await cluster.stop();
      throw error;
    }
    return cluster;
  }

  /** Client URLs of every member, for a fitha.toml's `endpoints`. */
  get endpoints(): string[] {
    return this.#members.map((m) => `http://${m.address}:${clientPort}`);
  }

  get members(): EtcdMember[] {
    return this.#members.map((m) => ({ name: m.name, address: m.address, clientUrl: `http://${m.address}:${clientPort}`, process: m.process }));
  }

  /** SIGKILL one member (its data stays: `restartMember` brings it back). */
  async killMember(index: number): Promise<void> {
    const member = this.#member(index);
    member.process?.kill("SIGKILL");
    await member.process?.exited;
    member.process = undefined;
  }

  async restartMember(index: number): Promise<void> {
    if (this.#member(index).process !== undefined) throw new Error(`etcd ${this.#member(index).name} runs already`);
    this.#spawn(index, "existing");
    await this.waitHealthy();
  }

  /** Every running member answers /health with true (probed from inside the fabric). */
  async waitHealthy(timeoutMs = startTimeoutMs): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    const running = this.#members.filter((m) => m.process !== undefined);
    const urls = running.map((m) => `http://${m.address}:${clientPort}/health`);
    const probe = `const urls = ${JSON.stringify(urls)}; const ok = await Promise.all(urls.map(async (u) => { try { const r = await fetch(u, { signal: AbortSignal.timeout(1000) }); return r.ok && (await r.json()).health === "true"; } catch { return false; } })); process.exit(ok.every(Boolean) ? 0 : 1);`;
    while (Date.now() < deadline) {
      for (const member of running) {
        if (member.process?.exitCode !== null || member.process.signalCode !== null) {
          const log = await readFile(member.log, "utf8").catch(() => "");
          throw new Error(`etcd ${member.name} exited (${member.process?.exitCode ?? member.process?.signalCode}); last log lines:\n${log.trim().split("\n").slice(-5).join("\n")}`);
        }
      }
      const child = inNamespace(this.fabric.netns, [process.execPath, "-e", probe], { stdout: "ignore", stderr: "ignore" });
      if ((await child.exited) === 0) return;
      await Bun.sleep(200);
    }
    throw new Error(`the ${this.plane} etcd cluster did not become healthy within ${timeoutMs} ms (logs under ${this.dir})`);
  }

  /** Stops every member (SIGTERM, then SIGKILL). Idempotent; never throws. */
  async stop(): Promise<void> {
    for (const member of this.#members) {
      if (member.process !== undefined) await terminate(member.process, stopTimeoutMs).catch(() => undefined);
      member.process = undefined;
    }
  }

  #member(index: number) {
    const member = this.#members[index];
    if (member === undefined) throw new RangeError(`no ${this.plane} etcd member ${index}`);
    return member;
  }

  #spawn(index: number, state: "new" | "existing"): void {
    const member = this.#member(index);
    const peers = this.#members.map((m) => `${m.name}=http://${m.address}:${peerPort}`).join(",");
    member.process = inNamespace(
      this.fabric.netns,
      [
        etcdBinary,
        "--name", member.name,
        "--data-dir", member.dataDir,
        "--listen-client-urls", `http://${member.address}:${clientPort}`,
        "--advertise-client-urls", `http://${member.address}:${clientPort}`,
        "--listen-peer-urls", `http://${member.address}:${peerPort}`,
        "--initial-advertise-peer-urls", `http://${member.address}:${peerPort}`,
        "--initial-cluster", peers,
        "--initial-cluster-state", state,
        "--initial-cluster-token", `${this.fabric.prefix}-${this.plane}`,
        "--log-outputs", "stderr",
      ],
      { stdout: "ignore", stderr: Bun.file(member.log) },
    );
  }
}
