/**
 * Who may use lockd's socket: root and lockd's own user, or a configured group — enforced by the
 * file system and, behind it, by the kernel's record of the peer (SO_PEERCRED). The client runs
 * as nobody (setpriv; these tests run as root, as CI does), from a copy of the binary in the
 * test's own directory so that no path outside it needs to be readable by nobody.
 */
import { afterEach, describe, expect, test } from "bun:test";
import { chmod, copyFile, stat } from "node:fs/promises";
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
