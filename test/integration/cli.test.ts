/** The built binary as an operator meets it: help, version, config check, usage errors. */
import { describe, expect, test } from "bun:test";
import { chmod, copyFile } from "node:fs/promises";
import { join } from "node:path";
import { fithaBinary, repoRoot, runFitha } from "../helpers/fitha.ts";
import { tempDir } from "../helpers/tmp.ts";

const example = join(repoRoot, "scripts/fitha.example.toml");
/** An operator never sees a JavaScript stack trace for an expected failure. */
const stackFrame = /^\s+at /m;

describe("fitha (built binary)", () => {
  test("--help lists the commands and exits 0", async () => {
    const { exitCode, stdout, stderr } = await runFitha(["--help"]);
    expect(exitCode).toBe(0);
    expect(stderr).toBe("");
    expect(stdout).toContain("Usage: fitha <command>");
    for (const command of ["status", "events", "alarms", "maintenance", "strategy", "vm", "tasks", "lockd", "agent", "controller", "lease", "watchdog", "doctor", "config", "etcd", "version"]) expect(stdout).toMatch(new RegExp(`^  ${command} `, "m"));
    expect(stdout).not.toContain("\u001b["); // not a terminal: no colour codes
  });

  test("every command has --help", async () => {
    for (const words of [["version"], ["config"], ["config", "check"], ["config", "get"], ["config", "set"], ["status"], ["events"], ["alarms"], ["alarms", "list"], ["alarms", "test"], ["maintenance"], ["maintenance", "on"], ["maintenance", "off"], ["maintenance", "status"], ["strategy"], ["strategy", "show"], ["strategy", "check"], ["strategy", "set"], ["strategy", "default"], ["vm"], ["vm", "add"], ["vm", "ha"], ["vm", "list"], ["vm", "show"], ["vm", "remove"], ["tasks"], ["lease"], ["lease", "format"], ["lease", "dump"], ["lease", "check"], ["lease", "acquire"], ["lease", "release"], ["lease", "inquire"], ["lease", "status"], ["lease", "answer"], ["lockd"], ["agent"], ["controller"], ["watchdog"], ["hook"], ["hook", "qemu"], ["hook", "install"], ["doctor"], ["etcd"], ["etcd", "roles"]]) {
      const { exitCode, stdout } = await runFitha([...words, "--help"]);
      expect({ words, exitCode }).toEqual({ words, exitCode: 0 });
      expect(stdout).toContain(`Usage: fitha ${words.join(" ")}`);
    }
    // Some 40 starts of the binary in a row (~0.3 s each, more on a loaded machine).
  }, 30_000);

  test("version names the release, the git commit of the build and the Bun runtime", async () => {
    const head = (await Bun.$`git -C ${repoRoot} rev-parse --short=12 HEAD`.nothrow().quiet()).stdout.toString().trim();
    const json = await runFitha(["version", "--json"]);
    expect(json.exitCode).toBe(0);
    const info = JSON.parse(json.stdout);
    const version = (await Bun.file(join(repoRoot, "package.json")).json()).version;
    expect(info).toEqual({ version, commit: expect.any(String), bun: Bun.version });
    // Built from this checkout: the commit is HEAD, possibly marked dirty (or unknown outside git).
    expect(info.commit).toMatch(head === "" ? /^unknown$/ : new RegExp(`^${head}(-dirty)?$`));
    const text = await runFitha(["version"]);
    expect(text.stdout).toBe(`fitha ${version} (commit ${info.commit}, bun ${Bun.version})\n`);
    expect(await runFitha(["--version"])).toEqual(text);
  });

  test("runs from a directory without bun or node_modules, with an empty environment", async () => {
    await using dir = await tempDir("cli-standalone");
    const binary = join(dir.path, "fitha");
    await copyFile(fithaBinary, binary);
    await chmod(binary, 0o755);
    await copyFile(example, join(dir.path, "fitha.toml"));
    for (const args of [["--help"], ["version"], ["config", "check", "fitha.toml"]]) {
      const result = await runFitha(args, { binary, cwd: dir.path, env: {} });
      expect({ args, exitCode: result.exitCode, stderr: result.stderr }).toEqual({ args, exitCode: 0, stderr: "" });
    }
  });

  test("config check accepts the example and reports the effective configuration as JSON", async () => {
    const text = await runFitha(["config", "check", example]);
    expect(text).toEqual({ exitCode: 0, stdout: `${example}: ok\n`, stderr: "" });
    const json = await runFitha(["config", "check", example, "--json"]);
    expect(json.exitCode).toBe(0);
    const document = JSON.parse(json.stdout);
    expect(document.ok).toBe(true);
    expect(document.file).toBe(example);
    expect(document.config.etcd.dial_timeout_ms).toBe(3000);
  });

  test("a broken config gets one line per problem naming file and key, exit 2, no stack trace", async () => {
    await using dir = await tempDir("cli-config");
    const file = join(dir.path, "fitha.toml");
    await Bun.write(file, (await Bun.file(example).text()).replace("dial_timeout_ms = 3000", 'dial_timeout_ms = "3s"'));
    const result = await runFitha(["config", "check", file]);
    expect(result.exitCode).toBe(2);
    expect(result.stdout).toBe("");
    expect(result.stderr).toBe(`fitha: ${file}: etcd.dial_timeout_ms: expected an integer from 100 to 60000, got "3s"\n`);

    const json = await runFitha(["config", "check", file, "--json"]);
    expect(json.exitCode).toBe(2);
    expect(JSON.parse(json.stdout)).toEqual({
      file,
      ok: false,
      problems: [{ key: "etcd.dial_timeout_ms", message: 'expected an integer from 100 to 60000, got "3s"' }],
    });
  });

  test("syntax errors and missing files are one line too", async () => {
    await using dir = await tempDir("cli-config");
    const file = join(dir.path, "fitha.toml");
    await Bun.write(file, '[log]\nlevel = "info"\n[etcd\n');
    const syntax = await runFitha(["config", "check", file]);
    expect(syntax.exitCode).toBe(2);
    expect(syntax.stderr).toMatch(new RegExp(`^fitha: ${file}:3: invalid TOML: .+\\n$`));
    const missing = await runFitha(["config", "check", join(dir.path, "nope.toml")]);
    expect(missing.exitCode).toBe(2);
    expect(missing.stderr).toBe(`fitha: ${join(dir.path, "nope.toml")}: cannot read config file (no such file); set --config or FITHA_CONFIG\n`);
    const missingJson = await runFitha(["config", "check", join(dir.path, "nope.toml"), "--json"]);
    expect(missingJson.exitCode).toBe(2);
    expect(JSON.parse(missingJson.stdout).problems[0].key).toBe("");
  });

  test("a file the caller may not read is reported as such (as an unprivileged user)", async () => {
    await using dir = await tempDir("cli-config");
    await chmod(dir.path, 0o755);
    const file = join(dir.path, "fitha.toml");
    await copyFile(example, file);
    await chmod(file, 0o600);
    // setpriv drops to nobody, for whom mode 0600 of root's file means no access (root reads anything).
    const child = Bun.spawn(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", fithaBinary, "config", "check", file], {
      stdout: "pipe",
      stderr: "pipe",
      env: {},
    });
    expect(await child.exited).toBe(2);
    expect(await new Response(child.stderr).text()).toBe(`fitha: ${file}: cannot read config file (permission denied)\n`);
  });

  test("FITHA_CONFIG names the file when --config is absent; --config wins", async () => {
    await using dir = await tempDir("cli-config");
    const bad = join(dir.path, "bad.toml");
    await Bun.write(bad, "nonsense = 1\n");
    const viaEnv = await runFitha(["config", "check"], { env: { FITHA_CONFIG: example } });
    expect(viaEnv).toEqual({ exitCode: 0, stdout: `${example}: ok\n`, stderr: "" });
    const flagWins = await runFitha(["config", "check", "--config", bad], { env: { FITHA_CONFIG: example } });
    expect(flagWins.exitCode).toBe(2);
    expect(flagWins.stderr).toContain(`${bad}: nonsense: unknown key`);
  });

  test("usage errors name the problem and exit 2", async () => {
    const cases: Array<[string[], string]> = [
      [["frobnicate"], 'fitha: unknown command "frobnicate" (commands: status, events, alarms, maintenance, strategy, vm, tasks, lockd, agent, controller, lease, watchdog, hook, doctor, config, etcd, version)\n'],
      [["version", "--josn"], "fitha: version: unknown option --josn (options: --json, --log-level, --log-format)\n"],
      [["version", "surplus"], 'fitha: version: unexpected argument "surplus" (takes no arguments)\n'],
      [["status", "--config"], "fitha: status: option --config needs a value\n"],
      [["doctor", "--host-id", "0"], 'fitha: doctor: --host-id must be a positive whole number, not "0"\n'],
      [["version", "--log-level", "loud"], 'fitha: version: option --log-level must be one of error, warn, info, debug, trace, not "loud"\n'],
      [["config", "check", "a.toml", "b.toml"], 'fitha: config check: unexpected argument "b.toml" (takes FILE)\n'],
    ];
    for (const [args, stderr] of cases) {
      const result = await runFitha(args);
      expect({ args, exitCode: result.exitCode, stderr: result.stderr, stdout: result.stdout }).toEqual({ args, exitCode: 2, stderr, stdout: "" });
    }
    const group = await runFitha(["config"]);
    expect(group.exitCode).toBe(2);
    expect(group.stderr).toContain("Usage: fitha config <command>");
    expect(group.stderr).toEndWith("fitha: config: missing command\n");
    expect(group.stderr).not.toMatch(stackFrame);
  });
});
