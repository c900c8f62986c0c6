import { describe, expect, test } from "bun:test";
import { DecodeError } from "../../src/store/codec.ts";
import { hostRecord } from "../../src/store/records.ts";

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
});
