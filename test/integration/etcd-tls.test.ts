/**
 * etcd security against real etcd servers, one per plane, each serving clients over TLS only and
 * only with a client certificate signed by its CA (certificates made here with openssl): the
 * operator commands and the daemons over TLS; the refusals, each naming what to fix; then etcd's
 * authentication on top (a password file, never shown, even at log level trace); and the RBAC
 * recipe of src/store/etcd-roles.ts applied as is: the agent of one host and a controller run
 * under their roles, and the agent's user is refused another host's keys and the controller's.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Etcd3 } from "etcd3";
import { readFileSync } from "node:fs";
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import { planes, type Plane } from "../../src/config/fitha-config.ts";
import { FencingBridge, type LockdNotice, type LockdQuestion, type LockdQuestions } from "../../src/agent/fencing-bridge.ts";
import { monotonicClock } from "../../src/core/clock.ts";
import { defaultSettings, settingsToJson } from "../../src/core/settings.ts";
import { listEvents } from "../../src/store/events.ts";
import { connectPlane, type EtcdSettings } from "../../src/store/cluster.ts";
import { Secret, type EtcdCredentials } from "../../src/store/credentials.ts";
import { EtcdKv } from "../../src/store/etcd-kv.ts";
import { agentRole, clusterRoles, type EtcdRole } from "../../src/store/etcd-roles.ts";
import { keys as keysFor } from "../../src/store/keys.ts";
import { KvError, type Kv, type KvWatchEnd } from "../../src/store/kv.ts";
import { writeConfig } from "../helpers/config.ts";
import { applyRole, enableAuth } from "../helpers/etcd-auth.ts";
import { startEtcd, type LocalEtcd } from "../helpers/etcd.ts";
import { etcdSettings } from "../helpers/etcd-settings.ts";
import { eventually } from "../helpers/eventually.ts";
import { daemonCommand, runFitha, type RunResult } from "../helpers/fitha.ts";
import { commandTestTimeoutMs } from "../helpers/management.ts";
import { terminate } from "../helpers/terminate.ts";
import { createCa, type CertificateAuthority, type CertificateFiles } from "../helpers/tls.ts";
import { tempDir, type TempDir } from "../helpers/tmp.ts";

const prefix = "/fitha-sec";
const keys = keysFor(prefix);
const rootPassword = "root-Pw-9f3c1e";
/** Distinct from every other string in the test, so that finding it anywhere means it leaked. */
const operatorPassword = "op-Secret-7d2a5b";
const agentPassword = "agent-Secret-41c8e0";
const controllerPassword = "ctl-Secret-0b6e93";
const daemonTimeoutMs = 30_000;

let dir: TempDir;
let ca: CertificateAuthority;
let rogueCa: CertificateAuthority;
let client: CertificateFiles;
let rogueClient: CertificateFiles;
const etcds = {} as Record<Plane, LocalEtcd>;
const children = new Set<Bun.Subprocess>();
/** Every client the test opened itself, closed at the end. */
const opened: Array<{ close(): void }> = [];

beforeAll(async () => {
  dir = await tempDir("etcd-tls");
  ca = await createCa(dir.path, "fitha-ca");
  rogueCa = await createCa(dir.path, "rogue-ca");
  const server = await ca.issue("etcd-server", "server");
  // Its CN names no etcd user: with auth on, it alone authenticates no one.
  client = await ca.issue("fitha-client", "client");
  rogueClient = await rogueCa.issue("rogue-client", "client");
  for (const plane of planes) etcds[plane] = await startEtcd({ name: `tls-${plane}`, tls: { ...server, clientCaFile: ca.certFile } });
}, 60_000);

afterAll(async () => {
  for (const child of children) await terminate(child, 2_000);
  for (const c of opened) c.close();
  for (const plane of planes) await etcds[plane]?.stop();
  await dir?.remove();
}, 60_000);

/** etcd.tls of fitha.toml: the CA to trust and the client certificate to show (none: null). */
function tlsSection(trusted: CertificateAuthority, certificate: CertificateFiles | null): string {
  const lines = ["[etcd.tls]", `ca_file = "${trusted.certFile}"`];
  if (certificate !== null) lines.push(`cert_file = "${certificate.certFile}"`, `key_file = "${certificate.keyFile}"`);
  return `${lines.join("\n")}\n`;
}

/** A fitha.toml in its own dir for the three planes, with `extra` TOML. */
async function configFile(name: string, extra: string, scheme: "https" | "http" = "https"): Promise<string> {
  const path = join(dir.path, name);
  await mkdir(path, { recursive: true });
  const endpoint = (plane: Plane) => etcds[plane].endpoint.replace(/^https/, scheme);
  return await writeConfig(path, { prefix, management: endpoint("management"), storage: endpoint("storage"), service: endpoint("service"), dialTimeoutMs: 1_000, requestTimeoutMs: 2_000, extra });
}

async function passwordFile(name: string, password: string): Promise<string> {
  const path = join(dir.path, `${name}.password`);
  await Bun.write(path, `${password}\n`);
  return path;
}

function authSection(username: string, file: string): string {
  return `[etcd.auth]\nusername = "${username}"\npassword_file = "${file}"\n`;
}

const clientCredentials = (): NonNullable<EtcdCredentials["tls"]> => ({
  rootCertificate: readFileSync(ca.certFile),
  client: { certChain: readFileSync(client.certFile), privateKey: readFileSync(client.keyFile) },
});

function planeSettings(plane: Plane): EtcdSettings {
  return etcdSettings({ endpoint: etcds[plane].endpoint, prefix });
}

/** A Kv on `plane`'s cluster with the client certificate, as `user` if given. */
function kvAs(plane: Plane, user?: { name: string; password: string }): Kv {
  const kv = EtcdKv.connect(planeSettings(plane), plane, { tls: clientCredentials(), ...(user === undefined ? {} : { auth: { username: user.name, password: new Secret(user.password) } }) });
  opened.push(kv);
  return kv;
}

/** etcd3's own client on `plane`'s cluster, as root once auth is on (for its auth API). */
function rawClient(plane: Plane, asRoot: boolean): Etcd3 {
  const raw = connectPlane(planeSettings(plane), plane, { tls: clientCredentials(), ...(asRoot ? { auth: { username: "root", password: new Secret(rootPassword) } } : {}) });
  opened.push(raw);
  return raw;
}

function spawnDaemon(args: string[], log: string): Bun.Subprocess {
  const child = Bun.spawn(daemonCommand([...args, "--log-format", "json", "--log-level", "trace"]), { stdin: "ignore", stdout: Bun.file(`${log}.out`), stderr: Bun.file(log), env: { PATH: "/usr/sbin:/usr/bin:/sbin:/bin" } });
  children.add(child);
  return child;
}

const permissionDenied = "permission denied: the etcd user (etcd.auth.username; without one, the client certificate's CN) has no permission for this key: `fitha etcd roles` prints the roles fitha needs";

/** Everything a command printed. */
const shown = (result: RunResult) => result.stdout + result.stderr;

describe("TLS with client certificates", () => {
  test(
    "the operator commands work over TLS with the client certificate, on every plane's cluster",
    async () => {
      const config = await configFile("tls-ok", tlsSection(ca, client));
      const status = await runFitha(["status", "--config", config, "--json"]);
      expect(status.stderr).toBe("");
      expect(status.exitCode).toBe(0);
      const report = JSON.parse(status.stdout) as { planes: Array<{ plane: Plane; reachable: boolean; endpoints: string[]; cluster_id: string; error: string | null }>; state_error: string | null };
      expect(report.planes.map((p) => [p.plane, p.reachable, p.endpoints, p.error])).toEqual(planes.map((plane) => [plane, true, [etcds[plane].endpoint], null]));
      // Three clusters, not one answering for all.
      expect(new Set(report.planes.map((p) => p.cluster_id)).size).toBe(3);
      expect(report.state_error).toBeNull();

      const set = await runFitha(["config", "set", "heartbeat_interval_ms", "1500", "--config", config]);
      expect(set.stderr).toBe("");
      expect(set.exitCode).toBe(0);
      const get = await runFitha(["config", "get", "heartbeat_interval_ms", "--config", config]);
      expect(get).toEqual({ exitCode: 0, stdout: "1500\n", stderr: "" });
    },
    commandTestTimeoutMs,
  );

  test(
    "no client certificate, one of another CA, another CA trusted, or plain http: refused, naming what to fix",
    async () => {
      const refusals: Array<[string, string, "https" | "http", string]> = [
        ["no-cert", tlsSection(ca, null), "https", "the etcd server refused this client's certificate (or its lack of one): it accepts only client certificates signed by a CA it trusts (its --trusted-ca-file); set etcd.tls.cert_file and etcd.tls.key_file to one"],
        ["rogue-cert", tlsSection(ca, rogueClient), "https", "the etcd server refused this client's certificate (or its lack of one)"],
        ["wrong-ca", tlsSection(rogueCa, client), "https", "the etcd server's certificate is not signed by the CA in etcd.tls.ca_file; set it to the CA that signed the servers' certificates"],
        ["plain-http", "", "http", "if the etcd server serves TLS, its endpoints must be https:// with etcd.tls.ca_file set"],
      ];
      for (const [name, tls, scheme, hint] of refusals) {
        const config = await configFile(name, tls, scheme);
        const get = await runFitha(["config", "get", "--config", config]);
        expect({ name, exitCode: get.exitCode, stdout: get.stdout }).toEqual({ name, exitCode: 1, stdout: "" });
        expect(get.stderr).toStartWith(`fitha: etcd of the management plane: cannot get "${prefix}/settings": unreachable (`);
        expect(get.stderr).toContain(hint);
        const status = await runFitha(["status", "--config", config, "--json"]);
        expect(status.exitCode).toBe(1);
        const report = JSON.parse(status.stdout) as { planes: Array<{ reachable: boolean; error: string }> };
        for (const plane of report.planes) {
          expect(plane.reachable).toBe(false);
          expect(plane.error).toContain(hint);
        }
      }
    },
    commandTestTimeoutMs * 2,
  );
});

describe("etcd authentication over TLS", () => {
  beforeAll(async () => {
    for (const plane of planes) await enableAuth(rawClient(plane, false), rootPassword);
    const roles = new Map(clusterRoles(keys).map((role) => [role.name, role]));
    const users: Array<[EtcdRole | undefined, string]> = [
      [roles.get("fitha-operator"), operatorPassword],
      [roles.get("fitha-viewer"), operatorPassword],
      [roles.get("fitha-controller"), controllerPassword],
      [agentRole(keys, "host-a"), agentPassword],
    ];
    for (const plane of planes) {
      const root = rawClient(plane, true);
      for (const [role, password] of users) await applyRole(root, role!, plane, password);
    }
    // Heartbeats every 500 ms living 2 s (etcd's shortest lease), as in the other daemon tests.
    await kvAs("management", { name: "root", password: rootPassword }).put(keys.settings, JSON.stringify({ ...settingsToJson(defaultSettings), heartbeat_interval_ms: 500, heartbeat_ttl_ms: 2_000 }));
  }, 60_000);

  test(
    "a user with a password file works; a wrong password, no user, or too small a role fails, naming the fix; the password is never shown",
    async () => {
      const operator = await configFile("operator", tlsSection(ca, client) + authSection("fitha-operator", await passwordFile("operator", operatorPassword)));
      const runs = [
        await runFitha(["status", "--config", operator, "--json", "--log-level", "trace"]),
        await runFitha(["config", "set", "heartbeat_ttl_ms", "2500", "--config", operator, "--log-level", "trace"]),
        await runFitha(["config", "get", "--config", operator, "--json", "--log-level", "trace"]),
      ];
      for (const run of runs) expect(run.exitCode).toBe(0);
      const status = JSON.parse(runs[0]!.stdout) as { planes: Array<{ reachable: boolean }>; state_error: string | null };
      expect(status.planes.map((p) => p.reachable)).toEqual([true, true, true]);
      expect(status.state_error).toBeNull();
      expect(runs[1]!.stdout).toBe("heartbeat_ttl_ms: 2000 → 2500\n");
      // Trace-level logs were written, and none shows the password.
      expect(runs.map(shown).join("").length).toBeGreaterThan(0);
      for (const run of runs) {
        expect(shown(run)).not.toContain(operatorPassword);
        expect(shown(run)).not.toContain("PRIVATE KEY");
      }

      const wrongPassword = "wrong-Pw-55e1a0";
      const wrong = await runFitha(["config", "get", "--config", await configFile("wrong-password", tlsSection(ca, client) + authSection("fitha-operator", await passwordFile("wrong", wrongPassword))), "--log-level", "trace"]);
      expect(wrong.exitCode).toBe(1);
      expect(wrong.stderr).toContain("authentication failed, invalid user ID or password: check etcd.auth.username and the password in etcd.auth.password_file");
      expect(shown(wrong)).not.toContain(wrongPassword);

      // No user: etcd takes the client certificate's CN ("fitha-client") for one, which has no role.
      const anonymous = await runFitha(["config", "get", "--config", await configFile("no-user", tlsSection(ca, client))]);
      expect(anonymous.exitCode).toBe(1);
      expect(anonymous.stderr).toContain(permissionDenied);

      // A certificate whose CN names a user logs in as that user, no password: name certificates with care.
      const viewerCertificate = await ca.issue("fitha-viewer", "client");
      expect((await runFitha(["config", "get", "heartbeat_ttl_ms", "--config", await configFile("viewer-by-cn", tlsSection(ca, viewerCertificate))])).stdout).toBe("2500\n");

      const viewer = await configFile("viewer", tlsSection(ca, client) + authSection("fitha-viewer", await passwordFile("viewer", operatorPassword)));
      expect((await runFitha(["config", "get", "heartbeat_ttl_ms", "--config", viewer])).stdout).toBe("2500\n");
      const denied = await runFitha(["config", "set", "heartbeat_ttl_ms", "3000", "--config", viewer]);
      expect(denied.exitCode).toBe(1);
      expect(denied.stderr).toContain(permissionDenied);
      await kvAs("management", { name: "root", password: rootPassword }).put(keys.settings, JSON.stringify({ ...settingsToJson(defaultSettings), heartbeat_interval_ms: 500, heartbeat_ttl_ms: 2_000 }));
    },
    commandTestTimeoutMs * 2,
  );

  test(
    "the agent of host-a as its own user: registers, heartbeats on every plane, reports its VMs, bridges a fencing question; refused host-b's keys and the controller's",
    async () => {
      const user = { name: "fitha-agent-host-a", password: agentPassword };
      const hostDir = join(dir.path, "host-a");
      const config = await configFile(
        "host-a",
        tlsSection(ca, client) + authSection(user.name, await passwordFile("agent", agentPassword)) + `[host]\nname = "host-a"\nhypervisor = "test:///default"\nlockd_socket = "${join(hostDir, "lockd.sock")}"\n`,
      );
      const log = join(hostDir, "agent.log");
      const agent = spawnDaemon(["agent", "--config", config], log);
      const root = Object.fromEntries(planes.map((plane) => [plane, kvAs(plane, { name: "root", password: rootPassword })])) as Record<Plane, Kv>;
      try {
        await eventually("host-a registered, its heartbeat in every plane's cluster, its planes reachable, its VMs reported", async () => {
          for (const plane of planes) if ((await root[plane].get(keys.heartbeat(plane, "host-a"))) === undefined) return false;
          const reachability = await root.management.get(keys.reachability("host-a"));
          const vmStates = await root.management.getPrefix(keys.vmStatesPrefix("host-a"));
          return (await root.management.get(keys.host("host-a"))) !== undefined && reachability !== undefined && JSON.parse(reachability.value).planes.storage === true && vmStates.count > 0;
        }, daemonTimeoutMs, 100);
        // Renewed past their TTL (a refused keepalive would let them expire).
        await Bun.sleep(2_500);
        for (const plane of planes) expect(await root[plane].get(keys.heartbeat(plane, "host-a"))).toBeDefined();
        // An order, as the controller gives it: carried out, its result written, the order removed.
        const uuid = (await root.management.getPrefix(keys.vmStatesPrefix("host-a"))).entries[0]!.key.slice(keys.vmStatesPrefix("host-a").length);
        await root.management.put(keys.order("host-a", uuid), JSON.stringify({ vm: uuid, action: "stop", issuedAt: new Date().toISOString(), by: "ctl-test" }));
        await eventually("the order's result written and the order removed", async () => (await root.management.get(keys.orderResult("host-a", uuid))) !== undefined && (await root.management.get(keys.order("host-a", uuid))) === undefined, daemonTimeoutMs, 100);
        expect(JSON.parse((await root.management.get(keys.orderResult("host-a", uuid)))!.value).outcome).toBe("done");
        expect(agent.exitCode).toBeNull();
        // The recipe is enough: nothing the agent did was refused. And its log, verbose (--log-level trace), holds no password.
        const agentLog = await Bun.file(log).text();
        expect(agentLog).toContain('"level":"debug"');
        expect(agentLog).not.toContain("permission denied");
        expect(agentLog).not.toContain(agentPassword);
        expect(agentLog).not.toContain("PRIVATE KEY");

        // What host-a's user may not do: write another host's keys, or the controller's.
        const asAgent = Object.fromEntries(planes.map((plane) => [plane, kvAs(plane, user)])) as Record<Plane, Kv>;
        const refused = async (what: string, write: () => Promise<unknown>) => {
          const error = await write().then(() => undefined, (e: unknown) => e);
          expect({ what, refused: error instanceof KvError && /permission denied/.test(error.message) }).toEqual({ what, refused: true });
        };
        for (const plane of planes) await refused(`host-b's ${plane} heartbeat`, () => asAgent[plane].put(keys.heartbeat(plane, "host-b"), "{}"));
        await refused("host-b's record", () => asAgent.management.put(keys.host("host-b"), "{}"));
        await refused("host-b's reachability", () => asAgent.management.put(keys.reachability("host-b"), "{}"));
        await refused("host-b's VM states", () => asAgent.management.put(keys.vmState("host-b", uuid), "{}"));
        await refused("an order to host-b", () => asAgent.management.put(keys.order("host-b", uuid), "{}"));
        await refused("the controller election", () => asAgent.management.put(keys.election, "{}"));
        await refused("the cluster mode", () => asAgent.management.put(keys.mode, "{}"));
        await refused("a recovery request", () => asAgent.management.put(keys.recoveryRequest("host-a"), "{}"));
        await refused("the VM registry", () => asAgent.management.put(keys.vm(uuid), "{}"));
        await refused("the runtime settings", () => asAgent.management.put(keys.settings, "{}"));
        await refused("a fencing answer to host-b", () => asAgent.storage.put(keys.fencingAnswer("host-b", 1), "{}"));
        await refused("host-b's fencing events", () => asAgent.service.put(keys.fencing("host-b", 1), "{}"));
        await refused("reading every host's record", () => asAgent.management.getPrefix(keys.hostsPrefix));

        // The fencing path under the same user (the agent's FencingBridge, lockd played here): the
        // question goes out on every plane, the controller's answer (written as root) comes back,
        // and both keys are removed once lockd's question is over; lockd's notice becomes an event.
        const lockd = new (class implements LockdQuestions {
          open: number | null = null;
          readonly answers: string[] = [];
          listeners: { question?: (q: LockdQuestion) => void; notice?: (n: LockdNotice) => void } = {};
          subscribe(onQuestion: (q: LockdQuestion) => void, onNotice: (n: LockdNotice) => void) {
            this.listeners = { question: onQuestion, notice: onNotice };
            return { close: () => (this.listeners = {}) };
          }
          async openQuestion() {
            return this.open;
          }
          async answer(question: number, answer: "fence" | "no-fence") {
            this.answers.push(`${question} ${answer}`);
            this.open = null;
          }
        })();
        const bridge = new FencingBridge({ host: "host-a", kv: asAgent, keys, clock: monotonicClock, now: () => new Date(), lockd });
        try {
          lockd.open = 7;
          lockd.listeners.question!({ question: 7, vms: [uuid], reason: "renewal is late", answerWithinMs: 20_000 });
          await eventually("the fencing event on every plane", async () => (await Promise.all(planes.map((plane) => root[plane].get(keys.fencing("host-a", 7))))).every((entry) => entry !== undefined), 10_000, 50);
          await root.storage.put(keys.fencingAnswer("host-a", 7), JSON.stringify({ host: "host-a", question: 7, answer: "no-fence", reason: "test", at: new Date().toISOString(), by: "controller@test" }));
          await eventually("the answer passed to lockd and the keys removed", async () => lockd.answers.length === 1 && (await Promise.all(planes.map((plane) => root[plane].getPrefix(keys.fencingPrefix)))).every((range) => range.count === 0) && (await root.storage.get(keys.fencingAnswer("host-a", 7))) === undefined, 10_000, 50);
          expect(lockd.answers).toEqual(["7 no-fence"]);
          lockd.listeners.notice!({ event: "fenced", reason: "test", vms: [uuid], failed: [] });
          await eventually("lockd's notice as an event", async () => (await listEvents(root.management, keys, { limit: 1000 })).events.some((e) => e.record.kind === "lockd-fenced" && e.record.host === "host-a"), 10_000, 50);
        } finally {
          await bridge.stop();
        }
        // A watch of its own from a compacted revision is told so: the check reads within the prefix granted.
        const now = (await root.management.getPrefix(keys.hostsPrefix)).revision;
        await rawClient("management", true).kv.compact({ revision: now.toString(), physical: true });
        const end = await new Promise<KvWatchEnd>((resolve, reject) => {
          asAgent.management.watchPrefix(keys.ordersPrefix("host-a"), 1n, { onChanges: () => undefined, onClosed: resolve }).catch(reject);
        });
        expect(end).toEqual({ kind: "compacted" });
      } finally {
        await terminate(agent, 5_000);
        children.delete(agent);
      }
    },
    daemonTimeoutMs + 30_000,
  );

  test(
    "a controller as fitha-controller leads and judges the hosts",
    async () => {
      const controllerDir = join(dir.path, "ctl-1");
      const config = await configFile(
        "ctl-1",
        tlsSection(ca, client) + authSection("fitha-controller", await passwordFile("controller", controllerPassword)) + `[controller]\nname = "ctl-1"\nelection_ttl_ms = 2000\nprobe_interval_ms = 300\n`,
      );
      const log = join(controllerDir, "controller.log");
      const controller = spawnDaemon(["controller", "--config", config], log);
      const root = kvAs("management", { name: "root", password: rootPassword });
      try {
        await eventually("ctl-1 leads and has judged host-a", async () => {
          const election = await root.get(keys.election);
          return election !== undefined && JSON.parse(election.value).name === "ctl-1" && (await root.get(keys.hostState("host-a"))) !== undefined && (await root.get(keys.mode)) !== undefined;
        }, daemonTimeoutMs, 100);
        expect(controller.exitCode).toBeNull();
        const controllerLog = await Bun.file(log).text();
        expect(controllerLog).not.toContain("permission denied");
        expect(controllerLog).not.toContain(controllerPassword);
      } finally {
        await terminate(controller, 5_000);
        children.delete(controller);
      }
    },
    daemonTimeoutMs + 30_000,
  );
});
