import { describe, expect, test } from "bun:test";
import { DecodeError } from "../../src/store/codec.ts";
import { decodeStrategy, defaultStrategy, haWanted, parseStrategy, rowNumber, strategyToJson, type PlaneState } from "../../src/core/strategy.ts";

const seedTable: Array<[number, PlaneState, PlaneState, PlaneState, boolean]> = [
  // no., management, service, storage, HA? — seed 001, "HA Strategy"
  [0, "down", "down", "down", true],
  [1, "down", "down", "up", true],
  [2, "down", "up", "down", true],
  [3, "down", "up", "up", false],
  [4, "up", "down", "down", true],
  [5, "up", "down", "up", false],
  [6, "up", "up", "down", true],
  [7, "up", "up", "up", false],
];

function problems(raw: unknown): readonly string[] {
  try {
    decodeStrategy(raw, "strategy.json");
  } catch (error) {
    if (error instanceof DecodeError) return error.problems;
    throw error;
  }
  return [];
}

describe("HA strategy", () => {
  test("the default is the seed's table, numbered as the seed numbers it, with a 120 s grace period", () => {
    expect(defaultStrategy.graceMs).toBe(120_000);
    for (const [number, management, service, storage, ha] of seedTable) {
      const planes = { management, service, storage };
      expect({ number, row: rowNumber(planes), ha: haWanted(defaultStrategy, planes) }).toEqual({ number, row: number, ha });
    }
  });

  test("its JSON form round-trips", () => {
    const json = JSON.stringify(strategyToJson(defaultStrategy));
    expect(parseStrategy(json, "x")).toEqual(defaultStrategy);
    const flipped = strategyToJson(defaultStrategy);
    flipped.rows[5]!.ha = true;
    flipped.grace_ms = 30_000;
    const custom = parseStrategy(JSON.stringify(flipped), "x");
    expect(custom.graceMs).toBe(30_000);
    expect(haWanted(custom, { management: "up", service: "down", storage: "up" })).toBe(true);
  });

  test("rows may come in any order", () => {
    const json = strategyToJson(defaultStrategy);
    json.rows.reverse();
    expect(decodeStrategy(json, "x")).toEqual(defaultStrategy);
  });

  test("every problem is named: missing combination, duplicate row, unknown field, wrong type, bad grace", () => {
    const base = strategyToJson(defaultStrategy);
    expect(problems({ ...base, rows: base.rows.slice(1) })).toEqual(["rows: missing the row for management down, storage down, service down"]);
    expect(problems({ ...base, rows: [...base.rows, base.rows[2]] })).toEqual(["rows[8]: duplicate row for management down, storage down, service up"]);
    expect(problems({ ...base, colour: "blue" })).toEqual(["colour: unknown field"]);
    expect(problems({ ...base, rows: base.rows.map((row, i) => (i === 3 ? { ...row, ha: "yes" } : row)) })).toEqual(['rows[3].ha: expected true or false, got "yes"']);
    expect(problems({ ...base, rows: base.rows.map((row, i) => (i === 1 ? { ...row, storage: "degraded", wifi: "up" } : row)) })).toEqual([
      "rows[1].wifi: unknown field",
      'rows[1].storage: expected one of "up", "down", got "degraded"',
    ]);
    expect(problems({ ...base, grace_ms: -1 })).toEqual(["grace_ms: expected an integer from 0 to 3600000, got -1"]);
    expect(problems({ rows: base.rows })).toEqual(["grace_ms: expected an integer from 0 to 3600000, got nothing"]);
    expect(problems([])).toContain("expected an object, got []");
  });

  test("a template that would recover healthy hosts is refused", () => {
    const base = strategyToJson(defaultStrategy);
    base.rows[7]!.ha = true;
    expect(problems(base)).toEqual(["rows: the row with every plane up must have ha: false"]);
  });

  test("not JSON: one problem naming the source", () => {
    expect(() => parseStrategy("{rows:", "/etc/fitha/strategy.json")).toThrow(/^\/etc\/fitha\/strategy.json: not JSON/);
  });
});
