/** The strict text-format parser the metrics tests rely on: what it accepts, and that it refuses what is malformed. */
import { describe, expect, test } from "bun:test";
import { ParseError, parsePrometheusText, sampleOf } from "../helpers/prometheus-text.ts";

const valid = [
  "# A plain comment is ignored",
  "# HELP fitha_requests_total Requests served, with a \\\\ and a\\nline feed.",
  "# TYPE fitha_requests_total counter",
  'fitha_requests_total{code="200",path="/a\\"b\\\\c\\nd"} 3',
  'fitha_requests_total{code="500",path="/"} 0 1700000000000',
  "",
  "# HELP fitha_temperature_celsius A gauge.",
  "# TYPE fitha_temperature_celsius gauge",
  "fitha_temperature_celsius -1.5e-3",
  "# HELP fitha_wait_seconds A histogram.",
  "# TYPE fitha_wait_seconds histogram",
  'fitha_wait_seconds_bucket{plane="a",le="0.5"} 1',
  'fitha_wait_seconds_bucket{plane="a",le="1"} 1',
  'fitha_wait_seconds_bucket{plane="a",le="+Inf"} 2',
  'fitha_wait_seconds_sum{plane="a"} 7.25',
  'fitha_wait_seconds_count{plane="a"} 2',
  "# HELP fitha_nothing_yet A family without samples.",
  "# TYPE fitha_nothing_yet gauge",
  "",
].join("\n");

/** `valid` with one line replaced. */
function variant(search: string, replacement: string): string {
  if (!valid.includes(search)) throw new Error(`no ${search} in the valid text`);
  return valid.replace(search, replacement);
}

describe("parsePrometheusText", () => {
  test("parses families, HELP and TYPE, escaped label values, numbers, timestamps and histograms", () => {
    const families = parsePrometheusText(valid);
    expect([...families.keys()]).toEqual(["fitha_requests_total", "fitha_temperature_celsius", "fitha_wait_seconds", "fitha_nothing_yet"]);
    expect(families.get("fitha_requests_total")!.help).toBe("Requests served, with a \\ and a\nline feed.");
    expect(sampleOf(families, "fitha_requests_total", { code: "200" }).labels).toEqual({ code: "200", path: '/a"b\\c\nd' });
    expect(sampleOf(families, "fitha_requests_total", { code: "500" })).toEqual({ name: "fitha_requests_total", labels: { code: "500", path: "/" }, value: 0, timestampMs: 1700000000000 });
    expect(sampleOf(families, "fitha_temperature_celsius").value).toBe(-0.0015);
    expect(sampleOf(families, "fitha_wait_seconds_bucket", { le: "+Inf" }).value).toBe(2);
    expect(sampleOf(families, "fitha_wait_seconds_sum").value).toBe(7.25);
    expect(families.get("fitha_wait_seconds")!.type).toBe("histogram");
    expect(families.get("fitha_nothing_yet")!.samples).toEqual([]);
  });

  test("accepts +Inf, -Inf and NaN as values", () => {
    const text = "# HELP g x\n# TYPE g gauge\ng{a=\"1\"} +Inf\ng{a=\"2\"} -Inf\ng{a=\"3\"} NaN\n";
    const families = parsePrometheusText(text);
    expect(families.get("g")!.samples.map((s) => s.value)).toEqual([Infinity, -Infinity, NaN]);
  });

  /** What is wrong, the line of the valid text it changes, what replaces that line, the error expected. */
  const malformed: Array<[string, string, string, RegExp]> = [
    ["a bad metric name", "fitha_temperature_celsius -1.5e-3", "fitha-temperature 1", /not a metric name/],
    ["a bad label name", 'fitha_requests_total{code="500",path="/"} 0 1700000000000', 'fitha_requests_total{code="500",pa-th="/"} 0', /not a label name/],
    ["a label name starting with __", 'fitha_requests_total{code="500",path="/"} 0 1700000000000', 'fitha_requests_total{code="500",__path="/"} 0', /not a label name/],
    ["a bad escape", 'fitha_requests_total{code="500",path="/"} 0 1700000000000', 'fitha_requests_total{code="500",path="\\t"} 0', /bad escape/],
    ["an unterminated label value", 'fitha_requests_total{code="500",path="/"} 0 1700000000000', 'fitha_requests_total{code="500",path="/} 0', /unterminated|expected/],
    ["a label twice", 'fitha_requests_total{code="500",path="/"} 0 1700000000000', 'fitha_requests_total{code="500",code="501"} 0', /label code twice/],
    ["a trailing comma", 'fitha_requests_total{code="500",path="/"} 0 1700000000000', 'fitha_requests_total{code="500",path="/",} 0', /comma before/],
    ["a bad value", "fitha_temperature_celsius -1.5e-3", "fitha_temperature_celsius 1,5", /not a number/],
    ["a missing value", "fitha_temperature_celsius -1.5e-3", "fitha_temperature_celsius", /NAME\{LABELS\} VALUE/],
    ["a sample before its TYPE", "# TYPE fitha_temperature_celsius gauge", "fitha_temperature_celsius 1\n# TYPE fitha_temperature_celsius gauge", /before its HELP and TYPE/],
    ["a sample without HELP and TYPE", "# HELP fitha_temperature_celsius A gauge.", "fitha_other 1\n# HELP fitha_temperature_celsius A gauge.", /without its HELP and TYPE|before its HELP/],
    ["a second TYPE", "# TYPE fitha_temperature_celsius gauge", "# TYPE fitha_temperature_celsius gauge\n# TYPE fitha_temperature_celsius gauge", /second TYPE/],
    ["a second HELP", "# HELP fitha_temperature_celsius A gauge.", "# HELP fitha_temperature_celsius A gauge.\n# HELP fitha_temperature_celsius Again.", /second HELP/],
    ["an unknown type", "# TYPE fitha_temperature_celsius gauge", "# TYPE fitha_temperature_celsius meter", /not a metric type/],
    ["a counter without _total", "# TYPE fitha_temperature_celsius gauge", "# TYPE fitha_temperature_celsius counter", /does not end in _total/],
    ["a negative counter", 'fitha_requests_total{code="500",path="/"} 0 1700000000000', 'fitha_requests_total{code="500",path="/"} -1', /counter fitha_requests_total is -1/],
    ["a series twice", 'fitha_requests_total{code="500",path="/"} 0 1700000000000', 'fitha_requests_total{path="/a\\"b\\\\c\\nd",code="200"} 1', /appears twice/],
    ["buckets out of order", 'fitha_wait_seconds_bucket{plane="a",le="1"} 1', 'fitha_wait_seconds_bucket{plane="a",le="0.25"} 1', /not increasing/],
    ["buckets not cumulative", 'fitha_wait_seconds_bucket{plane="a",le="1"} 1', 'fitha_wait_seconds_bucket{plane="a",le="1"} 0', /not cumulative/],
    ["no +Inf bucket", 'fitha_wait_seconds_bucket{plane="a",le="+Inf"} 2', "", /no le="\+Inf" bucket/],
    ["+Inf not _count", 'fitha_wait_seconds_count{plane="a"} 2', 'fitha_wait_seconds_count{plane="a"} 3', /is not _count/],
    ["no _sum", 'fitha_wait_seconds_sum{plane="a"} 7.25', "", /no _count or no _sum/],
    ["a bucket without le", 'fitha_wait_seconds_bucket{plane="a",le="0.5"} 1', 'fitha_wait_seconds_bucket{plane="a"} 1', /bucket without le/],
    ["a family's lines apart", "# HELP fitha_nothing_yet A family without samples.", '# HELP fitha_nothing_yet A family without samples.\nfitha_requests_total{code="404",path="/"} 1', /not together/],
    ["HELP after the samples", 'fitha_wait_seconds_count{plane="a"} 2', 'fitha_wait_seconds_count{plane="a"} 2\n# HELP fitha_wait_seconds Again.', /HELP of fitha_wait_seconds after its samples/],
  ];
  for (const [what, search, replacement, message] of malformed) {
    test(`refuses ${what}`, () => {
      const text = variant(search, replacement);
      expect(() => parsePrometheusText(text)).toThrow(ParseError);
      expect(() => parsePrometheusText(text)).toThrow(message);
    });
  }

  test("refuses a text without its final line feed, and a family without HELP", () => {
    expect(() => parsePrometheusText(valid.slice(0, -1))).toThrow(/end with a line feed/);
    expect(() => parsePrometheusText("# TYPE g gauge\n")).toThrow(/g lacks its HELP/);
  });
});
