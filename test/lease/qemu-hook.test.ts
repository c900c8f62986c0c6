/**
 * `fitha hook qemu` as libvirt runs it (the built binary, domain XML on stdin) against real
 * lockd processes on a real lease file: two hosts, one HA domain, its lease guarding its start.
 */
import { afterEach, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { runFitha, type RunResult } from "../helpers/fitha.ts";
import { formatLeaseFile, killStartedLockds, lockdHost, startLockd } from "../helpers/lockd.ts";
import { tempDir } from "../helpers/tmp.ts";

afterEach(killStartedLockds);

const uuid = "6f1c8a3e-2b7d-4c1e-9a55-0d3b2f4e8c71";
const slot = 3;
const haMetadata = `<fitha:lease xmlns:fitha="https://fitha.dev/xmlns/lease/1" slot="${slot}"/>`;

/** A domain "web-1" as libvirt passes it to the hook, with `metadata` in its <metadata>. */
function domainXml(metadata: string | undefined): string {
  return [
    "<domain type='kvm'>",
    "  <name>web-1</name>",
    `  <uuid>${uuid}</uuid>`,
    ...(metadata === undefined ? [] : ["  <metadata>", `    ${metadata}`, "  </metadata>"]),
    "  <memory unit='KiB'>1048576</memory>",
    "</domain>",
    "",
  ].join("\n");
}

/** The hook as the installed script runs it: libvirt's four arguments after `--`. */
function hook(socket: string, event: string, xml: string, options: string[] = []): Promise<RunResult> {
  const [op = "", subop = "", extra = "-"] = event.split(" ");
  return runFitha(["hook", "qemu", "--socket", socket, ...options, "--", "web-1", op, subop, extra], { stdin: xml });
}

async function ownerHostId(socket: string): Promise<number | null> {
  const result = await runFitha(["lease", "inquire", "--slot", String(slot), "--socket", socket, "--json"]);
  expect(result.exitCode).toBe(0);
  return (JSON.parse(result.stdout) as { owner_host_id: number | null }).owner_host_id;
}

describe("fitha hook qemu", () => {
  test("the lease guards the start: granted on one host, refused on the other (owner named), freed by release end", async () => {
    await using dir = await tempDir("hook-two-hosts");
    await formatLeaseFile(dir);
    const [a, b] = [lockdHost(dir, 1), lockdHost(dir, 2)];
    await Promise.all([startLockd(a), startLockd(b)]);
    const xml = domainXml(haMetadata);

    expect(await hook(a.socket, "prepare begin", xml)).toEqual({ exitCode: 0, stdout: `web-1: lease of ${uuid} acquired (slot 3, version 1)\n`, stderr: "" });
    expect(await hook(b.socket, "prepare begin", xml)).toEqual({
      exitCode: 3,
      stdout: "",
      stderr: `fitha: hook qemu: refusing to start "web-1": lease of ${uuid} is held by "host-1" (host id 1), generation 1\n`,
    });
    // libvirt runs "release end" after a start it refused, too: the lease stays with its owner.
    expect(await hook(b.socket, "release end failed", xml)).toEqual({ exitCode: 0, stdout: `web-1: lease of ${uuid} was not held by this host (slot 3)\n`, stderr: "" });
    expect(await ownerHostId(b.socket)).toBe(1);

    expect(await hook(a.socket, "release end shutdown", xml)).toEqual({ exitCode: 0, stdout: `web-1: lease of ${uuid} released (slot 3)\n`, stderr: "" });
    expect(await hook(b.socket, "prepare begin", xml)).toEqual({ exitCode: 0, stdout: `web-1: lease of ${uuid} acquired (slot 3, version 2)\n`, stderr: "" });
    expect(await ownerHostId(a.socket)).toBe(2);
    expect((await hook(a.socket, "prepare begin", xml)).exitCode).toBe(3);
  }, 60_000);

  test("a domain without fitha's metadata, and every other event, exit 0 without asking lockd", async () => {
    const nowhere = "/nonexistent/fitha-test/lockd.sock";
    const silent = { exitCode: 0, stdout: "", stderr: "" };
    expect(await hook(nowhere, "prepare begin", domainXml(undefined))).toEqual(silent);
    expect(await hook(nowhere, "release end", domainXml(undefined))).toEqual(silent);
    // Nothing on stdout: for migrate and restore, libvirt takes output as a new domain XML.
    for (const event of ["start begin", "started begin", "stopped end", "migrate begin", "restore begin", "reconnect begin", "attach begin"]) {
      expect({ event, ...(await hook(nowhere, event, domainXml(haMetadata))) }).toEqual({ event, ...silent });
    }
  });

  test("malformed metadata, or XML that is not this domain's, refuses the start and names the problem", async () => {
    const nowhere = "/nonexistent/fitha-test/lockd.sock";
    expect(await hook(nowhere, "prepare begin", domainXml(`<fitha:lease xmlns:fitha="https://fitha.dev/xmlns/lease/1" slot="twelve"/>`))).toEqual({
      exitCode: 2,
      stdout: "",
      stderr: `fitha: hook qemu: refusing to start "web-1": <fitha:lease> slot "twelve" is not a whole number\n`,
    });
    const other = await hook(nowhere, "prepare begin", domainXml(haMetadata).replace("web-1", "web-2"));
    expect(other).toEqual({ exitCode: 1, stdout: "", stderr: `fitha: hook qemu: refusing to start "web-1": stdin holds the XML of domain "web-2", not of "web-1"\n` });
    const empty = await hook(nowhere, "prepare begin", "");
    expect(empty).toEqual({ exitCode: 1, stdout: "", stderr: `fitha: hook qemu: refusing to start "web-1": stdin holds no domain XML (libvirt passes the domain's XML there)\n` });
  });

  test("lockd unreachable or silent: the start is refused (the safe side), a release says the lease is still held", async () => {
    await using dir = await tempDir("hook-no-lockd");
    const xml = domainXml(haMetadata);
    const missing = join(dir.path, "missing.sock");
    const safeSide = "; refusing is the safe side: a domain started without its lease could run on two hosts\n";
    expect(await hook(missing, "prepare begin", xml)).toEqual({
      exitCode: 1,
      stdout: "",
      stderr: `fitha: hook qemu: refusing to start "web-1": cannot reach lockd at ${missing} (is it running?)${safeSide}`,
    });
    expect(await hook(missing, "release end", xml)).toEqual({
      exitCode: 1,
      stdout: "",
      stderr: `fitha: hook qemu: lease of "web-1" not released: cannot reach lockd at ${missing} (is it running?); this host keeps the lease until \`fitha lease release ${uuid} --slot 3\`\n`,
    });
    // A socket that accepts and never answers: the request's deadline ends the wait.
    const silentPath = join(dir.path, "silent.sock");
    const silent = Bun.listen({ unix: silentPath, socket: { data() {} } });
    try {
      const started = Date.now();
      const refused = await hook(silentPath, "prepare begin", xml, ["--timeout-ms", "300"]);
      expect(refused).toEqual({ exitCode: 1, stdout: "", stderr: `fitha: hook qemu: refusing to start "web-1": lockd at ${silentPath} did not answer within 300 ms${safeSide}` });
      expect(Date.now() - started).toBeLessThan(10_000);
    } finally {
      silent.stop(true);
    }
  });
});
