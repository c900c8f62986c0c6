/**
 * A strict parser of Prometheus' text exposition format 0.0.4, for tests of what fitha's daemons
 * serve at /metrics. Stricter than Prometheus itself where fitha promises more: every family has
 * HELP and TYPE before its samples, counters end in `_total`, histograms are complete. Anything
 * else is a ParseError naming the line.
 *
 * Checked: metric and label name syntax; label value escapes (\\ \" \n only); numbers (Go float
 * syntax, +Inf, -Inf, NaN) and optional integer timestamps; at most one HELP and one TYPE per
 * family, both before its first sample; a family's lines together; no series twice; counters not
 * negative; per histogram series: `le` buckets strictly increasing, counts cumulative, a +Inf
 * bucket equal to `_count`, a `_sum`; the text ends in a line feed.
 */

export type MetricType = "counter" | "gauge" | "histogram" | "summary" | "untyped";

export interface Sample {
  /** The sample's own name (`x_bucket` for a histogram `x`). */
  readonly name: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly value: number;
  readonly timestampMs: number | undefined;
}

export interface MetricFamily {
  readonly name: string;
  readonly help: string;
  readonly type: MetricType;
  readonly samples: Sample[];
}

export class ParseError extends Error {}

/** A family while its lines are read: HELP and TYPE may not have come yet. */
interface Building {
  readonly name: string;
  help: string | undefined;
  type: MetricType | undefined;
  readonly samples: Sample[];
}

const metricName = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const labelName = /^[a-zA-Z_][a-zA-Z0-9_]*$/;
const floatText = /^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$/;
const types: readonly MetricType[] = ["counter", "gauge", "histogram", "summary", "untyped"];

export function parsePrometheusText(text: string): Map<string, MetricFamily> {
  if (text.length > 0 && !text.endsWith("\n")) throw new ParseError("the exposition must end with a line feed");
  const families = new Map<string, Building>();
  const seriesSeen = new Set<string>();
  /** Families whose lines are over (another family's lines came after them). */
  const closed = new Set<string>();
  let current: string | undefined;
  const lines = text.split("\n");
  lines.pop();
  for (const [index, line] of lines.entries()) {
    const fail = (message: string): never => {
      throw new ParseError(`line ${index + 1}: ${message}: ${JSON.stringify(line)}`);
    };
    const enter = (name: string) => {
      if (current === name) return;
      if (closed.has(name)) fail(`the lines of ${name} are not together`);
      if (current !== undefined) closed.add(current);
      current = name;
    };
    const familyOf = (name: string): Building => {
      let family = families.get(name);
      if (family === undefined) {
        family = { name, help: undefined, type: undefined, samples: [] };
        families.set(name, family);
      }
      return family;
    };
    if (line === "") continue;
    if (line.startsWith("#")) {
      const match = /^#\s+(HELP|TYPE)\s+(\S+)(?:\s(.*))?$/.exec(line);
      if (match === null) continue; // a plain comment
      const [, keyword, name, rest = ""] = match as unknown as [string, "HELP" | "TYPE", string, string | undefined];
      if (!metricName.test(name)) fail(`"${name}" is not a metric name`);
      enter(name);
      const family = familyOf(name);
      if (family.samples.length > 0) fail(`${keyword} of ${name} after its samples`);
      if (keyword === "HELP") {
        if (family.help !== undefined) fail(`a second HELP for ${name}`);
        family.help = unescape(rest, false, fail);
      } else {
        if (family.type !== undefined) fail(`a second TYPE for ${name}`);
        const type = rest.trim() as MetricType;
        if (!types.includes(type)) fail(`"${rest}" is not a metric type`);
        if (type === "counter" && !name.endsWith("_total")) fail(`counter ${name} does not end in _total`);
        family.type = type;
      }
      continue;
    }
    const sample = parseSample(line, fail);
    const family = families.get(sample.name) ?? familyOfSuffixed(families, sample.name) ?? fail(`sample of ${sample.name} without its HELP and TYPE`);
    enter(family.name);
    if (family.help === undefined || family.type === undefined) fail(`sample of ${family.name} before its HELP and TYPE`);
    if (family.type === "counter" && !(sample.value >= 0)) fail(`counter ${sample.name} is ${sample.value}`);
    const series = `${sample.name}${JSON.stringify(Object.entries(sample.labels).sort(([a], [b]) => (a < b ? -1 : 1)))}`;
    if (seriesSeen.has(series)) fail(`series ${sample.name} ${JSON.stringify(sample.labels)} appears twice`);
    seriesSeen.add(series);
    family.samples.push(sample);
  }
  const parsed = new Map<string, MetricFamily>();
  for (const { name, help, type, samples } of families.values()) {
    if (help === undefined || type === undefined) throw new ParseError(`${name} lacks its ${help === undefined ? "HELP" : "TYPE"}`);
    const family = { name, help, type, samples };
    if (type === "histogram") checkHistogram(family);
    parsed.set(name, family);
  }
  return parsed;
}

/** The histogram (or summary) family a `_bucket`/`_sum`/`_count` sample belongs to. */
function familyOfSuffixed<F extends { type: MetricType | undefined }>(families: Map<string, F>, name: string): F | undefined {
  const match = /^(.*)_(bucket|sum|count)$/.exec(name);
  if (match === null) return undefined;
  const family = families.get(match[1]!);
  if (family === undefined) return undefined;
  if (family.type === "histogram" || (family.type === "summary" && match[2] !== "bucket")) return family;
  return undefined;
}

function parseSample(line: string, fail: (message: string) => never): Sample {
  const nameMatch = /^[^\s{]+/.exec(line);
  const name = nameMatch?.[0] ?? "";
  if (!metricName.test(name)) fail(`"${name}" is not a metric name`);
  let at = name.length;
  const labels: Record<string, string> = {};
  if (line[at] === "{") {
    at++;
    while (line[at] !== "}") {
      const labelMatch = /^([^=\s]*)="/.exec(line.slice(at));
      if (labelMatch === null) fail(`a label must be name="value" (at column ${at + 1})`);
      const label = labelMatch![1]!;
      if (!labelName.test(label) || label.startsWith("__")) fail(`"${label}" is not a label name`);
      if (Object.hasOwn(labels, label)) fail(`label ${label} twice`);
      at += labelMatch![0].length;
      let raw = "";
      for (;;) {
        const char = line[at];
        if (char === undefined) fail("unterminated label value");
        if (char === '"') break;
        if (char === "\\") {
          raw += char + (line[at + 1] ?? "");
          at += 2;
          continue;
        }
        raw += char;
        at++;
      }
      labels[label] = unescape(raw, true, fail);
      at++;
      if (line[at] === ",") {
        at++;
        if (line[at] === "}") fail("a comma before }");
      } else if (line[at] !== "}") fail(`, or } expected after label ${label}`);
    }
    at++;
  }
  const rest = line.slice(at);
  const fields = /^ (\S+)(?: (-?\d+))?$/.exec(rest);
  if (fields === null) fail("a sample is NAME{LABELS} VALUE [TIMESTAMP], one space apart");
  return { name, labels, value: parseNumber(fields![1]!, fail), timestampMs: fields![2] === undefined ? undefined : Number(fields![2]) };
}

function parseNumber(text: string, fail: (message: string) => never): number {
  if (text === "+Inf" || text === "Inf") return Infinity;
  if (text === "-Inf") return -Infinity;
  if (text === "NaN") return NaN;
  if (!floatText.test(text)) fail(`"${text}" is not a number`);
  return Number(text);
}

/** Label values know \\ \" \n; HELP text \\ and \n. Any other backslash is an error. */
function unescape(text: string, labelValue: boolean, fail: (message: string) => never): string {
  return text.replace(/\\(.?)/g, (_, next: string) => {
    if (next === "\\") return "\\";
    if (next === "n") return "\n";
    if (next === '"' && labelValue) return '"';
    return fail(`bad escape \\${next}`);
  });
}

function checkHistogram(family: MetricFamily): void {
  const bySeries = new Map<string, { buckets: Array<{ le: number; count: number }>; sum?: number; count?: number }>();
  for (const sample of family.samples) {
    const { le, ...rest } = sample.labels;
    const key = JSON.stringify(Object.entries(rest).sort(([a], [b]) => (a < b ? -1 : 1)));
    const series = bySeries.get(key) ?? { buckets: [] };
    bySeries.set(key, series);
    const where = `${family.name}${key}`;
    if (sample.name === `${family.name}_bucket`) {
      if (le === undefined) throw new ParseError(`${where}: a bucket without le`);
      const bound = parseNumber(le, (message) => {
        throw new ParseError(`${where}: le: ${message}`);
      });
      const previous = series.buckets.at(-1);
      if (previous !== undefined && !(bound > previous.le)) throw new ParseError(`${where}: bucket le="${le}" after le=${previous.le}: not increasing`);
      if (previous !== undefined && sample.value < previous.count) throw new ParseError(`${where}: bucket le="${le}" counts ${sample.value}, less than the bucket before (${previous.count}): not cumulative`);
      series.buckets.push({ le: bound, count: sample.value });
    } else {
      if (le !== undefined) throw new ParseError(`${where}: ${sample.name} with an le label`);
      if (sample.name.endsWith("_sum")) series.sum = sample.value;
      else series.count = sample.value;
    }
  }
  for (const [key, series] of bySeries) {
    const where = `${family.name}${key}`;
    const last = series.buckets.at(-1);
    if (last === undefined || last.le !== Infinity) throw new ParseError(`${where}: no le="+Inf" bucket`);
    if (series.count === undefined || series.sum === undefined) throw new ParseError(`${where}: no _count or no _sum`);
    if (last.count !== series.count) throw new ParseError(`${where}: the +Inf bucket (${last.count}) is not _count (${series.count})`);
  }
}

/** The one sample named `name` whose labels include `labels`; throws if there is not exactly one. */
export function sampleOf(families: Map<string, MetricFamily>, name: string, labels: Readonly<Record<string, string>> = {}): Sample {
  const found = [...families.values()].flatMap((f) => f.samples).filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
  if (found.length !== 1) throw new Error(`${found.length} samples ${name} ${JSON.stringify(labels)} (expected 1)`);
  return found[0]!;
}
