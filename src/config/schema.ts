/**
 * A tiny declarative schema for TOML configuration: each field knows its type, bounds, default
 * and documentation, and validation turns untrusted parsed TOML into a typed, frozen object or a
 * list of problems that each name the dotted key.
 *
 * Keys keep their TOML spelling (snake_case with the unit in the name, e.g. `dial_timeout_ms`)
 * in the typed object too, so the name in the file, in an error, in the docs and in the code is
 * one and the same string an operator can grep for.
 */

/** One thing wrong with a configuration, tied to the dotted key it concerns. */
export interface ConfigProblem {
  readonly key: string;
  readonly message: string;
}

type Check<T> = { ok: true; value: T } | { ok: false; message: string };

const mismatch = (accepts: string, value: unknown): { ok: false; message: string } => ({
  ok: false,
  message: `expected ${accepts}, got ${describe(value)}`,
});

export interface Field<T> {
  readonly kind: "field";
  readonly doc: string;
  /** Human description of the accepted values, used in messages: "integer 100..60000". */
  readonly accepts: string;
  /** Absent means the key is required. */
  readonly default: T | undefined;
  check(value: unknown): Check<T>;
}

export interface Section<F extends Fields> {
  readonly kind: "section";
  readonly doc: string;
  readonly fields: F;
}

export type Spec = Field<unknown> | Section<Fields>;
export type Fields = { readonly [key: string]: Spec };

/** The typed, validated configuration a schema describes. */
export type ConfigOf<F extends Fields> = {
  readonly [K in keyof F]: F[K] extends Field<infer T>
    ? T
    : F[K] extends Section<infer G>
      ? ConfigOf<G>
      : never;
};

export function section<F extends Fields>(doc: string, fields: F): Section<F> {
  return { kind: "section", doc, fields };
}

interface FieldOptions<T> {
  doc: string;
  default?: T;
}

function field<T>(accepts: string, options: FieldOptions<T>, check: (value: unknown) => Check<T>): Field<T> {
  const result: Field<T> = { kind: "field", doc: options.doc, accepts, default: options.default, check };
  if (result.default !== undefined && !check(result.default).ok) {
    // A schema whose own default fails its own check is a programming error, caught at start-up.
    throw new Error(`schema default ${JSON.stringify(result.default)} is not ${accepts}`);
  }
  return result;
}

export function integer(options: FieldOptions<number> & { min: number; max: number }): Field<number> {
  const accepts = `an integer from ${options.min} to ${options.max}`;
  return field(accepts, options, (value) =>
    typeof value === "number" && Number.isSafeInteger(value) && value >= options.min && value <= options.max
      ? { ok: true, value }
      : mismatch(accepts, value),
  );
}

export function choice<const C extends string>(choices: readonly C[], options: FieldOptions<C>): Field<C> {
  const accepts = `one of ${choices.map((c) => JSON.stringify(c)).join(", ")}`;
  return field(accepts, options, (value) =>
    typeof value === "string" && (choices as readonly string[]).includes(value)
      ? { ok: true, value: value as C }
      : mismatch(accepts, value),
  );
}

/** A string matching `pattern`; `accepts` says in words what the pattern allows. */
export function text(options: FieldOptions<string> & { pattern: RegExp; accepts: string }): Field<string> {
  return field(options.accepts, options, (value) =>
    typeof value === "string" && options.pattern.test(value)
      ? { ok: true, value }
      : mismatch(options.accepts, value),
  );
}

/** A non-empty list of at most `maxItems` distinct items, each accepted by `item`. */
export function list<T>(item: Field<T>, options: FieldOptions<readonly T[]> & { maxItems: number }): Field<readonly T[]> {
  const accepts = `a list of 1 to ${options.maxItems} distinct items, each ${item.accepts}`;
  return field(accepts, options, (value) => {
    if (!Array.isArray(value) || value.length === 0 || value.length > options.maxItems) return mismatch(accepts, value);
    const items: T[] = [];
    for (const [index, raw] of value.entries()) {
      const checked = item.check(raw);
      if (!checked.ok) return { ok: false, message: `item ${index + 1}: ${checked.message}` };
      if (items.includes(checked.value)) return { ok: false, message: `item ${index + 1} repeats ${describe(raw)}` };
      items.push(checked.value);
    }
    return { ok: true, value: Object.freeze(items) };
  });
}

/** Validation result: the typed configuration, or every problem found (never both). */
export type Validated<F extends Fields> =
  | { ok: true; config: ConfigOf<F> }
  | { ok: false; problems: readonly ConfigProblem[] };

export function validate<F extends Fields>(fields: F, raw: unknown): Validated<F> {
  const problems: ConfigProblem[] = [];
  const config = validateTable(fields, raw, "", problems);
  if (problems.length > 0) return { ok: false, problems };
  return { ok: true, config: config as ConfigOf<F> };
}

function validateTable(fields: Fields, raw: unknown, prefix: string, problems: ConfigProblem[]): object {
  const table = isTable(raw) ? raw : {};
  const result: Record<string, unknown> = {};
  for (const key of Object.keys(table)) {
    if (!Object.hasOwn(fields, key)) {
      problems.push({ key: prefix + key, message: unknownKeyMessage(key, Object.keys(fields)) });
    }
  }
  for (const [key, spec] of Object.entries(fields)) {
    const path = prefix + key;
    const value = table[key];
    if (spec.kind === "section") {
      if (value !== undefined && !isTable(value)) {
        problems.push({ key: path, message: `expected a table [${path}], got ${describe(value)}` });
      }
      result[key] = validateTable(spec.fields, value, `${path}.`, problems);
    } else if (value === undefined) {
      if (spec.default === undefined) problems.push({ key: path, message: `missing; required: ${spec.accepts}` });
      else result[key] = spec.default;
    } else {
      const checked = spec.check(value);
      if (checked.ok) result[key] = checked.value;
      else problems.push({ key: path, message: checked.message });
    }
  }
  return Object.freeze(result);
}

function isTable(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value) && !(value instanceof Date);
}

/** Short rendering of a bad value for a one-line message; long values are cut. */
function describe(value: unknown): string {
  if (typeof value === "number" && !Number.isFinite(value)) return String(value);
  if (value instanceof Date) return "a date";
  const json = JSON.stringify(value) ?? String(value);
  return json.length > 60 ? `${json.slice(0, 57)}...` : json;
}

function unknownKeyMessage(key: string, known: readonly string[]): string {
  const closest = known
    .map((candidate) => ({ candidate, distance: editDistance(key, candidate) }))
    .sort((a, b) => a.distance - b.distance)[0];
  const hint = closest && closest.distance <= Math.max(2, key.length / 3) ? ` (did you mean "${closest.candidate}"?)` : "";
  return `unknown key${hint}`;
}

/** Levenshtein distance; keys are short, so the quadratic table is fine. */
function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      const substitution = (previous[j - 1] ?? 0) + (a[i - 1] === b[j - 1] ? 0 : 1);
      current.push(Math.min((previous[j] ?? 0) + 1, (current[j - 1] ?? 0) + 1, substitution));
    }
    previous = current;
  }
  return previous[b.length] ?? 0;
}

/** Every field's dotted key with its spec, in schema order (for docs and their tests). */
export function fieldPaths(fields: Fields, prefix = ""): Array<{ key: string; field: Field<unknown> }> {
  return Object.entries(fields).flatMap(([key, spec]) =>
    spec.kind === "section" ? fieldPaths(spec.fields, `${prefix}${key}.`) : [{ key: prefix + key, field: spec }],
  );
}
