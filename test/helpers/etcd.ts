/**
 * A real etcd server (Debian's etcd-server) on free loopback ports with its data in a temp dir,
 * for tests and for scripts/demo. Stopped and removed by `stop()` or `await using`, and killed by
 * the kernel if the process that started it dies (setpriv --pdeathsig), so no test run leaves
 * an etcd behind even when it crashes.
 */
import { terminate } from "./terminate.ts";
import { tempDir, type TempDir } from "./tmp.ts";
import { join } from "node:path";
import { readFile, rm } from "node:fs/promises";

export interface LocalEtcd extends AsyncDisposable {
  /** Client URL, e.g. "http://127.0.0.1:41234" ("https://…" with `tls`). */
  readonly endpoint: string;
  readonly pid: number;
  readonly dataDir: string;
  /** SIGTERM, then SIGKILL if it has not exited after `stopTimeoutMs`; removes the data. Idempotent. */
  stop(): Promise<void>;
}

export interface EtcdOptions {
  /** Member name, also in the temp dir's name. */
  name?: string;
  /** How long to wait for /health before giving up. */
  startTimeoutMs?: number;
  /** Serve clients over TLS only (https), with this server certificate; etcd's own flags. */
  tls?: EtcdTls;
}

export interface EtcdTls {
  readonly certFile: string;
  readonly keyFile: string;
  /** The CA whose client certificates are accepted; with it, a client without one is refused (--client-cert-auth). */
  readonly clientCaFile?: string;
}

const etcdBinary = "/usr/bin/etcd";
const stopTimeoutMs = 5_000;
const healthPollMs = 50;
/** Ports found free can be taken by someone else before etcd binds them; retry a few times. */
const maxStartAttempts = 3;

const running = new Set<Bun.Subprocess>();
process.on("exit", () => {
  for (const child of running) child.kill("SIGKILL");
});

export async function startEtcd(options: EtcdOptions = {}): Promise<LocalEtcd> {
  const name = options.name ?? "etcd";
  const dir = await tempDir(name);
  try {
    for (let attempt = 1; ; attempt++) {
      const started = await tryStart(name, dir, options.startTimeoutMs ?? 15_000, options.tls);
      if (started.ok) return started.etcd;
      if (!started.portTaken || attempt === maxStartAttempts) throw new Error(started.reason);
    }
  } catch (error) {
    await dir.remove();
    throw error;
  }
}

type Attempt = { ok: true; etcd: LocalEtcd } | { ok: false; portTaken: boolean; reason: string };

async function tryStart(name: string, dir: TempDir, startTimeoutMs: number, tls: EtcdTls | undefined): Promise<Attempt> {
  const [clientPort, peerPort, metricsPort] = await freePorts(3);
  const endpoint = `${tls === undefined ? "http" : "https"}://127.0.0.1:${clientPort}`;
  const peer = `http://127.0.0.1:${peerPort}`;
  // With TLS, /health is asked on a plain metrics listener: the client one may want a certificate.
  const healthUrl = tls === undefined ? endpoint : `http://127.0.0.1:${metricsPort}`;
  const tlsFlags =
    tls === undefined
      ? []
      : [
          "--cert-file", tls.certFile,
          "--key-file", tls.keyFile,
          "--listen-metrics-urls", healthUrl,
          ...(tls.clientCaFile === undefined ? [] : ["--client-cert-auth", "--trusted-ca-file", tls.clientCaFile]),
        ];
  const dataDir = join(dir.path, "data");
  const logFile = join(dir.path, "etcd.log");
  const child = Bun.spawn(
    [
      "setpriv", "--pdeathsig", "KILL", "--", etcdBinary,
      "--name", name,
      "--data-dir", dataDir,
      "--listen-client-urls", endpoint,
      "--advertise-client-urls", endpoint,
      "--listen-peer-urls", peer,
      "--initial-advertise-peer-urls", peer,
      "--initial-cluster", `${name}=${peer}`,
      "--initial-cluster-state", "new",
      "--log-outputs", "stderr",
      ...tlsFlags,
    ],
    { stdin: "ignore", stdout: Bun.file(logFile), stderr: Bun.file(logFile) },
  );
  running.add(child);
  const stop = once(async () => {
    await terminate(child, stopTimeoutMs);
    running.delete(child);
    await dir.remove();
  });

  const deadline = Date.now() + startTimeoutMs;
  while (Date.now() < deadline) {
    if (child.exitCode !== null || child.signalCode !== null) break;
    if (await healthy(healthUrl)) {
      return { ok: true, etcd: { endpoint, pid: child.pid, dataDir, stop, [Symbol.asyncDispose]: stop } };
    }
    await Bun.sleep(healthPollMs);
  }
  const log = await readFile(logFile, "utf8").catch(() => "");
  child.kill("SIGKILL");
  await child.exited;
  running.delete(child);
  await rm(dataDir, { recursive: true, force: true });
  const lastLines = log.trim().split("\n").slice(-5).join("\n");
  return {
    ok: false,
    portTaken: log.includes("address already in use"),
    reason: `etcd ${name} did not become healthy on ${endpoint} within ${startTimeoutMs} ms (exit ${child.exitCode ?? child.signalCode}); last log lines:\n${lastLines}`,
  };
}

async function healthy(url: string): Promise<boolean> {
  try {
    const response = await fetch(`${url}/health`, { signal: AbortSignal.timeout(1_000) });
    return response.ok && ((await response.json()) as { health?: string }).health === "true";
  } catch {
    return false;
  }
}

/** Ports the kernel considers free on loopback right now (bound to port 0, then released). */
export async function freePorts(count: number): Promise<number[]> {
  const listeners = Array.from({ length: count }, () =>
    Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } }),
  );
  const ports = listeners.map((listener) => listener.port);
  for (const listener of listeners) listener.stop(true);
  return ports;
}

function once(action: () => Promise<void>): () => Promise<void> {
  let done: Promise<void> | undefined;
  return () => (done ??= action());
}
