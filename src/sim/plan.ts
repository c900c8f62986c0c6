/**
 * What one simulation run does: the cluster to build, then timed steps (faults, heals, process
 * kills, operator actions, expectations). Hand-written scenarios are JSON files in this shape
 * (test/sim/scenarios/, documented in src/sim/README.md); random schedules (schedule.ts) build
 * the same thing from a seed.
 */
import { planes, type Plane } from "../config/fitha-config.ts";
import { decodeSettings, defaultSettings, settingsToJson, type RuntimeSettings } from "../core/settings.ts";
import { decodeStrategy, defaultStrategy, strategyToJson } from "../core/strategy.ts";
import { FithaError } from "../errors.ts";
import type { Fault } from "../lease/memory-device.ts";
import type { LinkFault } from "../store/memory-kv.ts";
import { defaultWorldOptions, type WorldOptions } from "./world.ts";

/** A process: "host-2/lockd", "host-2/agent", "host-2/watchdog", "controller-1", or "leader" (whichever controller leads then). */
export type ProcessRef = string;

export type Step =
  | { readonly do: "cut" | "heal"; readonly host: string; readonly planes: readonly Plane[]; readonly how: LinkFault }
  | { readonly do: "cluster-down" | "cluster-up"; readonly plane: Plane; readonly how: LinkFault }
  | { readonly do: "storage"; readonly hosts: readonly string[] | "all"; readonly fault: Fault | undefined }
  | { readonly do: "kill" | "start" | "pause" | "resume"; readonly process: ProcessRef }
  | { readonly do: "power-off" | "power-on"; readonly host: string }
  | { readonly do: "crash-vm"; readonly vm: string }
  | { readonly do: "start-vm"; readonly vm: string; readonly host: string }
  | { readonly do: "start-fails"; readonly host: string; readonly times: number }
  | { readonly do: "maintenance"; readonly host: string | null; readonly on: boolean }
  | { readonly do: "settings"; readonly settings: RuntimeSettings }
  | { readonly do: "heal-all" }
  | { readonly do: "expect"; readonly vmsOf: string; readonly on: "origin" | "elsewhere" | "nowhere" }
  | { readonly do: "expect-every-ha-vm-runs" };

export interface TimedStep {
  readonly atMs: number;
  readonly step: Step;
}

export interface Plan {
  readonly name: string;
  readonly world: WorldOptions;
  readonly steps: readonly TimedStep[];
  /** The run ends here. */
  readonly durationMs: number;
}

/** Longest run a plan may ask for: 24 simulated hours. */
const maxDurationMs = 24 * 3_600_000;
const maxSteps = 100_000;
const maxHosts = 1_000;

export class PlanError extends FithaError {
  constructor(where: string, message: string) {
    super(`${where}: ${message}`);
    this.name = "PlanError";
  }
}

/**
 * A scenario file's JSON → a plan; every problem is an error naming the field. Shape:
 * { "name", "description"?, "hosts", "controllers"?, "ha_vms_per_host"?, "plain_vms_per_host"?,
 *   "io_timeout_ms"?, "kill_budget_ms"?, "settings"?: {stored runtime settings},
 *   "strategy"?: {stored strategy}, "election_ttl_ms"?, "duration_s",
 *   "steps": [ { "at_s": number, "do": verb, ...verb's fields } ] }
 */
export function parseScenario(raw: unknown, source: string): Plan {
  const where = (field: string) => `${source}: ${field}`;
  const object = asObject(raw, source);
  known(object, ["name", "description", "hosts", "controllers", "ha_vms_per_host", "plain_vms_per_host", "io_timeout_ms", "kill_budget_ms", "settings", "strategy", "election_ttl_ms", "duration_s", "steps"], source);
  const settings = object["settings"] === undefined ? defaultSettings : decodeSettings({ ...settingsToJson(defaultSettings), ...asObject(object["settings"], where("settings")) }, where("settings"));
  const strategy = object["strategy"] === undefined ? defaultStrategy : decodeStrategy({ ...strategyToJson(defaultStrategy), ...asObject(object["strategy"], where("strategy")) }, where("strategy"));
  const world: WorldOptions = {
    ...defaultWorldOptions,
    hosts: integer(object["hosts"], where("hosts"), 1, maxHosts),
    controllers: optionalInteger(object["controllers"], where("controllers"), 1, 9) ?? defaultWorldOptions.controllers,
    haVmsPerHost: optionalInteger(object["ha_vms_per_host"], where("ha_vms_per_host"), 0, 100) ?? defaultWorldOptions.haVmsPerHost,
    plainVmsPerHost: optionalInteger(object["plain_vms_per_host"], where("plain_vms_per_host"), 0, 100) ?? defaultWorldOptions.plainVmsPerHost,
    ioTimeoutMs: optionalInteger(object["io_timeout_ms"], where("io_timeout_ms"), 100, 60_000) ?? defaultWorldOptions.ioTimeoutMs,
    killBudgetMs: optionalInteger(object["kill_budget_ms"], where("kill_budget_ms"), 10, 600_000) ?? defaultWorldOptions.killBudgetMs,
    electionTtlMs: optionalInteger(object["election_ttl_ms"], where("election_ttl_ms"), 2_000, 120_000) ?? defaultWorldOptions.electionTtlMs,
    settings,
    strategy,
  };
  const durationMs = seconds(object["duration_s"], where("duration_s"), maxDurationMs);
  const rawSteps = object["steps"];
  if (!Array.isArray(rawSteps)) throw new PlanError(where("steps"), "must be a list of steps");
  if (rawSteps.length > maxSteps) throw new PlanError(where("steps"), `more than ${maxSteps} steps`);
  const parsed = rawSteps.map((entry, i) => parseStep(entry, `${source}: steps[${i}]`, world, durationMs));
  for (let i = 1; i < parsed.length; i++) {
    if (parsed[i]![0]!.atMs < parsed[i - 1]![0]!.atMs) throw new PlanError(`${source}: steps[${i}]`, "steps must be in time order");
  }
  // A flap is many cuts and heals: in time order with the rest (a stable sort keeps the file's order at one instant).
  const steps = parsed.flat().map((step, i) => ({ step, i })).sort((a, b) => a.step.atMs - b.step.atMs || a.i - b.i).map(({ step }) => step);
  if (steps.length > maxSteps) throw new PlanError(where("steps"), `more than ${maxSteps} steps once flaps are counted`);
  return { name: text(object["name"], where("name")), world, steps, durationMs };
}

/** One step of the file; a flap becomes its cuts and heals. */
function parseStep(raw: unknown, where: string, world: WorldOptions, durationMs: number): TimedStep[] {
  const object = asObject(raw, where);
  const atMs = seconds(object["at_s"], `${where}.at_s`, durationMs);
  const verb = text(object["do"], `${where}.do`);
  const fields = (...names: string[]) => known(object, ["at_s", "do", ...names], where);
  const host = (field = "host") => hostName(object[field], `${where}.${field}`, world.hosts);
  const how = (): LinkFault => {
    const value = object["how"] ?? "hang";
    if (value !== "hang" && value !== "refuse") throw new PlanError(`${where}.how`, `"hang" (packets dropped) or "refuse" (connection refused), not ${JSON.stringify(value)}`);
    return value;
  };
  const planeList = (): Plane[] => {
    const value = object["planes"] ?? [...planes];
    if (!Array.isArray(value) || value.length === 0 || !value.every((p) => planes.includes(p as Plane))) throw new PlanError(`${where}.planes`, `a non-empty list of ${planes.join(", ")}`);
    return value as Plane[];
  };
  if (verb === "flap") {
    fields("host", "planes", "how", "period_s", "count");
    const periodMs = seconds(object["period_s"], `${where}.period_s`, 3_600_000);
    if (periodMs < 1_000) throw new PlanError(`${where}.period_s`, "at least 1 s");
    const count = integer(object["count"], `${where}.count`, 1, 1_000);
    const target = { host: host(), planes: planeList(), how: how() };
    if (atMs + 2 * count * periodMs > durationMs) throw new PlanError(where, `the flap runs past the end of the run (${durationMs / 1000} s)`);
    return flapSteps(atMs, target, periodMs, count);
  }
  const step = ((): Step => {
    switch (verb) {
      case "cut":
      case "heal":
        fields("host", "planes", "how");
        return { do: verb, host: host(), planes: planeList(), how: how() };
      case "cluster-down":
      case "cluster-up": {
        fields("plane", "how");
        const plane = object["plane"];
        if (!planes.includes(plane as Plane)) throw new PlanError(`${where}.plane`, `one of ${planes.join(", ")}`);
        return { do: verb, plane: plane as Plane, how: how() };
      }
      case "storage": {
        fields("hosts", "fault", "delay_ms");
        const hosts = object["hosts"] === "all" ? "all" : asList(object["hosts"], `${where}.hosts`).map((h, i) => hostName(h, `${where}.hosts[${i}]`, world.hosts));
        return { do: verb, hosts, fault: storageFault(object["fault"], object["delay_ms"], where) };
      }
      case "kill":
      case "start":
      case "pause":
      case "resume":
        fields("process");
        return { do: verb, process: processRef(object["process"], `${where}.process`, world) };
      case "power-off":
      case "power-on":
        fields("host");
        return { do: verb, host: host() };
      case "crash-vm":
        fields("vm");
        return { do: verb, vm: text(object["vm"], `${where}.vm`) };
      case "start-fails":
        fields("host", "times");
        return { do: verb, host: host(), times: integer(object["times"], `${where}.times`, 1, 100) };
      case "start-vm":
        fields("vm", "host");
        return { do: verb, vm: text(object["vm"], `${where}.vm`), host: host() };
      case "maintenance": {
        fields("host", "on");
        if (typeof object["on"] !== "boolean") throw new PlanError(`${where}.on`, "true or false");
        return { do: verb, host: object["host"] === undefined ? null : host(), on: object["on"] };
      }
      case "settings":
        fields("settings");
        return { do: verb, settings: decodeSettings({ ...settingsToJson(world.settings), ...asObject(object["settings"], `${where}.settings`) }, `${where}.settings`) };
      case "heal-all":
        fields();
        return { do: verb };
      case "expect": {
        fields("vms_of", "on");
        const on = object["on"];
        if (on !== "origin" && on !== "elsewhere" && on !== "nowhere") throw new PlanError(`${where}.on`, `"origin", "elsewhere" or "nowhere", not ${JSON.stringify(on)}`);
        return { do: verb, vmsOf: host("vms_of"), on };
      }
      case "expect-every-ha-vm-runs":
        fields();
        return { do: verb };
      default:
        throw new PlanError(`${where}.do`, `unknown step ${JSON.stringify(verb)}`);
    }
  })();
  return [{ atMs, step }];
}

/** A link that goes down for `periodMs`, up for `periodMs`, `count` times. */
export function flapSteps(atMs: number, target: { host: string; planes: readonly Plane[]; how: LinkFault }, periodMs: number, count: number): TimedStep[] {
  return Array.from({ length: count }, (_, i) => [
    { atMs: atMs + 2 * i * periodMs, step: { do: "cut" as const, ...target } },
    { atMs: atMs + (2 * i + 1) * periodMs, step: { do: "heal" as const, ...target } },
  ]).flat();
}

function storageFault(raw: unknown, delayMs: unknown, where: string): Fault | undefined {
  switch (raw) {
    case "healthy":
      return undefined;
    case "hang":
      return { kind: "hang" };
    case "eio":
      return { kind: "error", code: "EIO" };
    case "slow":
      return { kind: "delay", ms: integer(delayMs, `${where}.delay_ms`, 1, 3_600_000) };
    default:
      throw new PlanError(`${where}.fault`, `"hang", "eio", "slow" (with delay_ms) or "healthy", not ${JSON.stringify(raw)}`);
  }
}

function processRef(raw: unknown, where: string, world: WorldOptions): ProcessRef {
  const value = text(raw, where);
  if (value === "leader") return value;
  const controller = /^controller-(\d+)$/.exec(value);
  if (controller !== null && Number(controller[1]) >= 1 && Number(controller[1]) <= world.controllers) return value;
  const daemon = /^(host-\d+)\/(lockd|agent|watchdog)$/.exec(value);
  if (daemon !== null) {
    hostName(daemon[1], where, world.hosts);
    return value;
  }
  throw new PlanError(where, `"host-N/lockd", "host-N/agent", "host-N/watchdog", "controller-N" or "leader", not ${JSON.stringify(value)}`);
}

function hostName(raw: unknown, where: string, hosts: number): string {
  const value = text(raw, where);
  const match = /^host-(\d+)$/.exec(value);
  if (match === null || Number(match[1]) < 1 || Number(match[1]) > hosts) throw new PlanError(where, `a host from host-1 to host-${hosts}, not ${JSON.stringify(value)}`);
  return value;
}

function asObject(raw: unknown, where: string): Record<string, unknown> {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) throw new PlanError(where, "must be an object");
  return raw as Record<string, unknown>;
}

function asList(raw: unknown, where: string): unknown[] {
  if (!Array.isArray(raw) || raw.length === 0) throw new PlanError(where, `a non-empty list, or "all"`);
  return raw;
}

function known(object: Record<string, unknown>, fields: readonly string[], where: string): void {
  const unknown = Object.keys(object).filter((key) => !fields.includes(key));
  if (unknown.length > 0) throw new PlanError(where, `unknown field${unknown.length > 1 ? "s" : ""} ${unknown.map((f) => JSON.stringify(f)).join(", ")} (known: ${fields.join(", ")})`);
}

function text(raw: unknown, where: string): string {
  if (typeof raw !== "string" || raw === "") throw new PlanError(where, "must be a non-empty string");
  return raw;
}

function integer(raw: unknown, where: string, min: number, max: number): number {
  if (typeof raw !== "number" || !Number.isInteger(raw) || raw < min || raw > max) throw new PlanError(where, `an integer from ${min} to ${max}, not ${JSON.stringify(raw)}`);
  return raw;
}

function optionalInteger(raw: unknown, where: string, min: number, max: number): number | undefined {
  return raw === undefined ? undefined : integer(raw, where, min, max);
}

/** Seconds (fractions allowed, to the millisecond) → milliseconds, within [0, maxMs]. */
function seconds(raw: unknown, where: string, maxMs: number): number {
  if (typeof raw !== "number" || !Number.isFinite(raw) || raw < 0 || raw * 1000 > maxMs) throw new PlanError(where, `seconds from 0 to ${maxMs / 1000}, not ${JSON.stringify(raw)}`);
  return Math.round(raw * 1000);
}
