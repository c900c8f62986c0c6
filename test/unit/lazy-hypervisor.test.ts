import { describe, expect, test } from "bun:test";
import { HypervisorError } from "../../src/virt/hypervisor.ts";
import { LazyHypervisor } from "../../src/virt/lazy-hypervisor.ts";
import { MemoryHypervisor } from "../../src/virt/memory-hypervisor.ts";

describe("LazyHypervisor", () => {
  test("connects on first use; a failed connect is an unanswered call, and the next call tries again", async () => {
    const target = new MemoryHypervisor();
    await target.define("<domain type='test'><name>vm-a</name></domain>");
    let attempts = 0;
    const lazy = new LazyHypervisor("memory:///", async () => {
      attempts++;
      if (attempts === 1) throw new HypervisorError("memory:///", "connect", undefined, "unanswered", "timed out after 500 ms");
      return target;
    });
    expect(attempts).toBe(0);
    const error = await lazy.destroy("vm-a").catch((e: unknown) => e);
    expect(error).toBeInstanceOf(HypervisorError);
    expect(error).toMatchObject({ kind: "unanswered", operation: "destroy", domain: "vm-a", detail: "not connected (timed out after 500 ms)" });
    await lazy.start("vm-a");
    expect(await lazy.lookup("vm-a")).toMatchObject({ state: "running" });
    expect(attempts).toBe(2);
    await lazy.close();
    await expect(lazy.listDomains()).rejects.toThrow("the connection is closed");
    await expect(target.listDomains()).rejects.toThrow("the connection is closed");
  });
});
