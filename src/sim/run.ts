/**
 * One simulation run: builds the world of a plan, plays its steps on virtual time, checks the
 * invariants as it goes, and returns the trace. Deterministic: one thread, one virtual clock,
 * one seeded PRNG; the same plan and seed give the same trace, byte for byte.
 *
 * Randomness inside the daemons (Paxos backoff, event key suffixes, watch retry jitter) comes
 * from Math.random; for the length of a run it is the run's seeded generator. That is why runs
 * never overlap in one process (runSimulation refuses to start a second one).
 */
import { Writable } from "node:stream";
import { createHash } from "node:crypto";
import type { LogLevel } from "../config/fitha-config.ts";
import { VirtualClock } from "../core/clock.ts";
import { errorMessage } from "../errors.ts";
import { configureLogging } from "../log.ts";
import type { Plan, Step } from "./plan.ts";
import { runningProcess } from "./process-gate.ts";
import { Random } from "./random.ts";
import type { SimHost } from "./sim-host.ts";
import { formatElapsed, World, type SimVm, type Violation } from "./world.ts";

export interface RunOptions {
  readonly seed: number;
  /** Daemon log lines at or above this level go into the trace (with virtual times); default "warn". */
  readonly logLevel?: LogLevel;
  /** Every trace line as it is made (printing a replay); the result keeps the last `keepLines`. */
  readonly onLine?: (line: string) => void;
  readonly keepLines?: number;
  /** Stop at the first violation (default true): the trace then ends where it went wrong. */
  readonly stopAtViolation?: boolean;
}

export interface RunResult {
  readonly plan: string;
  readonly seed: number;
  readonly violations: readonly Violation[];
  /** SHA-256 of every trace line: equal for equal runs. */
  readonly traceHash: string;
  readonly traceLines: number;
  /** The last lines of the trace (all of them, up to keepLines). */
  readonly tail: readonly string[];
  readonly simulatedMs: number;
  readonly vmStarts: number;
}

/** Virtual time advances in steps this long between invariant looks (violations are recorded the instant they happen). */
const sliceMs = 1_000;
let running = false;

export async function runSimulation(plan: Plan, options: RunOptions): Promise<RunResult> {
  if (running) throw new Error("runSimulation: one run at a time per process (Math.random is the run's)");
  running = true;
  const random = new Random(options.seed);
  const mathRandom = Math.random;
  Math.random = () => random.next();
  const hash = createHash("sha256");
  const keepLines = options.keepLines ?? 200;
  const tail: string[] = [];
  let lines = 0;
  const trace = (line: string) => {
    lines++;
    hash.update(line).update("\n");
    tail.push(line);
    if (tail.length > keepLines) tail.shift();
    options.onLine?.(line);
  };
  const clock = new VirtualClock(0);
  const world = new World(clock, random, plan.world, trace);
  configureLogging({ level: options.logLevel ?? "warn", format: "json", stream: logSink(world) });
  try {
    world.log(`plan ${plan.name}, seed ${options.seed}: ${plan.world.hosts} hosts, ${plan.world.controllers} controllers, ${plan.world.haVmsPerHost} HA + ${plan.world.plainVmsPerHost} plain VMs per host, ${plan.steps.length} steps over ${plan.durationMs / 1000} s`);
    await clock.run(world.setUp());
    const stop = () => options.stopAtViolation !== false && world.violations.length > 0;
    for (const { atMs, step } of plan.steps) {
      await advanceTo(world, atMs, stop);
      if (stop()) break;
      await clock.run(apply(world, step));
    }
    if (!stop()) await advanceTo(world, plan.durationMs, stop);
    world.log(`end: ${world.violations.length} violation(s), ${world.starts} VM starts`);
    return { plan: plan.name, seed: options.seed, violations: world.violations, traceHash: hash.digest("hex"), traceLines: lines, tail, simulatedMs: world.elapsedMs(), vmStarts: world.starts };
  } finally {
    configureLogging({ level: "info", format: "human" });
    Math.random = mathRandom;
    running = false;
  }
}

async function advanceTo(world: World, atMs: number, stop: () => boolean): Promise<void> {
  while (world.elapsedMs() < atMs && !stop()) await world.clock.advance(Math.min(sliceMs, atMs - world.elapsedMs()));
}

async function apply(world: World, step: Step): Promise<void> {
  const host = (name: string): SimHost => {
    const found = world.hosts.find((h) => h.name === name);
    if (found === undefined) throw new Error(`no host ${name}`);
    return found;
  };
  switch (step.do) {
    case "cut":
    case "heal":
      for (const plane of step.planes) world.setPlaneFault(host(step.host), plane, step.do === "cut" ? step.how : undefined);
      return;
    case "cluster-down":
    case "cluster-up":
      return world.setClusterFault(step.plane, step.do === "cluster-down" ? step.how : undefined);
    case "storage":
      return world.setStorageFault(step.hosts === "all" ? world.hosts : step.hosts.map(host), step.fault);
    case "kill":
    case "start":
    case "pause":
    case "resume":
      return processStep(world, step.do, step.process, host);
    case "power-off":
      return host(step.host).powerOff();
    case "power-on":
      return host(step.host).powerOn();
    case "crash-vm":
      if (!world.crashVm(vmNamed(world, step.vm))) world.log(`${step.vm} does not run anywhere: nothing to crash`);
      return;
    case "start-vm":
      return await world.startVmOn(vmNamed(world, step.vm), host(step.host));
    case "start-fails":
      return world.failStarts(host(step.host), step.times);
    case "maintenance":
      return await world.setMaintenance(step.host === null ? undefined : host(step.host), step.on);
    case "settings":
      return await world.setRuntimeSettings(step.settings);
    case "heal-all":
      return await world.healAll();
    case "expect":
      return expectVms(world, step.vmsOf, step.on);
    case "expect-every-ha-vm-runs":
      return world.checkEveryHaVmRuns();
  }
}

function vmNamed(world: World, name: string): SimVm {
  const vm = world.vms.find((v) => v.name === name);
  if (vm === undefined) throw new Error(`no VM ${name} (VMs are vm-<host number>-<n>)`);
  return vm;
}

function processStep(world: World, verb: "kill" | "start" | "pause" | "resume", ref: string, host: (name: string) => SimHost): void {
  const daemon = /^(host-\d+)\/(lockd|agent|watchdog)$/.exec(ref);
  if (daemon !== null) {
    const target = host(daemon[1]!);
    const process = daemon[2] as "lockd" | "agent" | "watchdog";
    if (verb === "kill") target.kill(process);
    else if (verb === "start") target.start(process);
    else if (verb === "pause") target.pause(process);
    else target.resume(process);
    return;
  }
  const controller = ref === "leader" ? world.leader() : world.controllers.find((c) => c.name === ref);
  if (controller === undefined) return world.log(`no ${ref} to ${verb}`);
  if (verb === "kill") world.killController(controller);
  else if (verb === "start") world.startController(controller);
  else {
    if (verb === "pause") controller.gate.pause();
    else controller.gate.resume();
    world.log(`${controller.name} ${verb}d`);
  }
}

function expectVms(world: World, origin: string, on: "origin" | "elsewhere" | "nowhere"): void {
  for (const vm of world.vms.filter((v) => v.ha && v.origin === origin)) {
    const where = world.runningOn(vm);
    const ok = on === "origin" ? where.length === 1 && where[0] === origin : on === "elsewhere" ? where.length === 1 && where[0] !== origin : where.length === 0;
    if (!ok) world.violate("expectation", `${vm.name} (from ${origin}) should run ${on === "origin" ? `on ${origin}` : on === "elsewhere" ? "on exactly one other host" : "nowhere"}, runs on [${where.join(", ")}]`);
  }
  world.log(`checked: ${origin}'s HA VMs run ${on === "origin" ? `on ${origin}` : on}`);
}

/** Daemon log lines (json) → trace lines with the virtual time instead of the machine's. */
function logSink(world: World): Writable {
  return new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString().split("\n")) {
        if (line === "") continue;
        try {
          const { time: _time, level, tag, msg, ...fields } = JSON.parse(line) as Record<string, unknown>;
          const process = runningProcess();
          world.trace(`${formatElapsed(world.elapsedMs())} ${process === undefined ? "" : `${process} `}[${String(tag)} ${String(level)}] ${String(msg)}${Object.keys(fields).length > 0 ? ` ${JSON.stringify(fields)}` : ""}`);
        } catch (error) {
          world.trace(`${formatElapsed(world.elapsedMs())} [log] ${line} (${errorMessage(error)})`);
        }
      }
      done();
    },
  });
}
