/**
 * scripts/install into a temporary prefix (a staging tree): every file and directory with its
 * mode and content, the installed units accepted by `systemd-analyze verify` (offline, with
 * --root: this machine's PID 1 is not systemd, so nothing is started or reloaded), idempotence,
 * dry runs, an operator's changed configuration kept and a changed unit refused, and an
 * uninstall that leaves only the changed configuration.
 */
import { describe, expect, test } from "bun:test";
import { cp, readdir, readFile, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { fithaBinary, repoRoot } from "../helpers/fitha.ts";
import { tempDir } from "../helpers/tmp.ts";

const units = ["fitha-agent.service", "fitha-controller.service", "fitha-lockd.service", "fitha-watchdog.service"];

async function install(...args: string[]): Promise<{ exitCode: number; stdout: string; stderr: string }> {
  const child = Bun.spawn(["bash", join(repoRoot, "scripts/install"), ...args], { stdin: "ignore", stdout: "pipe", stderr: "pipe", env: { PATH: "/usr/sbin:/usr/bin:/sbin:/bin" } });
  const timer = setTimeout(() => child.kill("SIGKILL"), 60_000);
  try {
    const [stdout, stderr, exitCode] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited]);
    return { exitCode, stdout, stderr };
  } finally {
    clearTimeout(timer);
  }
}

async function sha256(path: string): Promise<string> {
  return new Bun.CryptoHasher("sha256").update(await readFile(path)).digest("hex");
}

/** Every path under `root` (relative, "/" for a directory) with its mode, and for files the content's hash and mtime. */
async function tree(root: string): Promise<Record<string, string>> {
  const entries: Record<string, string> = {};
  for (const name of await readdir(root, { recursive: true })) {
    const path = join(root, name);
    const info = await stat(path);
    const mode = (info.mode & 0o7777).toString(8).padStart(4, "0");
    if (info.isDirectory()) entries[`${name}/`] = mode;
    else entries[name] = `${mode} ${await sha256(path)} ${info.mtimeMs}`;
  }
  return entries;
}

/** The paths and modes of `tree()`, without contents. */
function modes(entries: Record<string, string>): Record<string, string> {
  return Object.fromEntries(Object.entries(entries).map(([path, value]) => [path, value.slice(0, 4)]));
}

const installedModes = {
  "etc/": "0755",
  "etc/fitha/": "0755",
  "etc/fitha/fitha.toml": "0644",
  "etc/fitha/lockd.env": "0644",
  "etc/libvirt/": "0755",
  "etc/libvirt/hooks/": "0755",
  "etc/libvirt/hooks/qemu.d/": "0755",
  "etc/libvirt/hooks/qemu.d/fitha": "0755",
  "usr/": "0755",
  "usr/local/": "0755",
  "usr/local/bin/": "0755",
  "usr/local/bin/fitha": "0755",
  "usr/local/lib/": "0755",
  "usr/local/lib/systemd/": "0755",
  "usr/local/lib/systemd/system/": "0755",
  ...Object.fromEntries(units.map((unit) => [`usr/local/lib/systemd/system/${unit}`, "0644"])),
  "var/": "0755",
  "var/lib/": "0755",
  "var/lib/fitha/": "0755",
  "var/lib/fitha/install-manifest": "0644",
  "var/lib/fitha/lockd/": "0700",
};

describe("scripts/install", () => {
  test("installs every file with its mode and content; the units pass systemd-analyze verify; a second run and a dry run change nothing", async () => {
    await using dir = await tempDir("install");
    const prefix = dir.path;

    const dryRun = await install("--prefix", prefix, "--dry-run");
    expect(dryRun.exitCode).toBe(0);
    expect(dryRun.stdout).toContain("would install /usr/local/bin/fitha (mode 0755)\n");
    expect(dryRun.stdout).toContain("would create directory /var/lib/fitha/lockd (mode 0700)\n");
    expect(dryRun.stdout).toEndWith("dry run: nothing was changed\n");
    expect(await tree(prefix)).toEqual({});

    const first = await install("--prefix", prefix);
    expect(first.stderr).toBe("");
    expect(first.exitCode).toBe(0);
    const installed = await tree(prefix);
    expect(modes(installed)).toEqual(installedModes);
    expect(await sha256(join(prefix, "usr/local/bin/fitha"))).toBe(await sha256(fithaBinary));
    for (const unit of units) expect(await readFile(join(prefix, "usr/local/lib/systemd/system", unit), "utf8")).toBe(await readFile(join(repoRoot, "scripts/systemd", unit), "utf8"));
    expect(await readFile(join(prefix, "etc/fitha/fitha.toml"), "utf8")).toBe(await readFile(join(repoRoot, "scripts/fitha.example.toml"), "utf8"));
    expect(await readFile(join(prefix, "etc/fitha/lockd.env"), "utf8")).toBe(await readFile(join(repoRoot, "scripts/systemd/lockd.env"), "utf8"));
    // The hook runs the binary where the host will have it, not where this tree is now.
    expect(await readFile(join(prefix, "etc/libvirt/hooks/qemu.d/fitha"), "utf8")).toEndWith(`\nexec '/usr/local/bin/fitha' hook qemu -- "$@"\n`);
    const manifest = (await readFile(join(prefix, "var/lib/fitha/install-manifest"), "utf8")).trimEnd().split("\n");
    expect(manifest.filter((line) => line.startsWith("file ")).map((line) => line.split(" ")[2]).sort()).toEqual(
      ["/etc/fitha/fitha.toml", "/etc/fitha/lockd.env", "/etc/libvirt/hooks/qemu.d/fitha", "/usr/local/bin/fitha", ...units.map((u) => `/usr/local/lib/systemd/system/${u}`)].sort(),
    );

    expect(await install("--prefix", prefix)).toEqual({ exitCode: 0, stdout: `nothing to do: fitha is installed in ${prefix} and unchanged\n`, stderr: "" });
    expect(await install("--prefix", prefix, "--dry-run")).toEqual({ exitCode: 0, stdout: `nothing to do: fitha is installed in ${prefix} and unchanged\n`, stderr: "" });
    expect(await tree(prefix)).toEqual(installed);

    // systemd-analyze resolves the units' dependencies under --root: give it systemd's own units there.
    await cp("/usr/lib/systemd/system", join(prefix, "usr/lib/systemd/system"), { recursive: true });
    const verify = Bun.spawnSync(["systemd-analyze", "verify", `--root=${prefix}`, ...units], { env: { PATH: "/usr/bin:/bin", SYSTEMD_LOG_COLOR: "0" } });
    // It warns about unknown keys and bad values on stderr without failing: both must be empty.
    expect({ exitCode: verify.exitCode, stdout: verify.stdout.toString(), stderr: verify.stderr.toString() }).toEqual({ exitCode: 0, stdout: "", stderr: "" });
  });

  test("a changed configuration is kept, a changed unit is refused without --force, an older install is upgraded; uninstall leaves only the changed configuration", async () => {
    await using dir = await tempDir("install-changes");
    const prefix = dir.path;
    expect((await install("--prefix", prefix)).exitCode).toBe(0);
    const config = join(prefix, "etc/fitha/fitha.toml");
    const unit = join(prefix, "usr/local/lib/systemd/system/fitha-agent.service");
    const operatorsConfig = `${await readFile(config, "utf8")}\n[host]\nname = "compute-1"\n`;
    await writeFile(config, operatorsConfig);
    await writeFile(unit, `${await readFile(unit, "utf8")}\nNice=-5\n`);
    const before = await tree(prefix);

    const refused = await install("--prefix", prefix);
    expect(refused.exitCode).toBe(1);
    expect(refused.stdout).toBe("");
    expect(refused.stderr).toBe(
      "install: /usr/local/lib/systemd/system/fitha-agent.service differs from what scripts/install put there (or it did not put it there): not replacing it without --force\ninstall: nothing was changed\n",
    );
    expect(await tree(prefix)).toEqual(before);

    const forced = await install("--prefix", prefix, "--force");
    expect(forced.exitCode).toBe(0);
    expect(forced.stdout).toContain("replace /usr/local/lib/systemd/system/fitha-agent.service (mode 0644)\n");
    expect(forced.stdout).toContain(`keep /etc/fitha/fitha.toml: changed since it was installed (the new version is ${repoRoot}/scripts/fitha.example.toml)\n`);
    expect(await readFile(unit, "utf8")).toBe(await readFile(join(repoRoot, "scripts/systemd/fitha-agent.service"), "utf8"));
    expect(await readFile(config, "utf8")).toBe(operatorsConfig);

    // As an older version installed it (content and manifest): replaced without --force.
    const lockdUnit = join(prefix, "usr/local/lib/systemd/system/fitha-lockd.service");
    const manifestPath = join(prefix, "var/lib/fitha/install-manifest");
    const older = "[Service]\nExecStart=/usr/local/bin/fitha lockd\n";
    await writeFile(lockdUnit, older);
    const olderSha = new Bun.CryptoHasher("sha256").update(older).digest("hex");
    await writeFile(manifestPath, (await readFile(manifestPath, "utf8")).replace(/^file \S+ \/usr\/local\/lib\/systemd\/system\/fitha-lockd\.service$/m, `file ${olderSha} /usr/local/lib/systemd/system/fitha-lockd.service`));
    const upgrade = await install("--prefix", prefix);
    expect(upgrade.exitCode).toBe(0);
    expect(upgrade.stdout).toStartWith("replace /usr/local/lib/systemd/system/fitha-lockd.service (mode 0644)\nkeep /etc/fitha/fitha.toml: changed since it was installed");
    expect(await readFile(lockdUnit, "utf8")).toBe(await readFile(join(repoRoot, "scripts/systemd/fitha-lockd.service"), "utf8"));

    const installed = await tree(prefix);
    const dryUninstall = await install("--prefix", prefix, "--uninstall", "--dry-run");
    expect(dryUninstall.exitCode).toBe(0);
    expect(dryUninstall.stdout).toContain("would remove /usr/local/bin/fitha\n");
    expect(dryUninstall.stdout).toContain("would remove directory /var/lib/fitha/lockd\n");
    expect(dryUninstall.stdout).toEndWith("dry run: nothing was changed\n");
    expect(await tree(prefix)).toEqual(installed);

    const uninstall = await install("--prefix", prefix, "--uninstall");
    expect(uninstall.exitCode).toBe(0);
    expect(uninstall.stderr).toBe("");
    expect(uninstall.stdout).toStartWith("keep /etc/fitha/fitha.toml: changed since it was installed\nremove /etc/fitha/lockd.env\n");
    expect(uninstall.stdout).toContain("keep /etc/fitha: not empty (fitha.toml)\n");
    expect(modes(await tree(prefix))).toEqual({ "etc/": "0755", "etc/fitha/": "0755", "etc/fitha/fitha.toml": "0644" });
    expect(await readFile(config, "utf8")).toBe(operatorsConfig);
    expect(await install("--prefix", prefix, "--uninstall")).toEqual({ exitCode: 0, stdout: "nothing to uninstall: no /var/lib/fitha/install-manifest (fitha was not installed here by scripts/install)\n", stderr: "" });
  });

  test("refuses a relative prefix, a missing one and unknown arguments, changing nothing", async () => {
    await using dir = await tempDir("install-args");
    expect(await install("--prefix", "relative/dir")).toMatchObject({ exitCode: 2, stderr: "install: --prefix must be an absolute path, not 'relative/dir'\n" });
    expect(await install("--prefix", join(dir.path, "missing"))).toMatchObject({ exitCode: 2, stderr: `install: --prefix ${join(dir.path, "missing")} is not a directory\n` });
    const unknown = await install("--prefix", dir.path, "--frobnicate");
    expect(unknown.exitCode).toBe(2);
    expect(unknown.stderr).toStartWith("install: unknown argument '--frobnicate'\nusage: scripts/install");
    expect(await tree(dir.path)).toEqual({});
  });
});
