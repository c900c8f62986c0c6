/**
 * A small metrics registry rendered in Prometheus' text exposition format 0.0.4: counters, gauges
 * and histograms (fixed buckets), each family with a fixed set of label names and a bound on its
 * series. No dependency: fitha adds no npm packages, and this is all the daemons need.
 *
 * Two ways to feed a family:
 * - events: the daemon calls inc/set/observe where something happens (a renewal, an answer);
 * - collection: a family made with `collect` is emptied and refilled from the daemon's own state
 *   at every scrape (lockd's phase, the leader's view of every host). State the daemon keeps
 *   anyway is read, never mirrored: nothing can drift, and a host that left leaves no stale series.
 *
 * Label values come from the daemons (host names, planes, fixed outcomes); a family declares how
 * many series it may hold. A bug that would grow one without bound (a VM's UUID as a label, say)
 * stops at that bound: further series are dropped, with one error logged per family.
 *
 * A bad family (its name, labels, buckets) throws when it is registered: at the daemon's start,
 * in every test. A bad update (labels or a value it does not declare, a counter going down) is
 * dropped and logged once per family instead: the hooks run inside renewals, recoveries and
 * fencing, and a metrics bug must never stop those.
 */
import { logger } from "../log.ts";

const log = logger("metrics");

export type Labels<L extends string> = Readonly<Record<L, string>>;

export interface FamilyOptions<L extends string> {
  /** `fitha_…`, with the unit as suffix (`_seconds`, `_bytes`); counters end in `_total`. */
  readonly name: string;
  readonly help: string;
  readonly labels?: readonly L[];
  /**
   * The values each label may take, when they are known in advance: every combination is exported
   * from the start (0 until it happens: a rate over a series that appears late misses its first
   * increase), and any other value is a bug (dropped, and logged).
   */
  readonly values?: { readonly [K in L]?: readonly string[] };
  /** Series at most (default 100); more are dropped and logged once. */
  readonly maxSeries?: number;
}

export interface CollectedOptions<L extends string> extends FamilyOptions<L> {
  /** Fills the family at each scrape, through `emit`; it is emptied before. */
  readonly collect?: (emit: (labels: Labels<L>, value: number) => void) => void;
}

export type MetricType = "counter" | "gauge" | "histogram";

/**
 * Buckets for one request to storage or etcd (a lease renewal, a heartbeat keepalive): from 1 ms
 * to past the longest timeout they may have (lockd's T is at most 60 s).
 */
export const ioLatencyBucketsSeconds: readonly number[] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

const metricNamePattern = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const labelNamePattern = /^[a-zA-Z_][a-zA-Z0-9_]*$/;
const defaultMaxSeries = 100;

/** One family: its series by their label values (joined into one key). */
abstract class Family<L extends string, S> {
  readonly labelNames: readonly L[];
  readonly maxSeries: number;
  protected readonly series = new Map<string, { readonly labels: readonly string[]; readonly state: S }>();
  #dropReported = false;

  constructor(
    readonly type: MetricType,
    readonly options: FamilyOptions<L>,
  ) {
    this.labelNames = options.labels ?? [];
    this.maxSeries = options.maxSeries ?? defaultMaxSeries;
    if (!metricNamePattern.test(options.name)) throw new Error(`metric name "${options.name}" is not a Prometheus metric name`);
    if (type === "counter" && !options.name.endsWith("_total")) throw new Error(`counter "${options.name}" must end in _total`);
    if (type !== "counter" && options.name.endsWith("_total")) throw new Error(`${type} "${options.name}" must not end in _total (a counter's suffix)`);
    const reserved = type === "histogram" ? ["le"] : [];
    for (const label of this.labelNames) {
      if (!labelNamePattern.test(label) || label.startsWith("__") || reserved.includes(label)) throw new Error(`${options.name}: "${label}" cannot be a label name`);
    }
    if (new Set(this.labelNames).size !== this.labelNames.length) throw new Error(`${options.name}: a label name repeats`);
  }

  get name(): string {
    return this.options.name;
  }

  /** Every combination of the declared values, at zero; nothing for a family with a free label. */
  prefill(): void {
    const values: { readonly [K in L]?: readonly string[] } = this.options.values ?? {};
    if (!this.labelNames.every((label) => values[label] !== undefined)) return;
    let combinations: string[][] = [[]];
    for (const label of this.labelNames) combinations = combinations.flatMap((head) => values[label]!.map((value) => [...head, value]));
    if (combinations.length > this.maxSeries) throw new Error(`${this.name}: ${combinations.length} label combinations exceed its ${this.maxSeries} series`);
    for (const combination of combinations) this.series.set(JSON.stringify(combination), { labels: combination, state: this.initial() });
  }

  protected abstract initial(): S;

  /** The series of `labels`, created if new; undefined when the update is dropped (bad labels, the family full). */
  protected at(given: Labels<L>): S | undefined {
    const names = Object.keys(given);
    if (names.length !== this.labelNames.length || !this.labelNames.every((label) => typeof given[label] === "string")) {
      return this.drop(`labels {${names.join(",")}} given, {${this.labelNames.join(",")}} expected`);
    }
    const values = this.labelNames.map((label) => given[label]);
    for (const [i, label] of this.labelNames.entries()) {
      const allowed = this.options.values?.[label];
      if (allowed !== undefined && !allowed.includes(values[i]!)) return this.drop(`${label}="${values[i]}" is not one of ${allowed.join(", ")}`);
    }
    const key = JSON.stringify(values);
    const existing = this.series.get(key);
    if (existing !== undefined) return existing.state;
    if (this.series.size >= this.maxSeries) return this.drop(`its ${this.maxSeries} series are reached (a label with unbounded values?)`);
    const state = this.initial();
    this.series.set(key, { labels: values, state });
    return state;
  }

  /** Leaves an update out; the first one of each family is logged (a bug to fix, not news at every renewal). */
  protected drop(problem: string): undefined {
    if (!this.#dropReported) log.error("a metric update was dropped (a bug in fitha; further ones of this metric are not logged)", { metric: this.name, problem });
    this.#dropReported = true;
    return undefined;
  }

  /** The family's sample lines, series sorted by their label values. */
  abstract samples(): string[];

  protected sorted(): Array<{ readonly labels: readonly string[]; readonly state: S }> {
    return [...this.series.values()].sort((a, b) => compareLabels(a.labels, b.labels));
  }

  protected labelText(values: readonly string[], extra?: readonly [string, string]): string {
    const pairs = this.labelNames.map((name, i) => `${name}="${escapeLabelValue(values[i]!)}"`);
    if (extra !== undefined) pairs.push(`${extra[0]}="${escapeLabelValue(extra[1])}"`);
    return pairs.length === 0 ? "" : `{${pairs.join(",")}}`;
  }

  /** Empties a collected family before it is filled again (back to its declared combinations at zero). */
  reset(): void {
    this.series.clear();
    this.prefill();
  }
}

/** A counter or gauge: one number per series. */
class Scalar<L extends string> extends Family<L, { value: number }> {
  protected initial(): { value: number } {
    return { value: 0 };
  }

  protected change(labels: Labels<L>, update: (state: { value: number }) => void): void {
    const state = this.at(labels);
    if (state !== undefined) update(state);
  }

  samples(): string[] {
    return this.sorted().map(({ labels, state }) => `${this.name}${this.labelText(labels)} ${formatNumber(state.value)}`);
  }
}

export class Counter<L extends string = never> extends Scalar<L> {
  /** Adds `by` (default 1; never negative: a counter only goes up). */
  inc(labels: Labels<L>, by = 1): void {
    if (!(by >= 0)) return void this.drop(`a counter cannot go down (inc by ${by})`);
    this.change(labels, (state) => (state.value += by));
  }

  /** A collected counter: sets a total the daemon counts itself. */
  emit(labels: Labels<L>, total: number): void {
    this.change(labels, (state) => (state.value = total));
  }
}

export class Gauge<L extends string = never> extends Scalar<L> {
  set(labels: Labels<L>, value: number): void {
    this.change(labels, (state) => (state.value = value));
  }
}

interface HistogramState {
  /** Per bucket, the observations that fell into it (not cumulative); the last is +Inf. */
  readonly counts: number[];
  sum: number;
  count: number;
}

export class Histogram<L extends string = never> extends Family<L, HistogramState> {
  readonly buckets: readonly number[];

  constructor(options: FamilyOptions<L> & { readonly buckets: readonly number[] }) {
    const { buckets } = options;
    if (buckets.length === 0 || !buckets.every((b, i) => Number.isFinite(b) && (i === 0 || b > buckets[i - 1]!))) {
      throw new Error(`${options.name}: buckets must be finite and strictly increasing`);
    }
    super("histogram", options);
    this.buckets = buckets;
  }

  protected initial(): HistogramState {
    return { counts: new Array<number>(this.buckets.length + 1).fill(0), sum: 0, count: 0 };
  }

  observe(labels: Labels<L>, value: number): void {
    if (Number.isNaN(value)) return void this.drop("NaN observed");
    const state = this.at(labels);
    if (state === undefined) return;
    const index = this.buckets.findIndex((bound) => value <= bound);
    state.counts[index < 0 ? this.buckets.length : index]!++;
    state.sum += value;
    state.count++;
  }

  samples(): string[] {
    const lines: string[] = [];
    for (const { labels, state } of this.sorted()) {
      let cumulative = 0;
      for (const [i, bound] of [...this.buckets, Infinity].entries()) {
        cumulative += state.counts[i]!;
        lines.push(`${this.name}_bucket${this.labelText(labels, ["le", formatNumber(bound)])} ${cumulative}`);
      }
      lines.push(`${this.name}_sum${this.labelText(labels)} ${formatNumber(state.sum)}`);
      lines.push(`${this.name}_count${this.labelText(labels)} ${state.count}`);
    }
    return lines;
  }
}

type AnyFamily = Counter<string> | Gauge<string> | Histogram<string>;

export class MetricsRegistry {
  readonly #families: AnyFamily[] = [];
  readonly #collectors = new Map<AnyFamily, () => void>();

  counter<L extends string = never>(options: CollectedOptions<L>): Counter<L> {
    const family = new Counter<L>("counter", options);
    const { collect } = options;
    return this.#add(family, collect === undefined ? undefined : () => collect((labels, value) => family.emit(labels, value)));
  }

  gauge<L extends string = never>(options: CollectedOptions<L>): Gauge<L> {
    const family = new Gauge<L>("gauge", options);
    const { collect } = options;
    return this.#add(family, collect === undefined ? undefined : () => collect((labels, value) => family.set(labels, value)));
  }

  histogram<L extends string = never>(options: FamilyOptions<L> & { readonly buckets: readonly number[] }): Histogram<L> {
    return this.#add(new Histogram<L>(options), undefined);
  }

  #add<F extends AnyFamily>(family: F, collect: (() => void) | undefined): F {
    if (this.#families.some((f) => f.name === family.name)) throw new Error(`metric "${family.name}" is registered twice`);
    family.prefill();
    this.#families.push(family);
    if (collect !== undefined) this.#collectors.set(family, collect);
    return family;
  }

  /**
   * The exposition (text format 0.0.4) of every family, collected ones refilled now. A collector
   * that throws leaves its family empty for this scrape (logged): one broken reading must not
   * hide every other metric.
   */
  render(): string {
    const lines: string[] = [];
    for (const family of this.#families) {
      const collect = this.#collectors.get(family);
      if (collect !== undefined) {
        family.reset();
        try {
          collect();
        } catch (error) {
          family.reset();
          log.error("a metric could not be collected", { metric: family.name, error });
        }
      }
      lines.push(`# HELP ${family.name} ${escapeHelp(family.options.help)}`, `# TYPE ${family.name} ${family.type}`, ...family.samples());
    }
    return `${lines.join("\n")}\n`;
  }
}

/** fitha_build_info{version,commit} 1: which build a daemon runs (a join target for other series). */
export function registerBuildInfo(registry: MetricsRegistry, build: { readonly version: string; readonly commit: string }): void {
  registry.gauge({ name: "fitha_build_info", help: "Always 1; the labels say which fitha build this daemon runs.", labels: ["version", "commit"], maxSeries: 1 }).set({ version: build.version, commit: build.commit }, 1);
}

/** Label values escape backslash, double quote and line feed (the format's only escapes). */
export function escapeLabelValue(value: string): string {
  return value.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");
}

/** HELP text escapes backslash and line feed. */
function escapeHelp(help: string): string {
  return help.replace(/\\/g, "\\\\").replace(/\n/g, "\\n");
}

export function formatNumber(value: number): string {
  if (Number.isNaN(value)) return "NaN";
  if (value === Infinity) return "+Inf";
  if (value === -Infinity) return "-Inf";
  return String(value);
}

function compareLabels(a: readonly string[], b: readonly string[]): number {
  for (let i = 0; i < a.length; i++) {
    if (a[i] !== b[i]) return a[i]! < b[i]! ? -1 : 1;
  }
  return 0;
}
