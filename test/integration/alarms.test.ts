/**
 * Alarms over real HTTP: a real `fitha controller` (the built binary, real etcd) sends the alarm
 * of its own election and of events written by others to a webhook receiver in this test, retries
 * while the receiver fails, records its cursor, and never logs the URL's token.
 * Queue, retry and cursor logic on virtual time: test/unit/alarms.test.ts.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { appendFile, readFile, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { appendEvent } from "../../src/store/events.ts";
import { daemonCommand, runFitha } from "../helpers/fitha.ts";
import { eventually } from "../helpers/eventually.ts";
import { metricsUrl, scrape, valueOf } from "../helpers/metrics.ts";
import { startManagement, type ManagementFixture } from "../helpers/management.ts";
import { terminate } from "../helpers/terminate.ts";

let cluster: ManagementFixture;
beforeAll(async () => {
  cluster = await startManagement("alarms");
}, 20_000);
afterAll(async () => {
  await cluster?.stop();
});

/** A webhook receiver: answers 503 to the first `failFirst` requests, then 204; keeps every body. */
function receiver(failFirst: number) {
  const bodies: Array<Record<string, unknown>> = [];
  let requests = 0;
  const server = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    async fetch(request) {
      requests++;
      if (requests <= failFirst) return new Response("receiver starting up", { status: 503 });
      expect(request.method).toBe("POST");
      expect(request.headers.get("content-type")).toBe("application/json");
      bodies.push((await request.json()) as Record<string, unknown>);
      return new Response(null, { status: 204 });
    },
  });
  return { url: `http://127.0.0.1:${server.port}/hooks/fitha`, bodies, requests: () => requests, [Symbol.dispose]: () => server.stop(true) };
}

test("the leader's election and another daemon's event reach the webhook, after retries; the cursor follows; metrics count them; the token is never logged", async () => {
  using hook = receiver(2);
  const scope = await cluster.scope("relay");
  const token = "tok-3f9a1c7e";
  // The scope's file has [metrics] turned off: on here, on a free port.
  await writeFile(scope.config, (await readFile(scope.config, "utf8")).replace('controller_address = ""', 'controller_address = "127.0.0.1:0"'));
  await appendFile(scope.config, `\n[controller]\nname = "ctl-1"\nelection_ttl_ms = 3000\n[alarms]\nwebhook_url = "${hook.url}?token=${token}"\nwebhook_timeout_ms = 2000\n`);
  const logFile = join(dirname(scope.config), "controller.log");
  const controller = Bun.spawn(daemonCommand(["controller", "--config", scope.config, "--log-format", "json"]), { stdout: "pipe", stderr: Bun.file(logFile) });
  try {
    // Attempts at 0, 1 and 3 s: the third is delivered.
    await eventually("the leader-change alarm", () => hook.bodies.length >= 1, 15_000);
    expect(hook.requests()).toBe(3);
    expect(hook.bodies[0]).toEqual({
      alarm: "leader-change",
      status: "firing",
      severity: "warning",
      host: null,
      reason: "controller ctl-1 leads",
      action: expect.stringContaining("check why the previous leader stopped"),
      event: { sequence: expect.stringMatching(/^\d{15}-[0-9a-z]{8}$/), time: expect.any(String), kind: "leader-elected", by: "controller@ctl-1" },
      cluster: "/relay",
    });
    await appendEvent(scope.kv, scope.keys, { time: new Date().toISOString(), kind: "vm-added", host: null, reason: "not an alarm", by: "cli@test" });
    await appendEvent(scope.kv, scope.keys, { time: new Date().toISOString(), kind: "recovery-failed", host: "compute-2", reason: "vm-9: no host with room after 5 attempts", by: "controller@ctl-1" });
    await eventually("the recovery-failed alarm", () => hook.bodies.length >= 2, 10_000);
    expect(hook.bodies.map((b) => b["alarm"])).toEqual(["leader-change", "recovery-failed"]);
    expect(hook.bodies[1]).toMatchObject({ host: "compute-2", severity: "critical", reason: "vm-9: no host with room after 5 attempts" });
    const sequence = (hook.bodies[1]!["event"] as { sequence: string }).sequence;
    await eventually("the cursor at the last alarm", async () => (await scope.kv.get(scope.keys.alarmCursor))?.value.includes(sequence) === true, 5_000);
    const scraped = await scrape(await metricsUrl(logFile));
    expect([valueOf(scraped, "fitha_controller_alarms_total", { outcome: "delivered" }), valueOf(scraped, "fitha_controller_alarms_total", { outcome: "given_up" }), valueOf(scraped, "fitha_controller_alarm_queue")]).toEqual([2, 0, 0]);
  } finally {
    await terminate(controller, 5_000);
  }
  const log = (await readFile(logFile, "utf8")) + (await new Response(controller.stdout).text());
  expect(log).toContain("alarm not delivered: will retry");
  expect(log).toContain("(credentials and query hidden)");
  expect(log).not.toContain(token);
}, 40_000);

test("a webhook URL that is not http(s) is refused at start, naming the key", async () => {
  const scope = await cluster.scope("bad-url");
  await appendFile(scope.config, `\n[alarms]\nwebhook_url = "http://[not-a-host/x"\n`);
  const result = await runFitha(["controller", "--config", scope.config]);
  expect(result.exitCode).toBe(2);
  expect(result.stderr).toContain("alarms.webhook_url");
}, 20_000);

test("fitha alarms test: one test alarm to the webhook, its answer reported; fitha alarms list --json is the catalogue", async () => {
  const scope = await cluster.scope("test-command");
  using hook = receiver(1);
  await appendFile(scope.config, `\n[alarms]\nwebhook_url = "${hook.url}"\n`);
  const refused = await runFitha(["alarms", "test", "--config", scope.config]);
  expect(refused.exitCode).toBe(1);
  expect(refused.stderr).toContain(`${hook.url} did not take the test alarm: HTTP 503: receiver starting up`);
  const sent = await runFitha(["alarms", "test", "--config", scope.config]);
  expect(sent).toMatchObject({ exitCode: 0, stdout: `test alarm delivered to ${hook.url}\n` });
  expect(hook.bodies).toEqual([{ alarm: "test", status: "firing", severity: "info", host: null, reason: expect.stringContaining("with fitha alarms test"), action: "None: a test.", event: null, cluster: "/test-command" }]);
  const list = JSON.parse((await runFitha(["alarms", "list", "--json"])).stdout) as { alarms: Array<{ name: string; fired_by: string[] }> };
  expect(list.alarms.find((a) => a.name === "fence-executed")?.fired_by).toEqual(["self-fenced", "lockd-fenced", "leases-taken"]);
}, 20_000);
