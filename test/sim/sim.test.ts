/**
 * The deterministic simulator (src/sim): the checked-in scenarios hold every invariant; a run
 * replays byte for byte; the deliberately broken variants are caught (a simulator that cannot
 * fail proves nothing); and a fixed budget of random seeds holds the safety invariants.
 */
import { describe, expect, test } from "bun:test";
import { readdir } from "node:fs/promises";
import { join } from "node:path";
import { parseScenario, PlanError, type Plan } from "../../src/sim/plan.ts";
import { Random } from "../../src/sim/random.ts";
import { runSimulation } from "../../src/sim/run.ts";
import { defaultScheduleOptions, randomPlan } from "../../src/sim/schedule.ts";
import { brokenVariants, type BrokenVariant } from "../../src/sim/sim-host.ts";

const scenarioDir = join(import.meta.dir, "scenarios");
const root = join(import.meta.dir, "../..");

async function scenario(name: string): Promise<Plan> {
  const file = join(scenarioDir, name);
  return parseScenario(JSON.parse(await Bun.file(file).text()), file);
}

/** A small cluster's random schedule: 4 hosts, 12 HA VMs, one simulated hour. */
function smallRandomPlan(seed: number, broken: ReadonlySet<BrokenVariant> = new Set()): Plan {
  return randomPlan(seed, new Random(seed), { ...defaultScheduleOptions, hosts: 4, vms: 12 }, { broken });
}

describe("checked-in scenarios", async () => {
  const names = (await readdir(scenarioDir)).filter((f) => f.endsWith(".json")).sort();
  test("the seed's four split-brain cases and all 8 strategy rows are there", () => {
    expect(names.filter((n) => n.startsWith("split-brain-")).map((n) => n.slice(0, "split-brain-N".length))).toEqual(expect.arrayContaining(["split-brain-1", "split-brain-2", "split-brain-3", "split-brain-4"]));
    expect(names.filter((n) => n.startsWith("strategy-row-"))).toHaveLength(8);
  });
  for (const name of names) {
    test(`${name}: every invariant and expectation holds`, async () => {
      const result = await runSimulation(await scenario(name), { seed: 1 });
      expect(result.violations).toEqual([]);
      expect(result.simulatedMs).toBe((await scenario(name)).durationMs);
    });
  }
});

describe("scenario files", () => {
  test("a bad scenario is refused with a message naming the field", () => {
    const base = { name: "x", hosts: 3, duration_s: 60, steps: [] };
    expect(() => parseScenario({ ...base, steps: [{ at_s: 1, do: "explode" }] }, "bad.json")).toThrow('bad.json: steps[0].do: unknown step "explode"');
    expect(() => parseScenario({ ...base, steps: [{ at_s: 1, do: "cut", host: "host-9" }] }, "bad.json")).toThrow("bad.json: steps[0].host: a host from host-1 to host-3");
    expect(() => parseScenario({ ...base, steps: [{ at_s: 5, do: "heal-all" }, { at_s: 1, do: "heal-all" }] }, "bad.json")).toThrow("steps must be in time order");
    expect(() => parseScenario({ ...base, colour: "red" }, "bad.json")).toThrow(PlanError);
    expect(() => parseScenario({ ...base, steps: [{ at_s: 1, do: "kill", process: "host-1/qemu" }] }, "bad.json")).toThrow("steps[0].process");
  });
});

describe("determinism", () => {
  test("the same seed replays the same trace, byte for byte; another seed gives another", async () => {
    const [first, again, other] = [await runSimulation(smallRandomPlan(7), { seed: 7 }), await runSimulation(smallRandomPlan(7), { seed: 7 }), await runSimulation(smallRandomPlan(8), { seed: 8 })];
    expect(first.traceLines).toBeGreaterThan(50);
    expect(again.traceHash).toBe(first.traceHash);
    expect(again.tail).toEqual(first.tail);
    expect(other.traceHash).not.toBe(first.traceHash);
  });
});

/** Per broken variant, a scenario where only the piece it removes keeps the VMs safe (elsewhere the agent's self-fencing covers for lockd's fencing). */
const provingScenario: Record<BrokenVariant, string> = {
  "fencing-has-no-effect": "storage-lost-agent-dead.json",
  "leases-ignored": "split-brain-2-storage-lost-one-host.json",
};

describe("broken variants are caught", () => {
  for (const variant of brokenVariants) {
    test(`${variant}: a safety violation within 10 random seeds, and in ${provingScenario[variant]}`, async () => {
      const broken = new Set([variant]);
      let caughtAt: number | undefined;
      for (let seed = 1; seed <= 10 && caughtAt === undefined; seed++) {
        const result = await runSimulation(smallRandomPlan(seed, broken), { seed });
        if (result.violations.some((v) => v.invariant === "safety")) caughtAt = seed;
      }
      expect(caughtAt).toBeDefined();
      const plan = await scenario(provingScenario[variant]);
      const result = await runSimulation({ ...plan, world: { ...plan.world, broken } }, { seed: 1 });
      expect(result.violations.map((v) => v.invariant)).toContain("safety");
    });
  }
});

describe("random schedules", () => {
  test(
    "a fixed budget of seeds (10 hosts, 100 VMs, 1 simulated hour each, every fault kind): never two hosts running one VM, limits kept, plain VMs never moved, every HA VM running once the faults are healed",
    async () => {
      const run = Bun.spawn([join(root, "node_modules/.bin/bun"), join(root, "scripts/sim.ts"), "--seeds", "100000", "--budget-s", "60", "--jobs", "2", "--json"], { stdout: "pipe", stderr: "pipe" });
      const [output, status] = [await new Response(run.stdout).text(), await run.exited];
      const summary = JSON.parse(output) as { seeds: number; failing: number[]; failures: Array<{ seed: number; violations: unknown[] }> };
      expect(summary.failures).toEqual([]);
      expect(summary.seeds).toBeGreaterThanOrEqual(4);
      expect(status).toBe(0);
    },
    { timeout: 180_000 },
  );
});
