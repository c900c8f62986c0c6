/** `fitha hook install` into a temp hooks directory, and the script it installs run as libvirt would. */
import { describe, expect, test } from "bun:test";
import { existsSync } from "node:fs";
import { chmod, copyFile, mkdir, readFile, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { fithaBinary, runFitha } from "../helpers/fitha.ts";
import { tempDir } from "../helpers/tmp.ts";

const reminder = "libvirt looks for hooks only when it starts: restart libvirtd (or virtqemud) before relying on this one\n";

describe("fitha hook install", () => {
  test("installs qemu.d/fitha once, is idempotent, refuses a changed file without --force, --dry-run writes nothing", async () => {
    await using dir = await tempDir("hook-install");
    const hooks = join(dir.path, "hooks");
    const script = join(hooks, "qemu.d", "fitha");

    const dryRun = await runFitha(["hook", "install", "--dir", hooks, "--dry-run"]);
    expect(dryRun.exitCode).toBe(0);
    expect(dryRun.stdout).toStartWith(`would install ${script} (mode 0755):\n  #!/bin/sh\n`);
    expect(dryRun.stdout).toEndWith(`  exec '${fithaBinary}' hook qemu -- "$@"\n${reminder}`);
    expect(existsSync(hooks)).toBe(false);

    const first = await runFitha(["hook", "install", "--dir", hooks]);
    expect(first).toEqual({ exitCode: 0, stdout: dryRun.stdout.replace("would install", "installed"), stderr: "" });
    expect((await stat(script)).mode & 0o777).toBe(0o755);
    const installed = await readFile(script, "utf8");
    expect(installed).toStartWith("#!/bin/sh\n");
    expect(installed).toEndWith(`\nexec '${fithaBinary}' hook qemu -- "$@"\n`);

    expect(await runFitha(["hook", "install", "--dir", hooks])).toEqual({ exitCode: 0, stdout: `${script} is already installed; nothing to do\n`, stderr: "" });

    await writeFile(script, "#!/bin/sh\n# edited by hand\n");
    for (const extra of [[], ["--dry-run"]]) {
      const refused = await runFitha(["hook", "install", "--dir", hooks, ...extra]);
      expect(refused).toEqual({ exitCode: 1, stdout: "", stderr: `fitha: ${script} exists with other content; not replacing it without --force (--dry-run shows what would be written)\n` });
    }
    expect(await readFile(script, "utf8")).toBe("#!/bin/sh\n# edited by hand\n");
    const forced = await runFitha(["hook", "install", "--dir", hooks, "--force"]);
    expect(forced.exitCode).toBe(0);
    expect(forced.stdout).toStartWith(`replaced ${script} (mode 0755):\n`);
    expect(forced.stdout).not.toContain(reminder);
    expect(await readFile(script, "utf8")).toBe(installed);
  });

  test("the installed script runs fitha with libvirt's arguments and stdin", async () => {
    await using dir = await tempDir("hook-script");
    const hooks = join(dir.path, "hooks");
    expect((await runFitha(["hook", "install", "--dir", hooks])).exitCode).toBe(0);
    const script = join(hooks, "qemu.d", "fitha");
    // A domain without fitha's metadata: the hook lets it start without asking lockd.
    const child = Bun.spawn([script, "-odd-name", "prepare", "begin", "-"], {
      stdin: new Blob(["<domain type='kvm'><name>-odd-name</name><uuid>6f1c8a3e-2b7d-4c1e-9a55-0d3b2f4e8c71</uuid></domain>\n"]),
      stdout: "pipe",
      stderr: "pipe",
      env: { PATH: "/usr/bin:/bin" },
    });
    const timer = setTimeout(() => child.kill("SIGKILL"), 30_000);
    try {
      const [stdout, stderr, exitCode] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited]);
      expect({ exitCode, stdout, stderr }).toEqual({ exitCode: 0, stdout: "", stderr: "" });
    } finally {
      clearTimeout(timer);
    }
  });

  test("a binary the hook could not run is refused", async () => {
    await using dir = await tempDir("hook-binary");
    const hooks = join(dir.path, "hooks");
    expect(await runFitha(["hook", "install", "--dir", hooks, "--binary", "dist/fitha"])).toEqual({
      exitCode: 2,
      stdout: "",
      stderr: "fitha: --binary dist/fitha: must be an absolute path (libvirt runs hooks with a minimal PATH)\n",
    });
    const missing = join(dir.path, "no-such-fitha");
    expect(await runFitha(["hook", "install", "--dir", hooks, "--binary", missing])).toEqual({
      exitCode: 1,
      stdout: "",
      stderr: `fitha: ${missing}: not an executable file; the hook would fail every domain start\n`,
    });
    expect(existsSync(hooks)).toBe(false);
  });

  test("--root installs into a staging tree: the hook dir and the binary's check under it, the script naming the binary as the host sees it", async () => {
    await using dir = await tempDir("hook-root");
    const root = join(dir.path, "root");
    const notThere = await runFitha(["hook", "install", "--root", root, "--binary", "/usr/local/bin/fitha"]);
    expect(notThere).toEqual({ exitCode: 1, stdout: "", stderr: `fitha: ${root}/usr/local/bin/fitha: not an executable file; the hook would fail every domain start\n` });
    await mkdir(join(root, "usr/local/bin"), { recursive: true });
    await copyFile(fithaBinary, join(root, "usr/local/bin/fitha"));
    await chmod(join(root, "usr/local/bin/fitha"), 0o755);
    const result = await runFitha(["hook", "install", "--root", root, "--binary", "/usr/local/bin/fitha"]);
    expect(result.exitCode).toBe(0);
    const script = join(root, "etc/libvirt/hooks/qemu.d/fitha");
    expect(result.stdout).toStartWith(`installed ${script} (mode 0755):\n`);
    expect(await readFile(script, "utf8")).toEndWith(`\nexec '/usr/local/bin/fitha' hook qemu -- "$@"\n`);
  });
});
