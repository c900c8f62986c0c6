/** `fitha events`: listing and --follow, the built binary against a real etcd. */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { appendEvent } from "../../src/store/events.ts";
import type { EventRecord } from "../../src/store/records.ts";
import { fithaBinary } from "../helpers/fitha.ts";
import { readJsonLines } from "../helpers/json-lines.ts";
import { commandTestTimeoutMs, startManagement, type ManagementFixture, type Scope } from "../helpers/management.ts";
import { terminate } from "../helpers/terminate.ts";
import { eventKinds } from "../../src/store/records.ts";

let cluster: ManagementFixture;

beforeAll(async () => {
  cluster = await startManagement("events-cmd");
}, commandTestTimeoutMs);

afterAll(async () => {
  await cluster?.stop();
});

const minuteMs = 60_000;

function event(minutesAgo: number, kind: EventRecord["kind"], host: string | null): EventRecord {
  return { time: new Date(Date.now() - minutesAgo * minuteMs).toISOString(), kind, host, reason: `${kind} ${minutesAgo} min ago`, by: "controller@ctl-1" };
}

/** Five events over the last three days, appended out of order. */
async function fillLog(scope: Scope): Promise<void> {
  const events = [event(3 * 24 * 60, "leader-elected", null), event(30, "plane-down", "compute-1"), event(2 * 60, "plane-down", "compute-2"), event(20, "plane-up", "compute-1"), event(1, "plane-down", "compute-1")];
  for (const e of events) await appendEvent(scope.kv, scope.keys, e);
}

const reasons = (stdout: string) => (JSON.parse(stdout).events as Array<{ reason: string }>).map((e) => e.reason);

describe("fitha events", () => {
  test("the last N, oldest first; --host and --kind filter; the JSON shape", async () => {
    const scope = await cluster.scope("list");
    await fillLog(scope);
    const [all, last2, host, kind, both, text] = await Promise.all([
      scope.fitha("events", "--json"),
      scope.fitha("events", "--json", "--limit", "2"),
      scope.fitha("events", "--json", "--host", "compute-1"),
      scope.fitha("events", "--json", "--kind", "plane-down", "--limit", "2"),
      scope.fitha("events", "--json", "--kind", "plane-down", "--host", "compute-1"),
      scope.fitha("events", "--limit", "2"),
    ]);
    expect(reasons(all.stdout)).toEqual(["leader-elected 4320 min ago", "plane-down 120 min ago", "plane-down 30 min ago", "plane-up 20 min ago", "plane-down 1 min ago"]);
    expect(reasons(last2.stdout)).toEqual(["plane-up 20 min ago", "plane-down 1 min ago"]);
    expect(reasons(host.stdout)).toEqual(["plane-down 30 min ago", "plane-up 20 min ago", "plane-down 1 min ago"]);
    expect(reasons(kind.stdout)).toEqual(["plane-down 30 min ago", "plane-down 1 min ago"]);
    expect(reasons(both.stdout)).toEqual(["plane-down 30 min ago", "plane-down 1 min ago"]);
    const document = JSON.parse(last2.stdout);
    expect(document).toEqual({
      events: [
        { sequence: expect.stringMatching(/^\d{15}-[0-9a-z]{8}$/), time: expect.any(String), host: "compute-1", kind: "plane-up", reason: "plane-up 20 min ago", by: "controller@ctl-1" },
        { sequence: expect.stringMatching(/^\d{15}-[0-9a-z]{8}$/), time: expect.any(String), host: "compute-1", kind: "plane-down", reason: "plane-down 1 min ago", by: "controller@ctl-1" },
      ],
      bad_values: [],
    });
    const lines = text.stdout.trimEnd().split("\n");
    expect(lines).toEqual([
      `${document.events[0].time}  compute-1         plane-up              plane-up 20 min ago  (by controller@ctl-1)`,
      `${document.events[1].time}  compute-1         plane-down            plane-down 1 min ago  (by controller@ctl-1)`,
    ]);
  }, commandTestTimeoutMs);

  test("bad options are usage errors", async () => {
    const scope = await cluster.scope("usage");
    const cases: Array<[string[], string]> = [
      [["--limit", "0"], 'fitha: events: --limit must be a whole number from 1 to 10000, not "0"\n'],
      [["--limit", "ten"], 'fitha: events: --limit must be a whole number from 1 to 10000, not "ten"\n'],
      [["--kind", "meteor"], `fitha: events: --kind must be one of ${eventKinds.join(", ")}, not "meteor"\n`],
    ];
    const results = await Promise.all(cases.map(([args]) => scope.fitha("events", ...args)));
    cases.forEach(([args, stderr], i) => expect({ args, ...results[i] }).toEqual({ args, exitCode: 2, stdout: "", stderr }));
  }, commandTestTimeoutMs);

  test("--follow prints the last N, then each new matching event, until SIGTERM", async () => {
    const scope = await cluster.scope("follow");
    await fillLog(scope);
    const child = Bun.spawn([fithaBinary, "events", "--follow", "--json", "--limit", "1", "--host", "compute-1", "--config", scope.config], { stdout: "pipe", stderr: "pipe", env: {} });
    try {
      const printed: Array<{ reason: string }> = [];
      const reading = readJsonLines<{ reason: string }>(child.stdout, (line) => printed.push(line));
      const until = async (count: number) => {
        // Generous for a loaded machine; each wait is bounded.
        const deadline = Date.now() + 10_000;
        while (printed.length < count && Date.now() < deadline) await Bun.sleep(20);
        expect(printed).toHaveLength(count);
      };
      await until(1);
      expect(printed[0]!.reason).toBe("plane-down 1 min ago");
      await appendEvent(scope.kv, scope.keys, event(0, "plane-up", "compute-2"));
      await appendEvent(scope.kv, scope.keys, event(0, "plane-up", "compute-1"));
      await until(2);
      expect(printed[1]!.reason).toBe("plane-up 0 min ago");
      await terminate(child, 5_000);
      await reading;
      expect(child.exitCode).toBe(0);
      expect(printed).toHaveLength(2);
      expect(await new Response(child.stderr).text()).toBe("");
    } finally {
      child.kill("SIGKILL");
    }
  }, commandTestTimeoutMs);
});
