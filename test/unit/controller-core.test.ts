/**
 * The controller's decisions as a pure step over a plane view, on a clock of plain numbers:
 * every strategy row, the grace period, maintenance, self-defense with its hysteresis, platform
 * faults, and one recovery request per episode.
 */
import { describe, expect, test } from "bun:test";
import { planes, type Plane } from "../../src/config/fitha-config.ts";
import { ControllerCore, type ControllerEffect, type ControllerInputs } from "../../src/core/controller-core.ts";
import { PlaneView } from "../../src/core/plane-view.ts";
import { decodeSettings, defaultSettings, withSetting } from "../../src/core/settings.ts";
import { defaultStrategy, haWanted, rowNumber, type PlaneStates } from "../../src/core/strategy.ts";
import { DecodeError } from "../../src/store/codec.ts";

const graceMs = defaultStrategy.graceMs;

class Cluster {
  nowMs = 1_000_000;
  readonly view = new PlaneView(this.nowMs);
  readonly core = new ControllerCore();
  globalMaintenance = false;
  readonly hostsInMaintenance = new Set<string>();
  readonly openRequests = new Set<string>();
  settings = defaultSettings;

  constructor(hosts: number) {
    for (const plane of planes) this.view.cluster(plane, true, this.nowMs);
    for (let i = 1; i <= hosts; i++) for (const plane of planes) this.view.heartbeat(`host-${i}`, plane, true, this.nowMs);
  }

  set(host: string, states: Partial<PlaneStates>): void {
    for (const [plane, state] of Object.entries(states) as Array<[Plane, "up" | "down"]>) this.view.heartbeat(host, plane, state === "up", this.nowMs);
  }

  step(advanceMs = 0) {
    this.nowMs += advanceMs;
    const inputs: ControllerInputs = {
      view: this.view,
      strategy: defaultStrategy,
      settings: this.settings,
      globalMaintenance: this.globalMaintenance,
      hostsInMaintenance: this.hostsInMaintenance,
      openRequests: this.openRequests,
      nowMs: this.nowMs,
    };
    return this.core.step(inputs);
  }
}

const requests = (effects: readonly ControllerEffect[]) => effects.filter((e) => e.type === "request-recovery").map((e) => (e as { host: string }).host);
const kinds = (effects: readonly ControllerEffect[]) => effects.filter((e) => e.type === "event").map((e) => `${(e as { kind: string }).kind}:${(e as { host: string | null }).host ?? "-"}`);

describe("controller core", () => {
  for (let row = 0; row < 7; row++) {
    const states: PlaneStates = { management: row & 4 ? "up" : "down", service: row & 2 ? "up" : "down", storage: row & 1 ? "up" : "down" };
    const wanted = haWanted(defaultStrategy, states);
    test(`row ${row} (${JSON.stringify(states)}): ${wanted ? "recovery requested once the grace period has passed, not before, and once" : "no recovery, ever"}`, () => {
      const c = new Cluster(10);
      const start = c.step().effects;
      expect(start[0]).toEqual({ type: "set-mode", mode: "normal", reason: "HA active" });
      expect(start.slice(1).map((e) => e.type === "host-state" && `${e.host}:${e.decision.kind}`).sort()).toEqual(Array.from({ length: 10 }, (_, i) => `host-${i + 1}:no-ha`).sort());
      c.set("host-3", states);
      expect(rowNumber(states)).toBe(row);
      const first = c.step();
      expect(first.decisions.get("host-3")).toMatchObject(wanted ? { kind: "no-ha", why: "grace" } : { kind: "no-ha", why: "strategy" });
      // Either way the row is looked at again when it has lasted the grace period (to recover, or to report it).
      expect(first.nextWakeMs).toBe(c.nowMs + graceMs);
      expect(requests(c.step(graceMs - 1).effects)).toEqual([]);
      const after = c.step(1);
      expect(requests(after.effects)).toEqual(wanted ? ["host-3"] : []);
      expect(after.decisions.get("host-3")!.kind).toBe(wanted ? "ha-needed" : "no-ha");
      expect(requests(c.step(60_000).effects)).toEqual([]);
      for (let other = 1; other <= 10; other++) if (other !== 3) expect(after.decisions.get(`host-${other}`)).toMatchObject({ kind: "no-ha", why: "healthy" });
    });
  }

  test("a plane back within the grace period cancels; a new episode after a healthy spell is requested again", () => {
    const c = new Cluster(4);
    c.step();
    c.set("host-1", { management: "down", service: "down" });
    c.step(1_000);
    c.set("host-1", { management: "up", service: "up" });
    expect(requests(c.step(graceMs).effects)).toEqual([]);
    c.set("host-1", { storage: "down" });
    expect(requests(c.step(graceMs - 1).effects)).toEqual([]);
    expect(requests(c.step(1).effects)).toEqual(["host-1"]);
    c.set("host-1", { storage: "up" });
    c.step(1_000);
    c.set("host-1", { storage: "down" });
    expect(requests(c.step(graceMs).effects)).toEqual(["host-1"]);
  });

  test("a recovery already open in etcd (requested by an earlier leader) is not requested again", () => {
    const c = new Cluster(4);
    c.openRequests.add("host-2");
    c.set("host-2", { management: "down", service: "down", storage: "down" });
    c.step();
    const step = c.step(graceMs);
    expect(step.decisions.get("host-2")!.kind).toBe("ha-needed");
    expect(requests(step.effects)).toEqual([]);
  });

  test("maintenance: global → no HA for anyone (mode maintenance); per host → no HA for that host", () => {
    const c = new Cluster(10);
    c.step();
    c.globalMaintenance = true;
    c.set("host-1", { management: "down", service: "down", storage: "down" });
    const on = c.step(graceMs);
    expect(on.mode).toBe("maintenance");
    expect(on.effects).toContainEqual({ type: "set-mode", mode: "maintenance", reason: "global maintenance is on" });
    expect(on.decisions.get("host-1")).toMatchObject({ kind: "no-ha", why: "maintenance" });
    expect(requests(on.effects)).toEqual([]);
    c.globalMaintenance = false;
    c.hostsInMaintenance.add("host-1");
    c.set("host-2", { storage: "down" });
    const host = c.step(graceMs);
    expect(host.decisions.get("host-1")).toMatchObject({ kind: "no-ha", why: "maintenance", reason: expect.stringContaining("the host is in maintenance") });
    expect(requests(host.effects)).toEqual(["host-2"]);
    c.hostsInMaintenance.delete("host-1");
    expect(requests(c.step().effects)).toEqual(["host-1"]);
  });

  test("self-defense at 50 % down: no HA, one event; recovery only at 70 % healthy, not at 60 %", () => {
    const c = new Cluster(10);
    c.step();
    for (const i of [1, 2, 3, 4, 5]) c.set(`host-${i}`, { management: "down", service: "down", storage: "down" });
    const entered = c.step(graceMs);
    expect(entered.mode).toBe("self-defense");
    expect(kinds(entered.effects)).toContain("self-defense-entered:-");
    expect(requests(entered.effects)).toEqual([]);
    expect(entered.decisions.get("host-1")).toMatchObject({ kind: "no-ha", why: "self-defense" });
    c.set("host-5", { management: "up", service: "up", storage: "up" });
    expect(c.step(1_000).mode).toBe("self-defense"); // 4 down, 6 healthy = 60 %
    c.set("host-4", { management: "up", service: "up", storage: "up" });
    const left = c.step(1_000); // 7 healthy = 70 %
    expect(left.mode).toBe("normal");
    expect(kinds(left.effects)).toContain("self-defense-left:-");
    expect(requests(left.effects).sort()).toEqual(["host-1", "host-2", "host-3"]);
  });

  test("a plane whose cluster the controller cannot reach: platform fault, no HA from it, grace restarts when it is back", () => {
    const c = new Cluster(4);
    c.step();
    c.set("host-1", { storage: "down" });
    c.step(graceMs / 2);
    c.view.cluster("storage", false, c.nowMs);
    const blind = c.step();
    expect(kinds(blind.effects)).toEqual(["platform-fault:-"]);
    expect(blind.decisions.get("host-1")).toMatchObject({ kind: "no-ha", why: "platform-fault" });
    expect(requests(c.step(graceMs).effects)).toEqual([]);
    c.view.cluster("storage", true, c.nowMs);
    c.view.resync("storage", new Set(["host-2", "host-3", "host-4"]), c.nowMs);
    const back = c.step();
    expect(kinds(back.effects)).toEqual(["platform-recovered:-"]);
    expect(back.decisions.get("host-1")).toMatchObject({ kind: "no-ha", why: "grace" });
    expect(requests(c.step(graceMs).effects)).toEqual(["host-1"]);
  });

  test("plane changes are events", () => {
    const c = new Cluster(2);
    c.step();
    c.set("host-2", { service: "down" });
    const down = c.step();
    expect(kinds(down.effects)).toEqual(["plane-down:host-2"]);
    expect(down.effects.filter((e) => e.type === "host-state").map((e) => e.type === "host-state" && e.host)).toEqual(["host-2"]);
    // A row the strategy excludes is reported once it has lasted the grace period, not while planes are still changing.
    const settled = c.step(graceMs);
    expect(kinds(settled.effects)).toEqual(["ha-not-needed:host-2"]);
    expect(settled.effects.find((e) => e.type === "event")).toMatchObject({ reason: "management up, storage up, service down (strategy row 5): the strategy says no HA" });
    c.set("host-2", { service: "up" });
    expect(kinds(c.step().effects)).toEqual(["plane-up:host-2"]);
  });
});

describe("runtime settings", () => {
  test("defaults: 20 s heartbeats living 60 s, self-defense at 50 % down, recovery at 70 % healthy", () => {
    expect(decodeSettings({}, "x")).toEqual(defaultSettings);
    expect(defaultSettings).toMatchObject({ heartbeatIntervalMs: 20_000, heartbeatTtlMs: 60_000, selfDefenseDownPercent: 50, selfRecoveryHealthyPercent: 70 });
  });

  test("a change is checked as a whole; bad values and names are refused with their reason", () => {
    expect(withSetting(defaultSettings, "recovery_concurrency", "40").recoveryConcurrency).toBe(40);
    const refused = (name: string, value: string) => {
      try {
        withSetting(defaultSettings, name, value);
      } catch (error) {
        return error instanceof DecodeError ? error.problems : [(error as Error).message];
      }
      return [];
    };
    expect(refused("heartbeat_interval_ms", "40000")).toEqual(["heartbeat_ttl_ms (60000) must be at least twice heartbeat_interval_ms (40000)"]);
    expect(refused("self_recovery_healthy_percent", "50")).toEqual(["self_recovery_healthy_percent (50) must be above 100 − self_defense_down_percent (50), or self-defense would flap"]);
    expect(refused("recovery_concurrency", "ten")).toEqual(['recovery_concurrency: expected an integer from 1 to 10000, got "ten"']);
    expect(refused("grace", "1")[0]).toStartWith('unknown setting "grace" (settings: heartbeat_interval_ms, ');
  });
});
