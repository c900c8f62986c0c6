/**
 * The Hypervisor contract, checked the same way on libvirt (its in-process test driver,
 * test:///default, through bun:ffi), on libvirt from a worker thread (WorkerHypervisor, also
 * through a private libvirtd) and on MemoryHypervisor, so that tests and the simulator running on
 * the in-memory one see what a real libvirt does.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { HypervisorError, isUuid, type Hypervisor, type HypervisorErrorKind, type HypervisorOperation } from "../../src/virt/hypervisor.ts";
import { LibvirtHypervisor } from "../../src/virt/libvirt-hypervisor.ts";
import { MemoryHypervisor } from "../../src/virt/memory-hypervisor.ts";
import { WorkerHypervisor } from "../../src/virt/worker-hypervisor.ts";
import { domainXml, startLibvirtd, type LocalLibvirtd } from "../helpers/libvirtd.ts";

// One daemon for the file: its test driver's state outlives each connection, so every test
// removes the domains it made.
let daemon: LocalLibvirtd | undefined;
beforeAll(async () => {
  daemon = await startLibvirtd();
});
afterAll(async () => {
  await daemon?.stop();
});

const implementations: [string, () => Promise<Hypervisor>][] = [
  // test:///default's state lives as long as one connection to it does: each test opens its own.
  ["libvirt test:///default", () => LibvirtHypervisor.open("test:///default")],
  ["WorkerHypervisor test:///default", () => WorkerHypervisor.open("test:///default")],
  ["WorkerHypervisor via libvirtd", () => WorkerHypervisor.open(daemon!.uri)],
  ["MemoryHypervisor", async () => new MemoryHypervisor({ uri: "memory:///contract" })],
];

async function failure(work: Promise<unknown>): Promise<HypervisorError> {
  const error = await work.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(HypervisorError);
  return error as HypervisorError;
}

async function expectFailure(
  work: Promise<unknown>,
  expected: { operation: HypervisorOperation; domain?: string; kind?: HypervisorErrorKind; detail: string | RegExp },
): Promise<void> {
  const error = await failure(work);
  expect(error.operation).toBe(expected.operation);
  expect(error.domain).toBe(expected.domain);
  if (expected.kind !== undefined) expect(error.kind).toBe(expected.kind);
  expect(error.detail).toMatch(expected.detail);
  expect(error.message).toStartWith(`cannot `);
  expect(error.message).toContain(error.detail);
  if (expected.domain !== undefined) expect(error.message).toContain(`domain "${expected.domain}" on ${error.uri}`);
}

describe.each(implementations)("%s", (_, open) => {
  async function withHypervisor(work: (hypervisor: Hypervisor) => Promise<void>): Promise<void> {
    const hypervisor = await open();
    try {
      await work(hypervisor);
    } finally {
      await hypervisor.close();
    }
  }

  test("define, start, destroy, undefine: each state as libvirt reports it", () =>
    withHypervisor(async (hypervisor) => {
      const defined = await hypervisor.define(domainXml("life"));
      expect(defined).toMatchObject({ name: "life", state: "shutoff" });
      expect(isUuid(defined.uuid)).toBe(true);
      expect(defined.uuid).toBe(defined.uuid.toLowerCase());
      expect(await hypervisor.listDomains()).toContainEqual(defined);

      await hypervisor.start("life");
      expect(await hypervisor.lookup("life")).toEqual({ ...defined, state: "running" });
      await hypervisor.destroy(defined.uuid);
      expect(await hypervisor.lookup("life")).toEqual(defined);
      await hypervisor.undefine("life");
      expect(await hypervisor.lookup("life")).toBeUndefined();
      expect((await hypervisor.listDomains()).map((domain) => domain.name)).not.toContain("life");
    }));

  test("lookup by name, by UUID in either case; an unknown domain is undefined", () =>
    withHypervisor(async (hypervisor) => {
      const uuid = "3f2504e0-4f89-41d3-9a0c-0305e82c3301";
      const defined = await hypervisor.define(domainXml("found", uuid.toUpperCase()));
      expect(defined.uuid).toBe(uuid);
      expect(await hypervisor.lookup("found")).toEqual(defined);
      expect(await hypervisor.lookup(uuid)).toEqual(defined);
      expect(await hypervisor.lookup(uuid.toUpperCase())).toEqual(defined);
      expect(await hypervisor.lookup("missing")).toBeUndefined();
      expect(await hypervisor.lookup("00000000-0000-0000-0000-000000000000")).toBeUndefined();
      await hypervisor.undefine(uuid);
    }));

  test("a domain named like a UUID is found by its name", () =>
    withHypervisor(async (hypervisor) => {
      const name = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";
      const defined = await hypervisor.define(domainXml(name));
      expect(defined.uuid).not.toBe(name);
      expect(await hypervisor.lookup(name)).toEqual(defined);
      await hypervisor.start(name);
      await hypervisor.destroy(name);
      await hypervisor.undefine(name);
    }));

  test("the XML names the domain and carries its UUID, also a generated one", () =>
    withHypervisor(async (hypervisor) => {
      const defined = await hypervisor.define(domainXml("described"));
      const xml = await hypervisor.xml("described");
      expect(xml).toContain("<name>described</name>");
      expect(xml).toContain(`<uuid>${defined.uuid}</uuid>`);
      await hypervisor.undefine("described");
    }));

  test("redefining with the same name and UUID keeps the domain; a new UUID for a taken name is refused", () =>
    withHypervisor(async (hypervisor) => {
      const defined = await hypervisor.define(domainXml("again"));
      await hypervisor.start("again");
      expect(await hypervisor.define(domainXml("again", defined.uuid))).toEqual({ ...defined, state: "running" });
      await expectFailure(hypervisor.define(domainXml("again", "3f2504e0-4f89-41d3-9a0c-0305e82c3302")), {
        operation: "define",
        domain: "again",
        kind: "failed",
        detail: `operation failed: domain 'again' already exists with uuid ${defined.uuid}`,
      });
      await hypervisor.destroy("again");
      await hypervisor.undefine("again");
    }));

  test("undefining a running domain leaves it running until it is destroyed, then it is gone", () =>
    withHypervisor(async (hypervisor) => {
      await hypervisor.define(domainXml("transient"));
      await hypervisor.start("transient");
      await hypervisor.undefine("transient");
      expect(await hypervisor.lookup("transient")).toMatchObject({ state: "running" });
      await hypervisor.destroy("transient");
      expect(await hypervisor.lookup("transient")).toBeUndefined();
    }));

  test("operations on an unknown domain fail as no-domain, naming it", () =>
    withHypervisor(async (hypervisor) => {
      for (const operation of ["start", "destroy", "undefine", "xml"] as const) {
        await expectFailure(hypervisor[operation]("nope"), { operation, domain: "nope", kind: "no-domain", detail: /^Domain not found/ });
      }
    }));

  test("destroying a domain that is not running, or starting a running one, fails with libvirt's reason", () =>
    withHypervisor(async (hypervisor) => {
      await hypervisor.define(domainXml("stopped"));
      await expectFailure(hypervisor.destroy("stopped"), {
        operation: "destroy",
        domain: "stopped",
        kind: "invalid-state",
        detail: "Requested operation is not valid: domain is not running",
      });
      await hypervisor.start("stopped");
      // The test driver reports this one as an internal error, qemu as an invalid operation.
      await expectFailure(hypervisor.start("stopped"), { operation: "start", domain: "stopped", detail: /already running/ });
      expect(await hypervisor.lookup("stopped")).toMatchObject({ state: "running" });
      await hypervisor.destroy("stopped");
      await hypervisor.undefine("stopped");
    }));

  test("invalid XML is refused, naming the domain when the XML does", () =>
    withHypervisor(async (hypervisor) => {
      await expectFailure(hypervisor.define("<network><name>net</name></network>"), { operation: "define", kind: "failed", detail: /expecting root element of 'domain'/ });
      await expectFailure(hypervisor.define("<domain type='test'><memory>65536</memory><os><type>hvm</type></os></domain>"), {
        operation: "define",
        detail: "missing name information",
      });
      await expectFailure(hypervisor.define(domainXml("bad-uuid", "not-a-uuid")), { operation: "define", domain: "bad-uuid", detail: /malformed uuid element/ });
      expect(await hypervisor.lookup("bad-uuid")).toBeUndefined();
    }));

  test("node info", () =>
    withHypervisor(async (hypervisor) => {
      const node = await hypervisor.nodeInfo();
      expect(node.cpus).toBeGreaterThan(0);
      expect(node.memoryKiB).toBeGreaterThan(0);
    }));

  test("after close every call fails, and close again is a no-op", async () => {
    const hypervisor = await open();
    await hypervisor.close();
    await hypervisor.close();
    await expectFailure(hypervisor.listDomains(), { operation: "list", detail: "the connection is closed" });
    await expectFailure(hypervisor.start("any"), { operation: "start", domain: "any", detail: "the connection is closed" });
  });
});
