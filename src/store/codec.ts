/**
 * Decoding JSON values read from etcd into typed records. Every value is checked on read: etcd
 * holds what anyone with access wrote, an older or newer fitha included. A value that does not
 * decode is a DecodeError naming the key and the field; readers turn it into an event and skip
 * the value, never crash (src/store/README.md).
 */

export class DecodeError extends Error {
  constructor(
    /** Where the value came from: the etcd key, or a file. */
    readonly source: string,
    /** What is wrong, naming the field ("planes.storage: expected true or false, got 3"). */
    readonly problems: readonly string[],
  ) {
    super(`${source}: ${problems.join("; ")}`);
    this.name = "DecodeError";
  }
}

/** Turns parsed JSON into a T, or throws a DecodeError (with `source` as given). */
export type Codec<T> = (raw: unknown, source: string) => T;

/** Parses `text` as JSON and decodes it; both failures are DecodeErrors naming `source`. */
export function decodeJson<T>(codec: Codec<T>, text: string, source: string): T {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (error) {
    throw new DecodeError(source, [`not JSON (${error instanceof Error ? error.message : String(error)})`]);
  }
  return codec(raw, source);
}

/**
 * Field readers for hand-written codecs: each takes the value and its dotted path, and records a
 * problem (returning a placeholder) instead of throwing, so that one read reports every problem.
 */
export class Fields {
  readonly problems: string[] = [];

  constructor(readonly source: string) {}

  /** Throws the DecodeError if any reader recorded a problem; else returns `value`. */
  done<T>(value: T): T {
    if (this.problems.length > 0) throw new DecodeError(this.source, this.problems);
    return value;
  }

  problem(path: string, message: string): void {
    this.problems.push(path === "" ? message : `${path}: ${message}`);
  }

  object(value: unknown, path: string, allowed?: readonly string[]): Record<string, unknown> {
    if (typeof value !== "object" || value === null || Array.isArray(value)) {
      this.problem(path, `expected an object, got ${describe(value)}`);
      return {};
    }
    const record = value as Record<string, unknown>;
    if (allowed !== undefined) {
      for (const key of Object.keys(record)) if (!allowed.includes(key)) this.problem(join(path, key), "unknown field");
    }
    return record;
  }

  string(value: unknown, path: string, options: { pattern?: RegExp; maxLength?: number } = {}): string {
    const maxLength = options.maxLength ?? 1024;
    if (typeof value !== "string" || value.length === 0 || value.length > maxLength || (options.pattern !== undefined && !options.pattern.test(value))) {
      this.problem(path, `expected a string of 1 to ${maxLength} characters${options.pattern === undefined ? "" : ` matching ${options.pattern}`}, got ${describe(value)}`);
      return "";
    }
    return value;
  }

  /** A string that may be empty (free text such as a reason). */
  text(value: unknown, path: string, maxLength = 4096): string {
    if (typeof value !== "string" || value.length > maxLength) {
      this.problem(path, `expected a string of at most ${maxLength} characters, got ${describe(value)}`);
      return "";
    }
    return value;
  }

  integer(value: unknown, path: string, min: number, max: number): number {
    if (!(Number.isSafeInteger(value) && (value as number) >= min && (value as number) <= max)) {
      this.problem(path, `expected an integer from ${min} to ${max}, got ${describe(value)}`);
      return min;
    }
    return value as number;
  }

  boolean(value: unknown, path: string): boolean {
    if (typeof value !== "boolean") {
      this.problem(path, `expected true or false, got ${describe(value)}`);
      return false;
    }
    return value;
  }

  choice<const C extends string>(value: unknown, path: string, choices: readonly C[]): C {
    if (typeof value !== "string" || !(choices as readonly string[]).includes(value)) {
      this.problem(path, `expected one of ${choices.map((c) => JSON.stringify(c)).join(", ")}, got ${describe(value)}`);
      return choices[0]!;
    }
    return value as C;
  }

  /** An ISO 8601 UTC time as written by Date.toISOString(). */
  time(value: unknown, path: string): string {
    if (typeof value !== "string" || !/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,3})?Z$/.test(value) || Number.isNaN(Date.parse(value))) {
      this.problem(path, `expected a UTC time like "2026-01-31T12:00:00.000Z", got ${describe(value)}`);
      return new Date(0).toISOString();
    }
    return value;
  }
}

function join(path: string, key: string): string {
  return path === "" ? key : `${path}.${key}`;
}

function describe(value: unknown): string {
  if (value === undefined) return "nothing";
  const text = JSON.stringify(value);
  return text.length > 60 ? `${text.slice(0, 57)}...` : text;
}
