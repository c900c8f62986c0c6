/**
 * lockd refuses to start when its socket's directory or its state directory is not its own.
 * Who may use lockd's socket: root and lockd's own user, or a configured group — enforced by the
 * file system and, behind it, by the kernel's record of the peer (SO_PEERCRED). The client runs
 * as nobody (setpriv; these tests run as root, as CI does), from a copy of the binary in the
 * test's own directory so that no path outside it needs to be readable by nobody.
 */
import { afterEach, describe, expect, test } from "bun:test";
import { chmod, chown, copyFile, mkdir, stat } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fithaBinary, runFitha } from "../helpers/fitha.ts";
import { formatLeaseFile, killStartedLockds, lockdHost, startLockd } from "../helpers/lockd.ts";
import { tempDir, type TempDir } from "../helpers/tmp.ts";

const nobody = 65534;

afterEach(killStartedLockds);

/** `fitha lease status` on `socket` as nobody:nogroup (no supplementary groups). */
async function statusAsNobody(dir: TempDir, socket: string): Promise<{ exitCode: number; stdout: string; stderr: string }> {
  const binary = join(dir.path, "fitha");
  await copyFile(fithaBinary, binary);
  await chmod(binary, 0o755);
  const child = Bun.spawn(["setpriv", `--reuid=${nobody}`, `--regid=${nobody}`, "--clear-groups", "--", binary, "lease", "status", "--socket", socket, "--json"], {
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
    env: { PATH: "/usr/bin:/bin" },
  });
  const [stdout, stderr, exitCode] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited]);
  return { exitCode, stdout, stderr };
}

describe.skipIf(process.getuid?.() !== 0)("lockd socket access (needs root)", () => {
  test("default: socket 0600 in a 0700 directory; another user cannot even connect", async () => {
    await using dir = await tempDir("lockd-socket-mode");
    await chmod(dir.path, 0o755);
    await formatLeaseFile(dir);
    const h = lockdHost(dir, 1);
    await startLockd(h);
    expect((await stat(h.socket)).mode & 0o777).toBe(0o600);
    expect((await stat(dirname(h.socket))).mode & 0o777).toBe(0o700);
    const result = await statusAsNobody(dir, h.socket);
    expect(result.exitCode).toBe(1);
    expect(result.stderr).toContain(`cannot reach lockd at ${h.socket}`);
  });

  test("a socket whose mode was loosened still refuses another user, by its kernel-reported uid; root is served", async () => {
    await using dir = await tempDir("lockd-socket-peer");
    await chmod(dir.path, 0o755);
    await formatLeaseFile(dir);
    const h = lockdHost(dir, 1);
    await startLockd(h);
    await chmod(dirname(h.socket), 0o777);
    await chmod(h.socket, 0o666);
    const result = await statusAsNobody(dir, h.socket);
    expect(result.exitCode).toBe(1);
    expect(result.stderr).toContain(`uid ${nobody} (pid `);
    expect(result.stderr).toContain("may not use lockd's socket: only root");
    expect((await runFitha(["lease", "status", "--socket", h.socket, "--json"])).exitCode).toBe(0);
  });

  test("--socket-group: the group's members may use it (socket 0660, directory 0750, both of that group)", async () => {
    await using dir = await tempDir("lockd-socket-group");
    await chmod(dir.path, 0o755);
    await formatLeaseFile(dir);
    const h = lockdHost(dir, 1);
    h.args.splice(1, 0, "--socket-group", String(nobody));
    await startLockd(h);
    const [socketStat, dirStat] = await Promise.all([stat(h.socket), stat(dirname(h.socket))]);
    expect({ mode: socketStat.mode & 0o777, gid: socketStat.gid }).toEqual({ mode: 0o660, gid: nobody });
    expect({ mode: dirStat.mode & 0o777, gid: dirStat.gid }).toEqual({ mode: 0o750, gid: nobody });
    const result = await statusAsNobody(dir, h.socket);
    expect(result.stderr).toBe("");
    expect(result.exitCode).toBe(0);
    expect(JSON.parse(result.stdout)).toMatchObject({ host_id: 1, phase: "ok" });
  });
});

describe.skipIf(process.getuid?.() !== 0)("lockd's directories must be its own (needs root)", () => {
  test("refuses a state dir or socket dir writable by others or its group, or owned by another user, naming the path, mode and fix; a restart after the fix starts", async () => {
    await using dir = await tempDir("lockd-private-dirs");
    await formatLeaseFile(dir);
    const h = lockdHost(dir, 1);
    const socketDir = dirname(h.socket);
    await mkdir(h.stateDir, { mode: 0o700 });
    await mkdir(socketDir, { mode: 0o700 });

    await chmod(h.stateDir, 0o777);
    let result = await runFitha(h.args);
    expect(result.exitCode).toBe(2);
    expect(result.stderr).toContain(`lockd: state directory ${h.stateDir} has mode 0777: writable by its group and others; another user could replace what lockd keeps there. Fix: chown root ${h.stateDir} && chmod go-w ${h.stateDir}`);
    await chmod(h.stateDir, 0o700);

    await chmod(socketDir, 0o770);
    result = await runFitha(h.args);
    expect(result.exitCode).toBe(2);
    expect(result.stderr).toContain(`lockd: socket directory ${socketDir} has mode 0770: writable by its group;`);
    await chmod(socketDir, 0o700);

    await chown(socketDir, nobody, nobody);
    result = await runFitha(h.args);
    expect(result.exitCode).toBe(2);
    expect(result.stderr).toContain(`lockd: socket directory ${socketDir} is owned by uid ${nobody}, not root;`);
    expect(result.stderr).toContain(`Fix: chown root ${socketDir} && chmod go-w ${socketDir}`);
    // Refused before doing anything: no socket, no state.
    expect(await Bun.file(h.socket).exists()).toBe(false);
    expect(await Bun.file(join(h.stateDir, "state.json")).exists()).toBe(false);

    await chown(socketDir, 0, 0);
    await startLockd(h);
  });
});
