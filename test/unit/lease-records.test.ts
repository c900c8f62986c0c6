import { describe, expect, test } from "bun:test";
import { crc32c } from "../../src/lease/crc32c.ts";
import { ballotOffset, deltaOffset, layout, slotOffset } from "../../src/lease/layout.ts";
import { CorruptionError, decodeRecord, encodeRecord, randomId, type LeaseRecord } from "../../src/lease/records.ts";
import { timeline } from "../../src/lease/timeline.ts";

const samples: LeaseRecord[] = [
  { kind: "header", sectorSize: 512, hosts: 64, slots: 1000, maxIoTimeoutMs: 10_000, killBudgetMs: 60_000, lockspaceId: randomId(), name: "prod-ceph" },
  { kind: "delta", hostId: 7, generation: 3, timestampMs: 2 ** 40 + 5, ioTimeoutMs: 10_000, installId: randomId(), hostName: "compute-07.example", state: "held" },
  { kind: "leader", slot: 12, lver: 9, ownerHostId: 7, ownerGeneration: 3, state: "released", resource: "5b3c1a7e-0b52-4c43-9d0a-8f1d2c3b4a59" },
  { kind: "ballot", slot: 12, hostId: 7, lver: 10, mbal: 65 * 3 + 7, bal: 65 * 3 + 7, inpHostId: 7, inpGeneration: 3 },
];

describe("lease records", () => {
  test("CRC32C matches the standard check value", () => {
    expect(crc32c(new TextEncoder().encode("123456789"))).toBe(0xe3069283);
    expect(crc32c(new Uint8Array(0))).toBe(0);
  });

  test("CRC32C (slicing by 8) equals the bit-by-bit definition for every length and alignment", () => {
    const reference = (bytes: Uint8Array) => {
      let crc = 0xffffffff;
      for (const byte of bytes) {
        crc ^= byte;
        for (let k = 0; k < 8; k++) crc = crc & 1 ? (crc >>> 1) ^ 0x82f63b78 : crc >>> 1;
      }
      return (crc ^ 0xffffffff) >>> 0;
    };
    const data = crypto.getRandomValues(new Uint8Array(600));
    for (let start = 0; start < 9; start++) {
      for (const length of [0, 1, 7, 8, 9, 63, 508, 591]) {
        const slice = data.subarray(start, start + length);
        expect({ start, length, crc: crc32c(slice) }).toEqual({ start, length, crc: reference(slice) });
      }
    }
  });

  for (const sectorSize of [512, 4096] as const) {
    test(`every record round-trips in ${sectorSize}-byte sectors`, () => {
      for (const record of samples) {
        const bytes = encodeRecord(record, sectorSize);
        expect(bytes.length).toBe(sectorSize);
        expect(decodeRecord(bytes, record.kind, "test")).toEqual(record);
      }
    });
  }

  test("an all-zero sector is empty, not corrupt", () => {
    expect(decodeRecord(new Uint8Array(512), "delta", "test")).toBe("empty");
  });

  test("any flipped bit is reported as corruption, naming where", () => {
    const bytes = encodeRecord(samples[1]!, 512);
    for (const position of [0, 9, 40, 100, 300, 511]) {
      const damaged = bytes.slice();
      damaged[position]! ^= 0x10;
      expect(() => decodeRecord(damaged, "delta", "lease.img delta lease of host id 7")).toThrow(CorruptionError);
    }
    const damaged = bytes.slice();
    damaged[40]! ^= 1;
    expect(() => decodeRecord(damaged, "delta", "lease.img delta lease of host id 7")).toThrow(/^lease\.img delta lease of host id 7: corrupt lease record: checksum mismatch/);
  });

  test("a record of another kind, or from a newer format, is corrupt for this reader", () => {
    const ballot = encodeRecord(samples[3]!, 512);
    expect(() => decodeRecord(ballot, "leader", "x")).toThrow("expected a leader record, found kind 4");
    const newer = ballot.slice();
    new DataView(newer.buffer).setUint16(6, 2, true);
    new DataView(newer.buffer).setUint32(508, crc32c(newer.subarray(0, 508)), true);
    expect(() => decodeRecord(newer, "ballot", "x")).toThrow("format version 2");
  });

  test("names longer than 64 bytes are refused when writing", () => {
    expect(() => encodeRecord({ ...samples[2]!, resource: "x".repeat(65) } as LeaseRecord, 512)).toThrow("longer than 64 bytes");
  });
});

describe("layout and timeline", () => {
  test("areas are 4 KiB aligned and a slot's ballots follow its leader", () => {
    const l = layout({ sectorSize: 512, hosts: 64, slots: 10 });
    expect(deltaOffset(l, 1)).toBe(512);
    expect(deltaOffset(l, 64)).toBe(64 * 512);
    expect(l.slotsOffset % 4096).toBe(0);
    expect(l.slotStrideBytes % 4096).toBe(0);
    expect(l.slotStrideBytes).toBeGreaterThanOrEqual(65 * 512);
    expect(ballotOffset(l, 3, 1)).toBe(slotOffset(l, 3) + 512);
    expect(l.totalBytes).toBe(l.slotsOffset + 10 * l.slotStrideBytes);
    expect(() => slotOffset(l, 10)).toThrow(RangeError);
    expect(() => deltaOffset(l, 0)).toThrow(RangeError);
    const big = layout({ sectorSize: 4096, hosts: 64, slots: 1 });
    expect(big.slotStrideBytes).toBe(65 * 4096);
  });

  test("the documented timeline at io_timeout 10 s and kill budget 60 s", () => {
    expect(timeline(10_000, 60_000)).toEqual({
      ioTimeoutMs: 10_000,
      renewalIntervalMs: 20_000,
      renewalWarnMs: 40_000,
      renewalFailMs: 80_000,
      killBudgetMs: 60_000,
      hostDeadMs: 140_000,
      joinCollisionDelayMs: 20_000,
    });
    expect(() => timeline(5, 60_000)).toThrow(RangeError);
  });
});
