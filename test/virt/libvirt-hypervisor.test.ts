/**
 * LibvirtHypervisor on real libvirt through bun:ffi, no mocks: the in-process test driver
 * (test:///default, and test:///path/node.xml with domains of our own), a private libvirtd whose
 * test-driver state several connections and processes share, and child processes for what only a
 * whole process shows (nothing on stderr, exiting on its own, libvirt.so.0 missing).
 * The behaviour shared with MemoryHypervisor is in hypervisor-contract.test.ts.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { HypervisorError } from "../../src/virt/hypervisor.ts";
import { LibvirtHypervisor } from "../../src/virt/libvirt-hypervisor.ts";
import { domainXml, startLibvirtd, type LocalLibvirtd } from "../helpers/libvirtd.ts";
import { tempDir } from "../helpers/tmp.ts";

const libvirtHypervisorModule = join(import.meta.dir, "../../src/virt/libvirt-hypervisor.ts");
const childTimeoutMs = 10_000;

/** Runs `code` (an ES module body; `LibvirtHypervisor` is imported) in a child bun, bounded by childTimeoutMs. */
async function runChild(code: string, wrapper: string[] = []): Promise<{ exitCode: number | null; stdout: string; stderr: string }> {
  const source = `import { LibvirtHypervisor } from ${JSON.stringify(libvirtHypervisorModule)};\n${code}`;
  const child = Bun.spawn([...wrapper, process.execPath, "-e", source], { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  const timer = setTimeout(() => child.kill("SIGKILL"), childTimeoutMs);
  try {
    const [stdout, stderr] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text()]);
    await child.exited;
    return { exitCode: child.exitCode, stdout, stderr };
  } finally {
    clearTimeout(timer);
  }
}

describe("test:///default", () => {
  let hypervisor: LibvirtHypervisor;
  beforeAll(async () => {
    hypervisor = await LibvirtHypervisor.open("test:///default");
  });
  afterAll(() => hypervisor.close());

  test("holds the driver's default domain, running, found by name and by UUID", async () => {
    const domains = await hypervisor.listDomains();
    const builtIn = domains.find((domain) => domain.name === "test");
    expect(builtIn).toEqual({ name: "test", uuid: "6695eb01-f6a4-8304-79aa-97f2502e193f", state: "running" });
    expect(await hypervisor.lookup("test")).toEqual(builtIn);
    expect(await hypervisor.lookup(builtIn!.uuid)).toEqual(builtIn);
    expect(hypervisor.uri).toBe("test:///default");
  });

  test("errors carry libvirt's message and the LibvirtError behind it", async () => {
    const error = await hypervisor.start("no-such-vm").catch((e: unknown) => e);
    expect(error).toBeInstanceOf(HypervisorError);
    expect((error as HypervisorError).message).toBe('cannot start domain "no-such-vm" on test:///default: Domain not found');
    expect((error as HypervisorError).cause).toMatchObject({ name: "LibvirtError", call: "virDomainLookupByName", code: 42 });

    const invalid = await hypervisor.define("<domain type='test'><name>half</name></domain>").catch((e: unknown) => e);
    expect(invalid).toBeInstanceOf(HypervisorError);
    expect((invalid as HypervisorError).message).toBe('cannot define domain "half" on test:///default: XML error: an os <type> must be specified');
    expect((invalid as HypervisorError).cause).toMatchObject({ call: "virDomainDefineXML", code: 27 });
  });
});

describe("test:///path/node.xml", () => {
  test("serves the domains and the node of the file, and a missing file fails to connect", async () => {
    await using dir = await tempDir("libvirt-node");
    const uuid = "4dea22b3-1d52-d8f3-2516-782e98ab3fa0";
    const nodeXml = join(dir.path, "node.xml");
    await writeFile(
      nodeXml,
      `<node>
  <cpu><mhz>2000</mhz><model>x86_64</model><active>6</active><nodes>1</nodes><sockets>1</sockets><cores>6</cores><threads>1</threads></cpu>
  <memory>2097152</memory>
  ${domainXml("alpha", uuid)}
  ${domainXml("beta")}
</node>
`,
    );
    const hypervisor = await LibvirtHypervisor.open(`test://${nodeXml}`);
    try {
      const domains = (await hypervisor.listDomains()).sort((a, b) => a.name.localeCompare(b.name));
      expect(domains.map((domain) => [domain.name, domain.state])).toEqual([
        ["alpha", "running"],
        ["beta", "running"],
      ]);
      expect(await hypervisor.lookup(uuid)).toEqual({ name: "alpha", uuid, state: "running" });
      expect(await hypervisor.nodeInfo()).toEqual({ cpus: 6, memoryKiB: 2097152 });
      await hypervisor.destroy("beta");
      expect(await hypervisor.lookup("beta")).toMatchObject({ state: "shutoff" });
    } finally {
      await hypervisor.close();
    }

    const missing = join(dir.path, "missing.xml");
    const error = await LibvirtHypervisor.open(`test://${missing}`).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(HypervisorError);
    expect(error).toMatchObject({ operation: "connect", kind: "failed", message: `cannot connect to test://${missing}: XML error: failed to parse xml document '${missing}'` });
  });
});

describe("a process using libvirt", () => {
  test("prints nothing on stderr when libvirt calls fail, and exits on its own", async () => {
    const { exitCode, stdout, stderr } = await runChild(`
      const hypervisor = await LibvirtHypervisor.open("test:///default");
      const failures = [
        hypervisor.start("no-such-vm"),
        hypervisor.define("<domain>"),
        hypervisor.destroy("test").then(() => hypervisor.destroy("test")),
        LibvirtHypervisor.open("test:///nonexistent/node.xml"),
        LibvirtHypervisor.open("test+unix:///default?socket=/nonexistent/libvirt-sock"),
      ];
      // One JSON string per line: some of libvirt's messages span lines.
      for (const failure of failures) await failure.then(() => console.log('"succeeded"'), (error) => console.log(JSON.stringify(error.message)));
      await hypervisor.close();
    `);
    expect(stderr).toBe("");
    expect(stdout.trim().split("\n").map((line) => JSON.parse(line) as unknown)).toEqual([
      'cannot start domain "no-such-vm" on test:///default: Domain not found',
      "cannot define a domain on test:///default: (domain_definition):1: Premature end of data in tag domain line 1\n<domain>\n--------^",
      'cannot destroy domain "test" on test:///default: Requested operation is not valid: domain is not running',
      "cannot connect to test:///nonexistent/node.xml: XML error: failed to parse xml document '/nonexistent/node.xml'",
      "cannot connect to test+unix:///default?socket=/nonexistent/libvirt-sock: Failed to connect socket to '/nonexistent/libvirt-sock': No such file or directory",
    ]);
    expect(exitCode).toBe(0);
  });

  // libvirt.so.0 hidden in a private mount namespace: needs root (unshare, mount).
  test.skipIf(process.getuid?.() !== 0)("without libvirt.so.0 fails on first use with a message naming the library and its package", async () => {
    const hide = ["unshare", "--mount", "--propagation", "private", "sh", "-c", 'mount --bind /dev/null "$(realpath /usr/lib/x86_64-linux-gnu/libvirt.so.0)" && exec "$@"', "hide-libvirt"];
    const { exitCode, stdout, stderr } = await runChild(
      `await LibvirtHypervisor.open("test:///default").catch((error) => console.log(error.constructor.name, error.message));`,
      hide,
    );
    expect(stderr).toBe("");
    expect(stdout).toStartWith("HypervisorError cannot connect to test:///default: cannot load libvirt.so.0 (install the Debian package libvirt0): ");
    expect(exitCode).toBe(0);
  });
});

describe("a libvirtd shared by several clients (test driver)", () => {
  let daemon: LocalLibvirtd | undefined;
  beforeAll(async () => {
    daemon = await startLibvirtd();
  });
  afterAll(async () => {
    await daemon?.stop();
  });

  test("a domain started by one client runs for the others, also after that client is gone", async () => {
    const uri = daemon!.uri;
    const first = await LibvirtHypervisor.open(uri);
    const second = await LibvirtHypervisor.open(uri);
    try {
      const defined = await first.define(domainXml("shared"));
      await first.start("shared");
      expect(await second.lookup(defined.uuid)).toEqual({ ...defined, state: "running" });
      await first.close();
      expect(await second.lookup("shared")).toMatchObject({ state: "running" });

      // Another process started it, then exited: it keeps running, and this process can stop it.
      const started = await runChild(`
        const hypervisor = await LibvirtHypervisor.open(${JSON.stringify(uri)});
        await hypervisor.define(${JSON.stringify(domainXml("from-child"))});
        await hypervisor.start("from-child");
        await hypervisor.close();
      `);
      expect(started).toEqual({ exitCode: 0, stdout: "", stderr: "" });
      expect(await second.lookup("from-child")).toMatchObject({ state: "running" });
      await second.destroy("from-child");

      const seen = await runChild(`
        const hypervisor = await LibvirtHypervisor.open(${JSON.stringify(uri)});
        console.log(JSON.stringify(await hypervisor.listDomains()));
        await hypervisor.close();
      `);
      expect(seen.stderr).toBe("");
      expect(JSON.parse(seen.stdout)).toEqual(
        expect.arrayContaining([
          { ...defined, state: "running" },
          expect.objectContaining({ name: "from-child", state: "shutoff" }),
        ]),
      );
    } finally {
      await first.close();
      await second.close();
    }
  });
});
