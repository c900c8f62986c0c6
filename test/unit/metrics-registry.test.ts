/** The metrics registry, its text exposition (checked with the strict parser) and its HTTP server on a real socket. */
import { afterEach, describe, expect, test } from "bun:test";
import { Writable } from "node:stream";
import { configureLogging } from "../../src/log.ts";
import { exposition, serveMetrics } from "../../src/metrics/http-server.ts";
import { parseListenAddress } from "../../src/metrics/listen-address.ts";
import { MetricsRegistry, registerBuildInfo } from "../../src/metrics/registry.ts";
import { parsePrometheusText, sampleOf } from "../helpers/prometheus-text.ts";

/** Log lines (json) written while the test runs. */
function captureLog(): Array<Record<string, unknown>> {
  const lines: Array<Record<string, unknown>> = [];
  const stream = new Writable({
    write(chunk, _encoding, done) {
      for (const line of String(chunk).split("\n")) if (line !== "") lines.push(JSON.parse(line) as Record<string, unknown>);
      done();
    },
  });
  configureLogging({ level: "info", format: "json", stream });
  return lines;
}

afterEach(() => configureLogging({ level: "info", format: "human" }));

describe("MetricsRegistry", () => {
  test("renders counters, gauges and histograms in text format 0.0.4", () => {
    const registry = new MetricsRegistry();
    const answers = registry.counter({ name: "fitha_test_answers_total", help: "Answers.", labels: ["answer"], values: { answer: ["fence", "no-fence"] } });
    const age = registry.gauge({ name: "fitha_test_age_seconds", help: "Age.", labels: ["plane"] });
    const latency = registry.histogram({ name: "fitha_test_latency_seconds", help: "Latency.", buckets: [0.1, 1] });
    answers.inc({ answer: "fence" });
    answers.inc({ answer: "fence" }, 2);
    age.set({ plane: "storage" }, 1.5);
    age.set({ plane: "management" }, 0.25);
    for (const seconds of [0.05, 0.1, 0.5, 3]) latency.observe({}, seconds);
    expect(registry.render()).toBe(
      [
        "# HELP fitha_test_answers_total Answers.",
        "# TYPE fitha_test_answers_total counter",
        'fitha_test_answers_total{answer="fence"} 3',
        'fitha_test_answers_total{answer="no-fence"} 0',
        "# HELP fitha_test_age_seconds Age.",
        "# TYPE fitha_test_age_seconds gauge",
        'fitha_test_age_seconds{plane="management"} 0.25',
        'fitha_test_age_seconds{plane="storage"} 1.5',
        "# HELP fitha_test_latency_seconds Latency.",
        "# TYPE fitha_test_latency_seconds histogram",
        'fitha_test_latency_seconds_bucket{le="0.1"} 2',
        'fitha_test_latency_seconds_bucket{le="1"} 3',
        'fitha_test_latency_seconds_bucket{le="+Inf"} 4',
        "fitha_test_latency_seconds_sum 3.65",
        "fitha_test_latency_seconds_count 4",
        "",
      ].join("\n"),
    );
    expect(() => parsePrometheusText(registry.render())).not.toThrow();
  });

  test("escapes label values and HELP text; numbers include +Inf, -Inf and NaN", () => {
    const registry = new MetricsRegistry();
    const gauge = registry.gauge({ name: "fitha_test_value", help: 'A \\ back"slash\nand a line.', labels: ["host"] });
    gauge.set({ host: 'a"b\\c\nd' }, Infinity);
    gauge.set({ host: "minus" }, -Infinity);
    gauge.set({ host: "nan" }, NaN);
    const text = registry.render();
    expect(text).toContain('# HELP fitha_test_value A \\\\ back"slash\\nand a line.\n');
    expect(text).toContain('fitha_test_value{host="a\\"b\\\\c\\nd"} +Inf\n');
    const families = parsePrometheusText(text);
    expect(families.get("fitha_test_value")!.help).toBe('A \\ back"slash\nand a line.');
    expect(sampleOf(families, "fitha_test_value", { host: 'a"b\\c\nd' }).value).toBe(Infinity);
    expect(sampleOf(families, "fitha_test_value", { host: "minus" }).value).toBe(-Infinity);
    expect(sampleOf(families, "fitha_test_value", { host: "nan" }).value).toBeNaN();
  });

  test("labelled histograms: one set of buckets per series, cumulative, +Inf equal to the count", () => {
    const registry = new MetricsRegistry();
    const latency = registry.histogram({ name: "fitha_test_renewal_seconds", help: "Renewals.", labels: ["plane"], buckets: [0.01, 0.1, 1] });
    for (const [plane, seconds] of [["service", 0.5], ["management", 0.001], ["management", 2], ["service", 0.05]] as const) latency.observe({ plane }, seconds);
    const families = parsePrometheusText(registry.render());
    const bucket = (plane: string, le: string) => sampleOf(families, "fitha_test_renewal_seconds_bucket", { plane, le }).value;
    expect([bucket("management", "0.01"), bucket("management", "0.1"), bucket("management", "1"), bucket("management", "+Inf")]).toEqual([1, 1, 1, 2]);
    expect([bucket("service", "0.01"), bucket("service", "0.1"), bucket("service", "1"), bucket("service", "+Inf")]).toEqual([0, 1, 2, 2]);
    expect(sampleOf(families, "fitha_test_renewal_seconds_sum", { plane: "management" }).value).toBe(2.001);
    expect(sampleOf(families, "fitha_test_renewal_seconds_count", { plane: "service" }).value).toBe(2);
  });

  test("collected families are refilled at every scrape: what is gone leaves no series; a failing collector empties only its family", () => {
    const registry = new MetricsRegistry();
    let hosts: Record<string, number> = { "host-1": 3, "host-2": 1 };
    let broken = false;
    registry.gauge({
      name: "fitha_test_host_age_seconds",
      help: "Per host.",
      labels: ["host"],
      collect: (emit) => {
        if (broken) throw new Error("state unreadable");
        for (const [host, age] of Object.entries(hosts)) emit({ host }, age);
      },
    });
    registry.gauge({ name: "fitha_test_phase", help: "Phase.", labels: ["phase"], values: { phase: ["ok", "failed"] }, collect: (emit) => emit({ phase: "failed" }, 1) });
    registry.counter({ name: "fitha_test_steps_total", help: "Counted by the daemon.", collect: (emit) => emit({}, 42) });
    let families = parsePrometheusText(registry.render());
    expect(families.get("fitha_test_host_age_seconds")!.samples.map((s) => [s.labels["host"], s.value])).toEqual([["host-1", 3], ["host-2", 1]]);
    expect(families.get("fitha_test_phase")!.samples.map((s) => [s.labels["phase"], s.value])).toEqual([["failed", 1], ["ok", 0]]);
    expect(sampleOf(families, "fitha_test_steps_total").value).toBe(42);
    hosts = { "host-2": 5 };
    families = parsePrometheusText(registry.render());
    expect(families.get("fitha_test_host_age_seconds")!.samples.map((s) => [s.labels["host"], s.value])).toEqual([["host-2", 5]]);
    const log = captureLog();
    broken = true;
    families = parsePrometheusText(registry.render());
    expect(families.get("fitha_test_host_age_seconds")!.samples).toEqual([]);
    expect(sampleOf(families, "fitha_test_steps_total").value).toBe(42);
    expect(log).toContainEqual(expect.objectContaining({ level: "error", msg: "a metric could not be collected", metric: "fitha_test_host_age_seconds" }));
  });

  test("series are bounded: past maxSeries new ones are dropped, with one error logged", () => {
    const log = captureLog();
    const registry = new MetricsRegistry();
    const gauge = registry.gauge({ name: "fitha_test_bounded", help: "Bounded.", labels: ["vm"], maxSeries: 3 });
    for (let i = 0; i < 10; i++) gauge.set({ vm: `vm-${i}` }, i);
    gauge.set({ vm: "vm-1" }, 11);
    const samples = parsePrometheusText(registry.render()).get("fitha_test_bounded")!.samples;
    expect(samples.map((s) => [s.labels["vm"], s.value])).toEqual([["vm-0", 0], ["vm-1", 11], ["vm-2", 2]]);
    expect(log.filter((line) => line["level"] === "error")).toEqual([expect.objectContaining({ msg: "a metric update was dropped (a bug in fitha; further ones of this metric are not logged)", metric: "fitha_test_bounded", problem: "its 3 series are reached (a label with unbounded values?)" })]);
  });

  test("a bad update (wrong labels, an undeclared value, a counter going down, NaN) is dropped and logged, never thrown: the daemon goes on", () => {
    const log = captureLog();
    const registry = new MetricsRegistry();
    const counter = registry.counter({ name: "fitha_test_answers_total", help: "x", labels: ["answer"], values: { answer: ["fence"] } });
    const histogram = registry.histogram({ name: "fitha_test_seconds", help: "x", buckets: [1] });
    counter.inc({ answer: "maybe" });
    counter.inc({} as { answer: string });
    counter.inc({ answer: "fence" }, -1);
    counter.inc({ answer: "fence" });
    histogram.observe({}, NaN);
    const families = parsePrometheusText(registry.render());
    expect(families.get("fitha_test_answers_total")!.samples.map((s) => [s.labels["answer"], s.value])).toEqual([["fence", 1]]);
    expect(sampleOf(families, "fitha_test_seconds_count").value).toBe(0);
    expect(log.filter((line) => line["level"] === "error").map((line) => [line["metric"], line["problem"]])).toEqual([
      ["fitha_test_answers_total", 'answer="maybe" is not one of fence'],
      ["fitha_test_seconds", "NaN observed"],
    ]);
  });

  test("bad families are refused when registered: bad names, counters without _total, reserved labels, bad buckets, too many combinations, a name twice", () => {
    const registry = new MetricsRegistry();
    expect(() => registry.gauge({ name: "fitha-bad", help: "x" })).toThrow(/not a Prometheus metric name/);
    expect(() => registry.counter({ name: "fitha_things", help: "x" })).toThrow(/must end in _total/);
    expect(() => registry.gauge({ name: "fitha_things_total", help: "x" })).toThrow(/must not end in _total/);
    expect(() => registry.gauge({ name: "fitha_a", help: "x", labels: ["__reserved"] })).toThrow(/cannot be a label name/);
    expect(() => registry.histogram({ name: "fitha_b_seconds", help: "x", labels: ["le"], buckets: [1] })).toThrow(/cannot be a label name/);
    expect(() => registry.histogram({ name: "fitha_c_seconds", help: "x", buckets: [1, 1] })).toThrow(/strictly increasing/);
    expect(() => registry.gauge({ name: "fitha_d", help: "x", labels: ["a", "b"], values: { a: ["1", "2"], b: ["1", "2"] }, maxSeries: 3 })).toThrow(/exceed its 3 series/);
    registry.counter({ name: "fitha_e_total", help: "x" });
    expect(() => registry.counter({ name: "fitha_e_total", help: "x" })).toThrow(/registered twice/);
  });

  test("fitha_build_info carries the version and commit", () => {
    const registry = new MetricsRegistry();
    registerBuildInfo(registry, { version: "1.2.3", commit: "abc-dirty" });
    expect(sampleOf(parsePrometheusText(registry.render()), "fitha_build_info", { version: "1.2.3", commit: "abc-dirty" }).value).toBe(1);
  });
});

describe("listen addresses", () => {
  test("HOST:PORT, [IPv6]:PORT and \"\" (off); anything else refused", () => {
    expect(parseListenAddress("127.0.0.1:9733")).toEqual({ hostname: "127.0.0.1", port: 9733 });
    expect(parseListenAddress("[::1]:0")).toEqual({ hostname: "::1", port: 0 });
    expect(parseListenAddress("metrics.example:65535")).toEqual({ hostname: "metrics.example", port: 65535 });
    expect(parseListenAddress("")).toBeUndefined();
    for (const bad of ["127.0.0.1", "127.0.0.1:65536", ":9733", "127.0.0.1:09", "::1:9733", "host:port", "a b:1"]) expect(() => parseListenAddress(bad)).toThrow(RangeError);
  });
});

describe("serveMetrics", () => {
  test("GET /metrics serves the exposition with its content type; other paths 404, other methods 405", async () => {
    const registry = new MetricsRegistry();
    const counter = registry.counter({ name: "fitha_test_scrapes_total", help: "x" });
    const server = serveMetrics(registry, "127.0.0.1:0", "--metrics-address");
    expect(server).toBeDefined();
    try {
      expect(server!.url).toMatch(/^http:\/\/127\.0\.0\.1:[1-9][0-9]*\/metrics$/);
      counter.inc({}, 2);
      const response = await fetch(server!.url);
      expect(response.status).toBe(200);
      expect(response.headers.get("content-type")).toBe(exposition);
      expect(sampleOf(parsePrometheusText(await response.text()), "fitha_test_scrapes_total").value).toBe(2);
      const other = await fetch(server!.url.replace("/metrics", "/"));
      expect(other.status).toBe(404);
      await other.text();
      const post = await fetch(server!.url, { method: "POST", body: "x" });
      expect([post.status, post.headers.get("allow")]).toEqual([405, "GET, HEAD"]);
      await post.text();
    } finally {
      await server?.stop();
    }
  });

  test("an address that cannot be bound is an error naming it and the setting, and no server (the daemon runs on)", async () => {
    const log = captureLog();
    const registry = new MetricsRegistry();
    const first = serveMetrics(registry, "127.0.0.1:0", "metrics.agent_address")!;
    try {
      const taken = first.url.replace(/^http:\/\/(.*)\/metrics$/, "$1");
      expect(serveMetrics(registry, taken, "metrics.agent_address")).toBeUndefined();
      expect(log).toContainEqual(expect.objectContaining({ level: "error", msg: `cannot serve metrics on ${taken}; running on without metrics (change metrics.agent_address, or "" to turn them off)`, address: taken, setting: "metrics.agent_address" }));
    } finally {
      await first.stop();
    }
    expect(serveMetrics(registry, "", "metrics.agent_address")).toBeUndefined();
    expect(log).toContainEqual(expect.objectContaining({ level: "info", msg: 'metrics not served (metrics.agent_address is "")' }));
  });
});
