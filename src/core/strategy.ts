/**
 * The HA strategy: which combinations of network planes down call for recovering a host's HA
 * VMs elsewhere, and how long a combination must hold first (the grace period). A JSON template
 * (seed 001, "HA Strategy"): one row for each of the 8 up/down combinations of the management,
 * service and storage planes. The default is the seed's table:
 *
 *   no. mgmt service storage  HA     why (the reading behind the seed's table)
 *   0   down down    down     yes    host gone
 *   1   down down    up       yes    only storage left: the VMs serve nobody
 *   2   down up      down     yes    VMs without their disks
 *   3   down up      up       no     management only: the VMs serve and have their disks
 *   4   up   down    down     yes    VMs without users or disks
 *   5   up   down    up       no     service network only: a network fault, not a host fault
 *   6   up   up      down     yes    VMs without their disks
 *   7   up   up      up       no     healthy
 *
 * A template is checked as a whole; any problem rejects it and the running one stays in force.
 */
import { planes, type Plane } from "../config/fitha-config.ts";
import { decodeJson, Fields } from "../store/codec.ts";

export type PlaneState = "up" | "down";
export type PlaneStates = Readonly<Record<Plane, PlaneState>>;

export interface StrategyRow {
  readonly planes: PlaneStates;
  readonly ha: boolean;
}

export interface Strategy {
  /** How long a host must stay in an HA row before its VMs are recovered. */
  readonly graceMs: number;
  /** Exactly 8, one per combination, in rowNumber order. */
  readonly rows: readonly StrategyRow[];
}

export const graceRangeMs = { min: 0, max: 3_600_000 } as const;
export const defaultGraceMs = 120_000;

/** The row number of a combination, as the seed numbers them: management 4, service 2, storage 1 (up = 1). */
export function rowNumber(states: PlaneStates): number {
  return (states.management === "up" ? 4 : 0) + (states.service === "up" ? 2 : 0) + (states.storage === "up" ? 1 : 0);
}

function combination(row: number): PlaneStates {
  return { management: row & 4 ? "up" : "down", service: row & 2 ? "up" : "down", storage: row & 1 ? "up" : "down" };
}

const seedHa = [true, true, true, false, true, false, true, false];

export const defaultStrategy: Strategy = Object.freeze({
  graceMs: defaultGraceMs,
  rows: Object.freeze(seedHa.map((ha, row) => Object.freeze({ planes: combination(row), ha }))),
});

/** Whether `states` calls for HA under `strategy`. */
export function haWanted(strategy: Strategy, states: PlaneStates): boolean {
  return strategy.rows[rowNumber(states)]!.ha;
}

export function describeStates(states: PlaneStates): string {
  return planes.map((plane) => `${plane} ${states[plane]}`).join(", ");
}

/**
 * The template's JSON form (stable; `fitha strategy default` prints it, `fitha strategy show --json` has it as "strategy"):
 *   { "grace_ms": 120000, "rows": [ { "management": "down", "service": "down", "storage": "down", "ha": true }, … ] }
 */
export function strategyToJson(strategy: Strategy): { grace_ms: number; rows: Array<Record<Plane, PlaneState> & { ha: boolean }> } {
  return { grace_ms: strategy.graceMs, rows: strategy.rows.map((row) => ({ management: row.planes.management, service: row.planes.service, storage: row.planes.storage, ha: row.ha })) };
}

/** Decodes and checks a template; a DecodeError lists every problem, each naming its row and field. */
export function decodeStrategy(raw: unknown, source: string): Strategy {
  const f = new Fields(source);
  const template = f.object(raw, "", ["grace_ms", "rows"]);
  const graceMs = f.integer(template["grace_ms"], "grace_ms", graceRangeMs.min, graceRangeMs.max);
  const rawRows = template["rows"];
  const byNumber = new Map<number, StrategyRow>();
  if (!Array.isArray(rawRows)) {
    f.problem("rows", "expected a list of 8 rows");
  } else {
    if (rawRows.length > 64) f.problem("rows", `expected 8 rows, got ${rawRows.length}`);
    rawRows.slice(0, 64).forEach((rawRow, index) => {
      const path = `rows[${index}]`;
      const problemsBefore = f.problems.length;
      const r = f.object(rawRow, path, [...planes, "ha"]);
      const states = {
        management: f.choice(r["management"], `${path}.management`, ["up", "down"] as const),
        service: f.choice(r["service"], `${path}.service`, ["up", "down"] as const),
        storage: f.choice(r["storage"], `${path}.storage`, ["up", "down"] as const),
      };
      const ha = f.boolean(r["ha"], `${path}.ha`);
      if (f.problems.length > problemsBefore) return;
      const number = rowNumber(states);
      const earlier = [...byNumber.keys()].includes(number);
      if (earlier) f.problem(path, `duplicate row for ${describeStates(states)}`);
      else byNumber.set(number, { planes: states, ha });
    });
    if (f.problems.length === 0) {
      for (let number = 0; number < 8; number++) {
        if (!byNumber.has(number)) f.problem("rows", `missing the row for ${describeStates(combination(number))}`);
      }
    }
    // Every healthy host would be "recovered" over and over: surely a mistake.
    if (byNumber.get(7)?.ha === true) f.problem("rows", "the row with every plane up must have ha: false");
  }
  return f.done({ graceMs, rows: Array.from({ length: 8 }, (_, number) => byNumber.get(number) ?? { planes: combination(number), ha: false }) });
}

/** Parses a template from JSON text (a file or an etcd value). */
export function parseStrategy(text: string, source: string): Strategy {
  return decodeJson(decodeStrategy, text, source);
}
