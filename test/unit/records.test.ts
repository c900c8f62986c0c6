import { describe, expect, test } from "bun:test";
import { DecodeError } from "../../src/store/codec.ts";
import { newTask, starting } from "../../src/core/recovery-tasks.ts";
import { hostRecord, orderResult, taskRecord, vmOrder } from "../../src/store/records.ts";

describe("records", () => {
  const host = { name: "compute-1", hostId: 3, addresses: { management: "10.0.0.3", storage: "10.1.0.3", service: "10.2.0.3" }, capacity: { cpus: 16, memoryKiB: 3_145_728 }, agentVersion: "0.1.0", registeredAt: "2026-11-23T12:00:00.000Z" };

  test("a host record round-trips; addresses may be unknown (\"\"), as [host.addresses] defaults them", () => {
    expect(hostRecord(JSON.parse(JSON.stringify(host)), "k")).toEqual(host);
    const unknown = { ...host, addresses: { management: "", storage: "", service: "" } };
    expect(hostRecord(unknown, "k")).toEqual(unknown);
  });

  test("every problem of a bad host record is named with its field", () => {
    const bad = { ...host, hostId: 0, addresses: { management: 7, storage: "", service: "" }, extra: true };
    try {
      hostRecord(bad, "/fitha/hosts/compute-1");
      throw new Error("decoded");
    } catch (error) {
      expect(error).toBeInstanceOf(DecodeError);
      expect((error as DecodeError).problems).toEqual(["extra: unknown field", "hostId: expected an integer from 1 to 2000, got 0", "addresses.management: expected a string of at most 253 characters, got 7"]);
    }
  });

  test("recovery tasks, orders and results round-trip through their codecs", () => {
    const task = starting(newTask("6c1a2b3c-0000-4000-8000-00000000a001", "compute-2", 1_700_000_000_000, "host down"), "compute-1", 1_700_000_001_000);
    expect(taskRecord(JSON.parse(JSON.stringify(task)), "k")).toEqual(task);
    const result = { vm: task.vm, host: "compute-1", action: "start" as const, outcome: "lease-held" as const, reason: "held", holder: "compute-2 (host id 2)", freeInMs: 60_000, at: "2026-11-23T12:00:00.000Z" };
    expect(orderResult(JSON.parse(JSON.stringify(result)), "k")).toEqual(result);
    const order = { vm: task.vm, action: "start" as const, issuedAt: "2026-11-23T12:00:00.000Z", by: "controller@c1" };
    expect(vmOrder(order, "k")).toEqual(order);
    expect(() => taskRecord({ ...task, state: "lost" }, "/fitha/tasks/x")).toThrow('/fitha/tasks/x: state: expected one of "queued", "starting", "done", "retrying", "failed", got "lost"');
  });
});
