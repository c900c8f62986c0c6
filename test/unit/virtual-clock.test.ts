import { describe, expect, test } from "bun:test";
import { VirtualClock } from "../../src/core/clock.ts";
import { Random } from "../../src/sim/random.ts";

describe("VirtualClock", () => {
  test("wakes sleepers by due time, first-come first-served at one instant, including sleeps made while firing", async () => {
    const clock = new VirtualClock(0);
    const random = new Random(7);
    const woken: Array<{ id: number; atMs: number; dueMs: number }> = [];
    const sleeper = async (id: number, ms: number, again: boolean): Promise<void> => {
      const dueMs = clock.nowMs() + ms;
      await clock.sleep(ms);
      woken.push({ id, atMs: clock.nowMs(), dueMs });
      // A sleep made at a firing lands among the pending ones, as a heap must keep them.
      if (again) await sleeper(id + 10_000, random.int(0, 50), false);
    };
    const all: Promise<void>[] = [];
    for (let id = 0; id < 2_000; id++) all.push(sleeper(id, random.int(0, 100), id % 3 === 0));
    await clock.run(Promise.all(all));
    expect(woken).toHaveLength(2_000 + Math.ceil(2_000 / 3));
    for (const w of woken) expect(w.atMs).toBe(w.dueMs);
    for (let i = 1; i < woken.length; i++) {
      const [a, b] = [woken[i - 1]!, woken[i]!];
      expect(b.atMs).toBeGreaterThanOrEqual(a.atMs);
      // Same instant, both made before the clock got there: creation order.
      if (a.atMs === b.atMs && a.id < 10_000 && b.id < 10_000) expect(b.id).toBeGreaterThan(a.id);
    }
  });

  test("advance stops at its target and leaves later sleepers pending", async () => {
    const clock = new VirtualClock(0);
    const woken: number[] = [];
    for (const ms of [30, 10, 20, 40]) void clock.sleep(ms).then(() => woken.push(ms));
    await clock.advance(25);
    expect(woken).toEqual([10, 20]);
    expect(clock.nowMs()).toBe(25);
    await clock.advance(100);
    expect(woken).toEqual([10, 20, 30, 40]);
  });
});
