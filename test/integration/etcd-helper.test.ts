import { describe, expect, test } from "bun:test";
import { existsSync } from "node:fs";
import { Etcd3 } from "etcd3";
import { startEtcd, type LocalEtcd } from "../helpers/etcd.ts";

const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

const acceptsConnections = async (endpoint: string): Promise<boolean> => {
  try {
    await fetch(`${endpoint}/health`, { signal: AbortSignal.timeout(1_000) });
    return true;
  } catch {
    return false;
  }
};

describe("test helper: local etcd", () => {
  test("serves reads and writes, and stop() removes process, port and data", async () => {
    const etcd = await startEtcd({ name: "helper" });
    const client = new Etcd3({ hosts: etcd.endpoint });
    try {
      await client.put("/helper/key").value("value");
      expect(await client.get("/helper/key").string()).toBe("value");
    } finally {
      client.close();
      await etcd.stop();
    }
    expect(alive(etcd.pid)).toBe(false);
    expect(await acceptsConnections(etcd.endpoint)).toBe(false);
    expect(existsSync(etcd.dataDir)).toBe(false);
    await etcd.stop(); // idempotent
  });

  test("`await using` stops it even when the test body throws", async () => {
    let started: LocalEtcd | undefined;
    const failingTest = async () => {
      await using etcd = await startEtcd({ name: "helper-throw" });
      started = etcd;
      expect(alive(etcd.pid)).toBe(true);
      throw new Error("the test failed");
    };
    await expect(failingTest()).rejects.toThrow("the test failed");
    expect(started).toBeDefined();
    expect(alive(started!.pid)).toBe(false);
    expect(existsSync(started!.dataDir)).toBe(false);
  });

  test("two at once get distinct ports and independent data", async () => {
    await using a = await startEtcd({ name: "helper-a" });
    await using b = await startEtcd({ name: "helper-b" });
    expect(a.endpoint).not.toBe(b.endpoint);
    const clientA = new Etcd3({ hosts: a.endpoint });
    const clientB = new Etcd3({ hosts: b.endpoint });
    try {
      await clientA.put("/only-in-a").value("1");
      expect(await clientB.get("/only-in-a").string()).toBeNull();
    } finally {
      clientA.close();
      clientB.close();
    }
  });

  test("dies with the process that started it (pdeathsig), so crashed test runs leave no etcd", async () => {
    // A child bun process starts an etcd, prints its pid, and is then SIGKILLed.
    const script = `import { startEtcd } from ${JSON.stringify(`${import.meta.dir}/../helpers/etcd.ts`)};
      const etcd = await startEtcd({ name: "helper-orphan" }); console.log(etcd.pid + " " + etcd.dataDir); await Bun.sleep(60_000);`;
    const parent = Bun.spawn([process.execPath, "-e", script], { stdout: "pipe", stderr: "inherit" });
    const reader = parent.stdout.getReader();
    const { value } = await reader.read();
    const [pid, dataDir] = new TextDecoder().decode(value).trim().split(" ");
    expect(alive(Number(pid))).toBe(true);
    parent.kill("SIGKILL");
    await parent.exited;
    const deadline = Date.now() + 5_000;
    while (alive(Number(pid)) && Date.now() < deadline) await Bun.sleep(20);
    expect(alive(Number(pid))).toBe(false);
    // The data dir of a killed run stays (nobody was left to remove it); remove it here.
    await Bun.$`rm -rf ${dataDir!.replace(/\/data$/, "")}`.quiet();
  });
});
