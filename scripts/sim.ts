/**
 * scripts/sim: the deterministic simulator's command line (src/sim/README.md).
 *
 *   scripts/sim --seed 42                        one random run, its whole trace on stdout
 *   scripts/sim --seeds 10000 [--jobs 2]         many runs; failures reported with their seeds
 *   scripts/sim --scenario test/sim/scenarios/host-dies.json [--seed 7]
 *   --hosts 10 --vms 100 --hours 1               the random schedules' cluster and length
 *   --budget-s 120                               stop starting new seeds after this long (CI)
 *   --broken fencing-has-no-effect               a deliberately broken variant (proof it can fail)
 *   --json                                       a summary document on stdout instead of text
 *
 * Exit status: 0 when every run held every invariant, 1 when one did not, 2 on bad arguments.
 */
import { defineCommand, runMain } from "citty";
import { cpus } from "node:os";
import { parseScenario, type Plan } from "../src/sim/plan.ts";
import { Random } from "../src/sim/random.ts";
import { runSimulation, type RunResult } from "../src/sim/run.ts";
import { defaultScheduleOptions, faultKinds, randomPlan, type FaultKind } from "../src/sim/schedule.ts";
import { brokenVariants, type BrokenVariant } from "../src/sim/sim-host.ts";
import type { LogLevel } from "../src/config/fitha-config.ts";

/** A seed's plan comes from its own stream, apart from the run's (Math.random inside the daemons). */
const planStream = 0x5eed;
const maxSeeds = 10_000_000;

interface Shape {
  readonly hosts: number;
  readonly vms: number;
  readonly durationMs: number;
  readonly broken: ReadonlySet<BrokenVariant>;
  readonly kinds: readonly FaultKind[];
  /** Whether liveness violations fail a run or are only counted. */
  readonly enforceLiveness: boolean;
}

function planFor(seed: number, shape: Shape): Plan {
  return randomPlan(seed, new Random(seed * 2 + planStream), { ...defaultScheduleOptions, hosts: shape.hosts, vms: shape.vms, durationMs: shape.durationMs, kinds: shape.kinds }, { broken: shape.broken });
}

function positive(raw: string | undefined, name: string, fallback: number, max: number): number {
  if (raw === undefined) return fallback;
  const value = Number(raw);
  if (!(Number.isFinite(value) && value > 0 && value <= max)) usage(`--${name} wants a number from 1 to ${max}, not ${JSON.stringify(raw)}`);
  return value;
}

function usage(message: string): never {
  console.error(`scripts/sim: ${message}`);
  process.exit(2);
}

const main = defineCommand({
  meta: { name: "sim", description: "fitha's deterministic simulator: the real daemons on virtual time, random faults, invariant checks" },
  args: {
    seed: { type: "string", description: "Run this one seed (its trace on stdout)" },
    seeds: { type: "string", description: "Run this many seeds" },
    from: { type: "string", description: "First seed of --seeds (default 1)" },
    jobs: { type: "string", description: "Worker processes for --seeds (default: the CPU count)" },
    scenario: { type: "string", description: "A scenario file (JSON) instead of a random schedule" },
    hosts: { type: "string", description: "Hosts in random schedules (default 10)" },
    vms: { type: "string", description: "HA VMs in random schedules (default 100)" },
    hours: { type: "string", description: "Simulated hours per random run (default 1)" },
    "budget-s": { type: "string", description: "With --seeds: start no new seed after this many seconds" },
    faults: { type: "string", description: `Fault kinds for random schedules, comma-separated (default all): ${faultKinds.join(", ")}` },
    broken: { type: "string", description: `A deliberately broken variant: ${brokenVariants.join(", ")}` },
    "log-level": { type: "string", description: "Daemon log lines in the trace from this level (default warn)" },
    liveness: { type: "string", description: "enforce (default): an HA VM not running at the end is a failure; report: counted apart (known gaps, src/sim/README.md)" },
    json: { type: "boolean", description: "A JSON summary on stdout" },
    worker: { type: "string", description: "(internal) run seeds from,step,count,deadline-epoch-ms and print one JSON line each" },
  },
  async run({ args }) {
    const broken = new Set<BrokenVariant>();
    if (args.broken !== undefined) {
      if (!brokenVariants.includes(args.broken as BrokenVariant)) usage(`--broken: one of ${brokenVariants.join(", ")}, not ${JSON.stringify(args.broken)}`);
      broken.add(args.broken as BrokenVariant);
    }
    const shape: Shape = {
      hosts: positive(args.hosts, "hosts", defaultScheduleOptions.hosts, 200),
      vms: positive(args.vms, "vms", defaultScheduleOptions.vms, 10_000),
      durationMs: Math.round(positive(args.hours, "hours", defaultScheduleOptions.durationMs / 3_600_000, 24) * 3_600_000),
      broken,
      kinds: faultKindsFrom(args.faults),
      enforceLiveness: livenessFrom(args.liveness),
    };
    const logLevel = (args["log-level"] ?? "warn") as LogLevel;
    if (!["error", "warn", "info", "debug", "trace"].includes(logLevel)) usage(`--log-level: error, warn, info, debug or trace`);

    if (args.worker !== undefined) return await worker(args.worker, shape, logLevel);
    if (args.scenario !== undefined) {
      const plan = parseScenario(JSON.parse(await Bun.file(args.scenario).text()), args.scenario);
      const seed = positive(args.seed, "seed", 1, Number.MAX_SAFE_INTEGER);
      return finish(await runSimulation({ ...plan, world: { ...plan.world, broken } }, { seed, logLevel, ...printing(args.json === true) }), args.json === true, shape.enforceLiveness);
    }
    if (args.seed !== undefined) {
      const seed = positive(args.seed, "seed", 1, Number.MAX_SAFE_INTEGER);
      return finish(await runSimulation(planFor(seed, shape), { seed, logLevel, ...printing(args.json === true) }), args.json === true, shape.enforceLiveness);
    }
    const count = positive(args.seeds ?? "100", "seeds", 100, maxSeeds);
    const from = positive(args.from, "from", 1, Number.MAX_SAFE_INTEGER);
    const jobs = Math.round(positive(args.jobs, "jobs", Math.max(1, cpus().length), 64));
    const budgetMs = args["budget-s"] === undefined ? Infinity : positive(args["budget-s"], "budget-s", 0, 86_400) * 1000;
    await many({ from, count, jobs, budgetMs, shape, json: args.json === true, passThrough: process.argv.slice(2) });
  },
});

function livenessFrom(raw: string | undefined): boolean {
  if (raw === undefined || raw === "enforce") return true;
  if (raw === "report") return false;
  usage(`--liveness: enforce or report, not ${JSON.stringify(raw)}`);
}

function faultKindsFrom(raw: string | undefined): readonly FaultKind[] {
  if (raw === undefined) return faultKinds;
  const kinds = raw.split(",").map((k) => k.trim());
  const unknown = kinds.filter((k) => !faultKinds.includes(k as FaultKind));
  if (unknown.length > 0 || kinds.length === 0) usage(`--faults: unknown ${unknown.join(", ")}; known: ${faultKinds.join(", ")}`);
  return kinds as FaultKind[];
}

/** A single run prints its trace as it goes, unless a JSON summary is wanted. */
function printing(json: boolean): { onLine?: (line: string) => void } {
  return json ? {} : { onLine: (line) => console.log(line) };
}

/** The violations that fail a run: all of them, or all but liveness when liveness is only reported. */
function failing(violations: readonly { invariant: string }[], enforceLiveness: boolean): number {
  return violations.filter((v) => enforceLiveness || v.invariant !== "liveness").length;
}

function finish(result: RunResult, json: boolean, enforceLiveness: boolean): void {
  if (json) console.log(JSON.stringify({ ...result, tail: result.violations.length > 0 ? result.tail : undefined }, null, 2));
  else console.log(`seed ${result.seed}: ${result.violations.length === 0 ? "ok" : `${result.violations.length} violation(s)`}; ${result.traceLines} trace lines, sha256 ${result.traceHash}`);
  process.exitCode = failing(result.violations, enforceLiveness) === 0 ? 0 : 1;
}

/** One worker: seeds from, from+step, … (count of them, none started after the deadline), one JSON line each. */
async function worker(spec: string, shape: Shape, logLevel: LogLevel): Promise<void> {
  const [from, step, count, deadlineEpochMs] = spec.split(",").map(Number) as [number, number, number, number];
  for (let i = 0; i < count && Date.now() < deadlineEpochMs; i++) {
    const seed = from + i * step;
    const startedMs = performance.now();
    const result = await runSimulation(planFor(seed, shape), { seed, logLevel, keepLines: 60 });
    const line = { seed, violations: result.violations, hash: result.traceHash, ms: Math.round(performance.now() - startedMs), tail: result.violations.length > 0 ? result.tail : undefined };
    // One line per seed: the parent reads them as they come.
    process.stdout.write(`${JSON.stringify(line)}\n`);
  }
}

interface ManyOptions {
  readonly from: number;
  readonly count: number;
  readonly jobs: number;
  readonly budgetMs: number;
  readonly shape: Shape;
  readonly json: boolean;
  readonly passThrough: readonly string[];
}

/** Spreads seeds over worker processes (one per core: a run is single-threaded), within the budget. */
async function many(options: ManyOptions): Promise<void> {
  const startedMs = performance.now();
  const failures: Array<{ seed: number; violations: unknown[]; tail: string[] }> = [];
  /** Seeds whose only violations were liveness ones, when liveness is reported rather than enforced. */
  const livenessGaps: number[] = [];
  let done = 0;
  let lastReportMs = startedMs;
  const chunk = Math.max(1, Math.min(50, Math.ceil(options.count / options.jobs / 4)));
  let next = 0;
  const forward = stripManyArgs(options.passThrough);
  // Wall-clock time, as it crosses processes: workers start no seed after it.
  const deadlineEpochMs = Number.isFinite(options.budgetMs) ? Date.now() + options.budgetMs : Number.MAX_SAFE_INTEGER;
  const runWorker = async () => {
    while (next < options.count && performance.now() - startedMs < options.budgetMs) {
      const first = next;
      const size = Math.min(chunk, options.count - first);
      next += size;
      const child = Bun.spawn([process.execPath, import.meta.path, ...forward, "--worker", `${options.from + first},1,${size},${deadlineEpochMs}`], { stdout: "pipe", stderr: "inherit" });
      let buffered = "";
      for await (const bytes of child.stdout) {
        buffered += new TextDecoder().decode(bytes);
        for (let newline = buffered.indexOf("\n"); newline >= 0; newline = buffered.indexOf("\n")) {
          const result = JSON.parse(buffered.slice(0, newline)) as { seed: number; violations: Array<{ invariant: string }>; tail?: string[] };
          buffered = buffered.slice(newline + 1);
          done++;
          if (result.violations.length > 0 && failing(result.violations, options.shape.enforceLiveness) === 0) livenessGaps.push(result.seed);
          else if (result.violations.length > 0) {
            failures.push({ seed: result.seed, violations: result.violations, tail: result.tail ?? [] });
            if (!options.json) console.log(`seed ${result.seed}: VIOLATION ${JSON.stringify(result.violations[0])}`);
          }
        }
        if (!options.json && performance.now() - lastReportMs > 10_000) {
          lastReportMs = performance.now();
          console.log(`${done} seeds, ${failures.length} failing, ${rate(done, startedMs)} seeds/min`);
        }
      }
      const status = await child.exited;
      if (status !== 0 && status !== 1) throw new Error(`a worker for seeds ${options.from + first}.. exited with ${status}`);
    }
  };
  await Promise.all(Array.from({ length: options.jobs }, runWorker));
  const summary = {
    seeds: done,
    from: options.from,
    failing: failures.map((f) => f.seed),
    liveness_gaps: options.shape.enforceLiveness ? undefined : livenessGaps.length,
    seconds: Math.round((performance.now() - startedMs) / 100) / 10,
    seeds_per_minute: rate(done, startedMs),
    hosts: options.shape.hosts,
    vms: options.shape.vms,
    simulated_hours: options.shape.durationMs / 3_600_000,
    jobs: options.jobs,
  };
  if (options.json) console.log(JSON.stringify({ ...summary, failures }, null, 2));
  else {
    for (const failure of failures.slice(0, 3)) console.log(`\n--- seed ${failure.seed}, the trace's end (replay: scripts/sim --seed ${failure.seed}):\n${failure.tail.join("\n")}`);
    console.log(`${summary.seeds} seeds in ${summary.seconds} s (${summary.seeds_per_minute} seeds/min, ${options.jobs} jobs): ${failures.length === 0 ? "no violations" : `${failures.length} failing: ${failures.map((f) => f.seed).join(", ")}`}${options.shape.enforceLiveness ? "" : `; ${livenessGaps.length} with HA VMs not running at the end (liveness reported, not enforced)`}`);
  }
  process.exitCode = failures.length === 0 ? 0 : 1;
}

function rate(done: number, startedMs: number): number {
  return Math.round((done / ((performance.now() - startedMs) / 60_000)) * 10) / 10;
}

/** The arguments a worker gets: the run's shape, not the batch's. */
function stripManyArgs(argv: readonly string[]): string[] {
  const dropped = new Set(["--seeds", "--from", "--jobs", "--budget-s", "--json"]);
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    const name = arg.split("=")[0]!;
    if (!dropped.has(name)) out.push(arg);
    else if (!arg.includes("=") && name !== "--json") i++;
  }
  return out;
}

await runMain(main);
