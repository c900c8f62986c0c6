/**
 * Runs the citty command tree with the guarantees an operator relies on: unknown options and
 * stray arguments are rejected (citty alone ignores them, so a typo like `--josn` would silently
 * do something else), `--help` works at every level, expected failures print one line per
 * problem without a stack trace, and every outcome maps to a documented exit code.
 */
import { runCommand, type ArgDef, type ArgsDef, type CommandDef } from "citty";
import { renderUsage } from "./usage.ts";
import { configureLogging } from "../log.ts";
import { ExitCode, FithaError, UsageError } from "../errors.ts";
import type { LogFormat, LogLevel } from "../config/fitha-config.ts";

// citty's types are invariant in the args and the tree mixes commands with different args; `any`
// is what citty itself uses for sub-commands.
export type AnyCommand = CommandDef<any>;

/** What a command's run() may return: its exit code, or nothing for success. */
export type CommandResult = ExitCode | undefined;

type Resolvable<T> = T | Promise<T> | (() => T) | (() => Promise<T>);

async function resolve<T>(value: Resolvable<T>): Promise<T> {
  return typeof value === "function" ? await (value as () => T | Promise<T>)() : await value;
}

interface Located {
  command: AnyCommand;
  /** The command's words after the program name ("config check"); empty for the root. */
  words: string[];
  /** The arguments after the command's name. */
  rest: string[];
}

export async function runCli(root: AnyCommand, argv: readonly string[]): Promise<number> {
  try {
    return await run(root, argv);
  } catch (error) {
    return reportError(error);
  }
}

async function run(root: AnyCommand, argv: readonly string[]): Promise<number> {
  const { command, words, rest } = await locate(root, argv);
  // Messages are printed after "fitha: ", so they name the command without the program.
  const where = words.length > 0 ? `${words.join(" ")}: ` : "";
  const beforeDashes = rest.slice(0, rest.includes("--") ? rest.indexOf("--") : rest.length);
  if (beforeDashes.includes("--help") || beforeDashes.includes("-h")) {
    process.stdout.write(await usage(command, ["fitha", ...words].join(" ")));
    return ExitCode.ok;
  }
  if (command.run === undefined) {
    // A group such as `fitha config` without its sub-command.
    process.stderr.write(await usage(command, ["fitha", ...words].join(" ")));
    const stray = rest[0];
    throw new UsageError(stray === undefined ? `${where}missing command` : `${where}expected a command before "${stray}"`);
  }
  const args = await resolve(command.args ?? {});
  checkArguments(args, rest, where);
  configureLogging(logSettingsFromFlags(rest));
  const { result } = await runCommand(command, { rawArgs: rest });
  return typeof result === "number" ? result : ExitCode.ok;
}

async function locate(root: AnyCommand, argv: readonly string[]): Promise<Located> {
  let command = root;
  const words: string[] = [];
  let rest = [...argv];
  for (;;) {
    const subCommands = await resolve(command.subCommands ?? {});
    const name = rest[0];
    if (Object.keys(subCommands).length === 0 || name === undefined || name.startsWith("-")) break;
    const sub = subCommands[name];
    if (sub === undefined) {
      const where = words.length > 0 ? `${words.join(" ")}: ` : "";
      throw new UsageError(`${where}unknown command "${name}" (commands: ${Object.keys(subCommands).join(", ")})`);
    }
    command = await resolve(sub);
    words.push(name);
    rest = rest.slice(1);
  }
  return { command, words, rest };
}

async function usage(command: AnyCommand, path: string): Promise<string> {
  const subCommands = await resolve(command.subCommands ?? {});
  const described = await Promise.all(
    Object.entries(subCommands).map(async ([name, sub]) => {
      const meta = await resolve((await resolve(sub)).meta ?? {});
      return [name, meta.description ?? ""] as const;
    }),
  );
  return renderUsage({ path, meta: await resolve(command.meta ?? {}), args: await resolve(command.args ?? {}), subCommands: described });
}

/** Rejects unknown options, options without their value, and surplus positional arguments. */
function checkArguments(args: ArgsDef, rest: readonly string[], where: string): void {
  const options = new Map<string, ArgDef>();
  for (const [name, def] of Object.entries(args)) {
    if (def.type === "positional") continue;
    for (const spelling of [name, camelCase(name), ...aliases(def)]) options.set(spelling, def);
  }
  const positionalNames = Object.entries(args)
    .filter(([, def]) => def.type === "positional")
    .map(([name]) => name.toUpperCase());
  const positionals: string[] = [];
  for (let i = 0; i < rest.length; i++) {
    const token = rest[i] as string;
    if (token === "--") {
      positionals.push(...rest.slice(i + 1));
      break;
    }
    if (!token.startsWith("-") || token === "-") {
      positionals.push(token);
      continue;
    }
    const [flag = token, inlineValue] = splitOnce(token, "=");
    const name = flag.replace(/^--?/, "");
    const def = options.get(name) ?? negatedBoolean(options, name);
    if (def === undefined) {
      const known = Object.entries(args).filter(([, d]) => d.type !== "positional").map(([n]) => `--${n}`);
      throw new UsageError(`${where}unknown option ${flag}${known.length > 0 ? ` (options: ${known.join(", ")})` : ""}`);
    }
    if (def.type !== "string" && def.type !== "enum") continue;
    let value = inlineValue;
    if (value === undefined) {
      value = rest[i + 1];
      if (value === undefined || (value.startsWith("-") && value !== "-")) throw new UsageError(`${where}option ${flag} needs a value`);
      i++;
    }
    if (def.type === "enum" && !(def.options ?? []).includes(value)) {
      throw new UsageError(`${where}option ${flag} must be one of ${(def.options ?? []).join(", ")}, not "${value}"`);
    }
  }
  const surplus = positionals.slice(positionalNames.length);
  if (surplus.length > 0) {
    const expected = positionalNames.length === 0 ? "no arguments" : positionalNames.join(" ");
    throw new UsageError(`${where}unexpected argument "${surplus[0]}" (takes ${expected})`);
  }
}

function negatedBoolean(options: Map<string, ArgDef>, name: string): ArgDef | undefined {
  if (!name.startsWith("no-")) return undefined;
  const def = options.get(name.slice(3));
  return def?.type === "boolean" ? def : undefined;
}

function aliases(def: ArgDef): string[] {
  if (!("alias" in def) || def.alias === undefined) return [];
  return Array.isArray(def.alias) ? def.alias : [def.alias];
}

function camelCase(name: string): string {
  return name.replace(/-([a-z])/g, (_, letter: string) => letter.toUpperCase());
}

function splitOnce(text: string, separator: string): [string, string | undefined] {
  const at = text.indexOf(separator);
  return at < 0 ? [text, undefined] : [text.slice(0, at), text.slice(at + 1)];
}

/**
 * Logging must be set up before the command runs (so that config loading can log), from the
 * flags alone; a command that reads fitha.toml re-applies `[log]` where no flag overrides it.
 */
function logSettingsFromFlags(rest: readonly string[]): { level: LogLevel; format: LogFormat } {
  // Values were checked against the enums by checkArguments.
  return {
    level: (flagValue(rest, "log-level") as LogLevel | undefined) ?? "info",
    format: (flagValue(rest, "log-format") as LogFormat | undefined) ?? "human",
  };
}

/** The value of `--name V` or `--name=V`. */
function flagValue(rest: readonly string[], name: string): string | undefined {
  for (let i = 0; i < rest.length && rest[i] !== "--"; i++) {
    const token = rest[i] as string;
    if (token === `--${name}`) return rest[i + 1];
    if (token.startsWith(`--${name}=`)) return token.slice(name.length + 3);
  }
  return undefined;
}

function reportError(error: unknown): number {
  if (error instanceof FithaError) {
    printError(error.message);
    return error.exitCode;
  }
  // citty's argument errors (missing positional, bad enum value) are usage errors too.
  if (error instanceof Error && error.name === "CLIError") {
    printError(Bun.stripANSI(error.message));
    return ExitCode.usage;
  }
  printError(`internal error (a bug in fitha, please report it): ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`);
  return ExitCode.internal;
}

function printError(message: string): void {
  process.stderr.write(message.split("\n").map((line) => `fitha: ${line}\n`).join(""));
}
