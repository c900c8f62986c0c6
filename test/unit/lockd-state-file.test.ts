import { describe, expect, test } from "bun:test";
import { readdir, stat } from "node:fs/promises";
import { join } from "node:path";
import { readState, stateFile, StateFileError, writeState, type LockdState } from "../../src/lockd/state-file.ts";
import { tempDir } from "../helpers/tmp.ts";

const state: LockdState = {
  version: 2,
  bootId: "3b1f1c2e-8d2a-4f57-9c39-6f0a1b2c3d4e",
  pid: 4242,
  leaseFile: "/shared/fitha/leases",
  lockspaceId: "a".repeat(32),
  incarnation: { hostId: 7, hostName: "compute-07", installId: "b".repeat(32), ioTimeoutMs: 10_000, generation: 3, recordTimestampsMs: [123456, 123789], lastRenewalStartMs: 98765.4321 },
  validUntilMs: 178765.4321,
  leases: [{ slot: 12, resource: "6c1a2b3c-0000-4000-8000-000000000001", lver: 9 }],
};

describe("lockd state file", () => {
  test("round trip; written with mode 0600 in a 0700 directory; no temp file left", async () => {
    await using dir = await tempDir("lockd-state");
    const stateDir = join(dir.path, "lockd");
    await writeState(stateDir, state);
    expect(await readState(stateDir)).toEqual(state);
    expect((await stat(stateFile(stateDir))).mode & 0o777).toBe(0o600);
    expect((await stat(stateDir)).mode & 0o777).toBe(0o700);
    expect(await readdir(stateDir)).toEqual(["state.json"]);
    await writeState(stateDir, { ...state, leases: [] });
    expect((await readState(stateDir))?.leases).toEqual([]);
  });

  test("no file: no state", async () => {
    await using dir = await tempDir("lockd-state");
    expect(await readState(dir.path)).toBeUndefined();
  });

  test("a damaged or foreign file is an error naming the file and the field, never a silent fresh start", async () => {
    await using dir = await tempDir("lockd-state");
    const file = stateFile(dir.path);
    const cases: Array<[string, string]> = [
      ["{not json", "not valid JSON"],
      [JSON.stringify({ ...state, version: 1 }), "version 1, expected 2"],
      [JSON.stringify({ ...state, pid: -1 }), "pid is not a non-negative integer"],
      [JSON.stringify({ ...state, incarnation: { ...state.incarnation, recordTimestampsMs: [] } }), "incarnation.recordTimestampsMs is not a non-empty list"],
      [JSON.stringify({ ...state, leases: [{ slot: 1, resource: "", lver: 1 }] }), "leases[0].resource is not a non-empty string"],
    ];
    for (const [content, reason] of cases) {
      await Bun.write(file, content);
      const error = await readState(dir.path).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(StateFileError);
      expect((error as Error).message).toBe(`${file}: ${reason}`);
    }
  });
});
