/**
 * The host id hand-over (src/agent/host-id-file.ts): `fitha agent --host-id-file` writes the id
 * etcd allocated to its host, and `fitha lockd --host-id-file` joins the lockspace under it, the
 * built binaries against a real etcd and a real lease file. Before the agent has written it lockd
 * exits 1 (systemd starts it again); a damaged file or both flags are refused with exit 2.
 */
import { afterEach, expect, test } from "bun:test";
import { join } from "node:path";
import { readHostIdFile, writeHostIdFile } from "../../src/agent/host-id-file.ts";
import { writeConfig } from "../helpers/config.ts";
import { startEtcd } from "../helpers/etcd.ts";
import { eventually } from "../helpers/eventually.ts";
import { daemonCommand, runFitha } from "../helpers/fitha.ts";
import { formatLeaseFile, killStartedLockds, lockdHost, startLockd } from "../helpers/lockd.ts";
import { terminate } from "../helpers/terminate.ts";
import { tempDir } from "../helpers/tmp.ts";

afterEach(killStartedLockds);

test("the agent writes the id etcd gave its host; lockd joins under it, and exits 1 until it is there", async () => {
  await using dir = await tempDir("host-id-handover");
  await using etcd = await startEtcd({ name: "host-id-handover" });
  await formatLeaseFile(dir);
  const idFile = join(dir.path, "host-id");
  // lockd as the unit starts it: --host-id-file instead of --host-id.
  const h = lockdHost(dir, 1);
  const at = h.args.indexOf("--host-id");
  h.args.splice(at, 2, "--host-id-file", idFile);
  const early = await runFitha(h.args);
  expect(early.exitCode).toBe(1);
  expect(early.stderr).toContain(`no host id yet: ${idFile} does not exist (fitha agent writes it once it has registered this host`);

  // Another host registered first: this one gets id 2 from etcd, not 1.
  const prefix = "/handover";
  const configFor = async (name: string) =>
    writeConfig(join(dir.path), { management: etcd.endpoint, prefix, extra: `[host]\nname = "${name}"\nhypervisor = "test:///default"\nlockd_socket = "${join(dir.path, `${name}.sock`)}"\n` });
  const first = Bun.spawn(daemonCommand(["agent", "--config", await configFor("host-first"), "--host-id-file", join(dir.path, "first-id")]), { stdout: "ignore", stderr: "ignore" });
  try {
    await eventually("host-first registered", async () => (await readHostIdFile(join(dir.path, "first-id")).catch(() => 0)) === 1, 15_000, 50);
  } finally {
    await terminate(first, 5_000);
  }
  const agent = Bun.spawn(daemonCommand(["agent", "--config", await configFor("host-second"), "--host-id-file", idFile]), { stdout: "ignore", stderr: "ignore" });
  try {
    await eventually("the host id file", async () => (await readHostIdFile(idFile).catch(() => 0)) !== 0, 15_000, 50);
    expect(await Bun.file(idFile).text()).toBe("2\n");
    const status = JSON.parse((await runFitha(["status", "--json", "--config", await configFor("host-second")])).stdout) as { state: { hosts: Array<{ name: string; host_id: number }> } };
    expect(status.state.hosts.find((host) => host.name === "host-second")?.host_id).toBe(2);
    await startLockd(h);
    const lease = JSON.parse((await runFitha(["lease", "status", "--socket", h.socket, "--json"])).stdout) as { host_id: number };
    expect(lease.host_id).toBe(2);
  } finally {
    await terminate(agent, 5_000);
  }
}, 60_000);

test("a damaged host id file, or both --host-id and --host-id-file: exit 2, naming the problem", async () => {
  await using dir = await tempDir("host-id-bad");
  await formatLeaseFile(dir);
  const idFile = join(dir.path, "host-id");
  await Bun.write(idFile, "seven\n");
  const h = lockdHost(dir, 1);
  const at = h.args.indexOf("--host-id");
  const withFile = h.args.toSpliced(at, 2, "--host-id-file", idFile);
  const damaged = await runFitha(withFile);
  expect(damaged.exitCode).toBe(2);
  expect(damaged.stderr).toContain(`${idFile}: expected a host id (a positive whole number on one line), found "seven\\n"`);
  const both = await runFitha([...h.args, "--host-id-file", idFile]);
  expect(both).toMatchObject({ exitCode: 2, stderr: "fitha: lockd: give --host-id N or --host-id-file FILE (one of them)\n" });
  // Written again only when it changed (a restarted agent leaves a good file alone).
  expect(await writeHostIdFile(idFile, 4)).toBe("written");
  expect(await writeHostIdFile(idFile, 4)).toBe("unchanged");
  expect(await readHostIdFile(idFile)).toBe(4);
}, 30_000);
