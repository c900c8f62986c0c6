/**
 * MemoryHypervisor's own API: injected failures, crashes, seeded UUIDs and node size. What it
 * shares with libvirt is checked against libvirt itself in hypervisor-contract.test.ts.
 */
import { describe, expect, test } from "bun:test";
import { HypervisorError } from "../../src/virt/hypervisor.ts";
import { MemoryHypervisor } from "../../src/virt/memory-hypervisor.ts";
import { domainXml } from "../helpers/libvirtd.ts";

async function hypervisorWith(...names: string[]): Promise<MemoryHypervisor> {
  const hypervisor = new MemoryHypervisor({ uri: "memory:///host-1" });
  for (const name of names) await hypervisor.define(domainXml(name));
  return hypervisor;
}

describe("injected failures", () => {
  test("a start fails the given number of times, changing nothing, then succeeds", async () => {
    const hypervisor = await hypervisorWith("web");
    hypervisor.injectFailure("start", "web", { times: 2, message: "qemu: could not open disk" });
    for (let attempt = 0; attempt < 2; attempt++) {
      await expect(hypervisor.start("web")).rejects.toMatchObject({ name: "HypervisorError", operation: "start", domain: "web", kind: "failed", message: 'cannot start domain "web" on memory:///host-1: qemu: could not open disk' });
      expect(await hypervisor.lookup("web")).toMatchObject({ state: "shutoff" });
    }
    await hypervisor.start("web");
    expect(await hypervisor.lookup("web")).toMatchObject({ state: "running" });
  });

  test("a failure injected by UUID (either case) hits the operation however the domain is named", async () => {
    const hypervisor = await hypervisorWith("db");
    const { uuid } = (await hypervisor.lookup("db"))!;
    await hypervisor.start("db");
    hypervisor.injectFailure("destroy", uuid.toUpperCase());
    await expect(hypervisor.destroy("db")).rejects.toMatchObject({ name: "HypervisorError", operation: "destroy", domain: "db", detail: "injected failure" });
    expect(await hypervisor.lookup(uuid)).toMatchObject({ state: "running" });
    await hypervisor.destroy("db");
  });

  test("only the named operation on the named domain fails", async () => {
    const hypervisor = await hypervisorWith("a", "b");
    hypervisor.injectFailure("destroy", "a");
    await hypervisor.start("a");
    await hypervisor.start("b");
    await hypervisor.destroy("b");
    await expect(hypervisor.destroy("a")).rejects.toBeInstanceOf(HypervisorError);
  });

  test("define, lookup, xml and undefine can fail too, and a define before the domain exists", async () => {
    const hypervisor = await hypervisorWith("present");
    hypervisor.injectFailure("define", "new");
    await expect(hypervisor.define(domainXml("new"))).rejects.toMatchObject({ operation: "define", domain: "new" });
    expect(await hypervisor.lookup("new")).toBeUndefined();
    hypervisor.injectFailure("lookup", "present");
    hypervisor.injectFailure("lookup", "absent");
    hypervisor.injectFailure("xml", "present");
    hypervisor.injectFailure("undefine", "present");
    await expect(hypervisor.lookup("present")).rejects.toMatchObject({ operation: "lookup", domain: "present" });
    await expect(hypervisor.lookup("absent")).rejects.toMatchObject({ operation: "lookup", domain: "absent" });
    await expect(hypervisor.xml("present")).rejects.toMatchObject({ operation: "xml" });
    await expect(hypervisor.undefine("present")).rejects.toMatchObject({ operation: "undefine" });
    expect(await hypervisor.lookup("present")).toMatchObject({ state: "shutoff" });
  });

  test("clearFailures forgets the unused ones; a failure count must be a positive integer", async () => {
    const hypervisor = await hypervisorWith("vm");
    hypervisor.injectFailure("start", "vm", { times: 5 });
    hypervisor.clearFailures();
    await hypervisor.start("vm");
    expect(() => hypervisor.injectFailure("start", "vm", { times: 0 })).toThrow(RangeError);
  });
});

describe("crash", () => {
  test("a crashed domain is off: it starts again, and destroying it is refused as not running", async () => {
    const hypervisor = await hypervisorWith("guest");
    await hypervisor.start("guest");
    hypervisor.crash("guest");
    expect(await hypervisor.lookup("guest")).toMatchObject({ state: "crashed" });
    await expect(hypervisor.destroy("guest")).rejects.toMatchObject({ kind: "invalid-state" });
    await hypervisor.start("guest");
    expect(await hypervisor.lookup("guest")).toMatchObject({ state: "running" });
  });

  test("a crashed domain that was undefined while running is gone; crashing a stopped one is a test bug", async () => {
    const hypervisor = await hypervisorWith("temp", "idle");
    await hypervisor.start("temp");
    await hypervisor.undefine("temp");
    hypervisor.crash("temp");
    expect(await hypervisor.lookup("temp")).toBeUndefined();
    expect(() => hypervisor.crash("idle")).toThrow('memory:///host-1: cannot crash "idle": no running domain by that name or UUID');
  });
});

test("UUIDs for XML without one come from the given generator, so simulator runs replay", async () => {
  let next = 0;
  const hypervisor = new MemoryHypervisor({ newUuid: () => `00000000-0000-4000-8000-${String(++next).padStart(12, "0")}` });
  expect(await hypervisor.define(domainXml("one"))).toEqual({ name: "one", uuid: "00000000-0000-4000-8000-000000000001", state: "shutoff" });
  expect((await hypervisor.define(domainXml("two"))).uuid).toBe("00000000-0000-4000-8000-000000000002");
  expect((await hypervisor.listDomains()).map((domain) => domain.name)).toEqual(["one", "two"]);
  expect(hypervisor.uri).toBe("memory:///");
});

test("the node's size is configurable", async () => {
  expect(await new MemoryHypervisor({ node: { cpus: 2, memoryKiB: 4096 } }).nodeInfo()).toEqual({ cpus: 2, memoryKiB: 4096 });
  expect(await new MemoryHypervisor().nodeInfo()).toEqual({ cpus: 8, memoryKiB: 16 * 1024 * 1024 });
});
