/**
 * Random fault schedules from a seed: episodes of one fault each (a plane cut, an isolated host,
 * a storage fault for one host or all, an etcd cluster lost, a daemon killed or paused, a host
 * powered off, a VM crash), each healed after a random time — some shorter than the detection
 * and lease timelines, some far longer — with at most a few at once. Then everything is healed
 * and the cluster gets a settle period, at whose end every HA VM must run (liveness).
 */
import { planes, type Plane } from "../config/fitha-config.ts";
import type { Fault } from "../lease/memory-device.ts";
import { flapSteps, type Plan, type Step, type TimedStep } from "./plan.ts";
import type { Random } from "./random.ts";
import { defaultWorldOptions, type WorldOptions } from "./world.ts";

/** The kinds of fault a random schedule draws from. */
export const faultKinds = ["plane-cut", "flap", "isolate", "storage-host", "storage-all", "cluster-lost", "kill", "pause", "power", "vm-crash", "start-fails", "maintenance"] as const;
export type FaultKind = (typeof faultKinds)[number];

export interface ScheduleOptions {
  readonly hosts: number;
  /** HA VMs in all (spread evenly); one plain VM per host besides. */
  readonly vms: number;
  readonly durationMs: number;
  /** Fault episodes running at once, at most. */
  readonly maxConcurrentFaults: number;
  /** The kinds drawn from (all by default). */
  readonly kinds: readonly FaultKind[];
}

export const defaultScheduleOptions: ScheduleOptions = { hosts: 10, vms: 100, durationMs: 3_600_000, maxConcurrentFaults: 2, kinds: faultKinds };

/**
 * After the last fault is healed: enough for a host's heartbeats to expire and its grace to pass
 * (60 s + 120 s), its leases to become free (host-dead 140 s), every retry's backoff and a
 * start timeout — with room to spare. Runs shorter than this get no faults.
 */
export const settleMs = 15 * 60_000;

/**
 * One fault: the steps that make it and those that heal it (none: it heals itself, or heal-all
 * does), or (a flap) steps of its own timing.
 */
type Episode = { readonly start: readonly Step[]; readonly end: readonly Step[] } | { readonly timed: (atMs: number, endMs: number) => TimedStep[] };

export function randomPlan(seed: number, random: Random, options: ScheduleOptions, world: Partial<WorldOptions> = {}): Plan {
  const haVmsPerHost = Math.ceil(options.vms / options.hosts);
  const worldOptions: WorldOptions = { ...defaultWorldOptions, ...world, hosts: options.hosts, haVmsPerHost, plainVmsPerHost: 1 };
  const faultEndMs = options.durationMs - settleMs;
  const steps: TimedStep[] = [];
  /** When each running episode ends, to keep at most maxConcurrentFaults at once. */
  let ends: number[] = [];
  for (let atMs = random.int(30_000, 120_000); atMs < faultEndMs; atMs += random.int(10_000, 240_000)) {
    ends = ends.filter((end) => end > atMs);
    if (ends.length >= options.maxConcurrentFaults) continue;
    const episode = randomEpisode(random, worldOptions, random.pick(options.kinds));
    const endMs = Math.min(faultEndMs, atMs + randomDuration(random));
    if ("timed" in episode) steps.push(...episode.timed(atMs, endMs));
    else {
      for (const step of episode.start) steps.push({ atMs, step });
      for (const step of episode.end) steps.push({ atMs: endMs, step });
    }
    ends.push(endMs);
  }
  if (faultEndMs > 0) {
    steps.push({ atMs: faultEndMs, step: { do: "heal-all" } });
    steps.push({ atMs: options.durationMs, step: { do: "expect-every-ha-vm-runs" } });
  }
  // Stable order: by time, and in generation order within one instant.
  const ordered = steps.map((step, i) => ({ step, i })).sort((a, b) => a.step.atMs - b.step.atMs || a.i - b.i).map(({ step }) => step);
  return { name: `random-${seed}`, world: worldOptions, steps: ordered, durationMs: options.durationMs };
}

/** Mostly short faults (below the detection and lease timelines), some long ones. */
function randomDuration(random: Random): number {
  const roll = random.next();
  if (roll < 0.4) return random.int(1_000, 60_000);
  if (roll < 0.8) return random.int(60_000, 240_000);
  return random.int(240_000, 900_000);
}

function randomEpisode(random: Random, world: WorldOptions, kind: FaultKind): Episode {
  const host = `host-${random.int(1, world.hosts)}`;
  switch (kind) {
    case "plane-cut": {
      const cut = planes.filter(() => random.chance(0.5));
      const chosen: Plane[] = cut.length === 0 ? [random.pick(planes)] : cut;
      const how = random.chance(0.7) ? "hang" : "refuse";
      return { start: [{ do: "cut", host, planes: chosen, how }], end: [{ do: "heal", host, planes: chosen, how }] };
    }
    case "flap": {
      const chosen: Plane[] = [random.pick(planes)];
      const periodMs = random.int(2_000, 60_000);
      return { timed: (atMs, endMs) => flapSteps(atMs, { host, planes: chosen, how: "hang" }, periodMs, Math.max(1, Math.floor((endMs - atMs) / (2 * periodMs)))) };
    }
    case "isolate":
      // Every plane and the path to the storage (it runs over the storage network).
      return {
        start: [
          { do: "cut", host, planes: [...planes], how: "hang" },
          { do: "storage", hosts: [host], fault: { kind: "hang" } },
        ],
        end: [
          { do: "heal", host, planes: [...planes], how: "hang" },
          { do: "storage", hosts: [host], fault: undefined },
        ],
      };
    case "storage-host":
    case "storage-all": {
      const fault = randomStorageFault(random);
      const hosts = kind === "storage-all" ? "all" : [host];
      return { start: [{ do: "storage", hosts, fault }], end: [{ do: "storage", hosts, fault: undefined }] };
    }
    case "cluster-lost": {
      const plane = random.pick(planes);
      return { start: [{ do: "cluster-down", plane, how: "hang" }], end: [{ do: "cluster-up", plane, how: "hang" }] };
    }
    case "kill": {
      const process = random.pick([`${host}/lockd`, `${host}/agent`, `${host}/watchdog`, "leader", `controller-${random.int(1, world.controllers)}`]);
      return { start: [{ do: "kill", process }], end: process === "leader" ? [] : [{ do: "start", process }] };
    }
    case "pause": {
      const process = random.pick([`${host}/lockd`, `${host}/agent`, `controller-${random.int(1, world.controllers)}`]);
      return { start: [{ do: "pause", process }], end: [{ do: "resume", process }] };
    }
    case "power":
      return { start: [{ do: "power-off", host }], end: [{ do: "power-on", host }] };
    case "vm-crash":
      return { start: [{ do: "crash-vm", vm: `vm-${random.int(1, world.hosts)}-${random.int(1, world.haVmsPerHost)}` }], end: [] };
    case "start-fails":
      return { start: [{ do: "start-fails", host, times: random.int(1, 3) }], end: [] };
    case "maintenance": {
      const target = random.chance(0.3) ? null : host;
      return { start: [{ do: "maintenance", host: target, on: true }], end: [{ do: "maintenance", host: target, on: false }] };
    }
  }
}

function randomStorageFault(random: Random): Fault {
  const roll = random.int(0, 2);
  if (roll === 0) return { kind: "hang" };
  if (roll === 1) return { kind: "error", code: "EIO" };
  return { kind: "delay", ms: random.int(1_000, 30_000) };
}
