/**
 * Reading fitha.toml: file → TOML → validated, typed configuration, or a ConfigError whose every
 * line names the file and the key (or line) at fault.
 */
import { ExitCode, FithaError, errorMessage } from "../errors.ts";
import { fithaConfigSchema, type FithaConfig } from "./fitha-config.ts";
import { validate, type ConfigProblem } from "./schema.ts";

export const defaultConfigPath = "/etc/fitha/fitha.toml";

/** A configuration file is small; anything larger is a mistake (a wrong path, a binary). */
const maxConfigBytes = 256 * 1024;

export class ConfigError extends FithaError {
  constructor(
    readonly file: string,
    readonly problems: readonly ConfigProblem[],
  ) {
    super(problems.map((p) => `${file}: ${p.key}: ${p.message}`).join("\n"), ExitCode.usage);
    this.name = "ConfigError";
  }
}

/** `--config` wins over `FITHA_CONFIG`, which wins over the default path. */
export function resolveConfigPath(flag: string | undefined, env: Record<string, string | undefined>): string {
  if (flag !== undefined && flag !== "") return flag;
  const fromEnv = env["FITHA_CONFIG"];
  if (fromEnv !== undefined && fromEnv !== "") return fromEnv;
  return defaultConfigPath;
}

export async function loadConfig(file: string): Promise<FithaConfig> {
  return parseConfig(file, await readConfigText(file));
}

/** Validates configuration text; `file` only names the source in messages. */
export function parseConfig(file: string, source: string): FithaConfig {
  const raw = parseToml(file, source);
  const result = validate(fithaConfigSchema, raw);
  if (!result.ok) throw new ConfigError(file, result.problems);
  return result.config;
}

async function readConfigText(file: string): Promise<string> {
  const handle = Bun.file(file);
  let size: number;
  try {
    const stat = await handle.stat();
    if (!stat.isFile()) throw new FithaError(`${file}: not a regular file`, ExitCode.usage);
    size = stat.size;
  } catch (error) {
    if (error instanceof FithaError) throw error;
    throw new FithaError(`${file}: cannot read config file (${describeFsError(error)}); set --config or FITHA_CONFIG`, ExitCode.usage);
  }
  if (size > maxConfigBytes) {
    throw new FithaError(`${file}: config file is ${size} bytes, more than the ${maxConfigBytes} allowed`, ExitCode.usage);
  }
  try {
    return await handle.text();
  } catch (error) {
    throw new FithaError(`${file}: cannot read config file (${describeFsError(error)})`, ExitCode.usage);
  }
}

/** Why a file could not be read, in a few words ("no such file", "permission denied"). */
export function describeFsError(error: unknown): string {
  const code = (error as { code?: unknown } | null)?.code;
  if (code === "ENOENT") return "no such file";
  if (code === "EACCES") return "permission denied";
  return typeof code === "string" ? code : errorMessage(error);
}

function parseToml(file: string, source: string): unknown {
  try {
    return Bun.TOML.parse(source);
  } catch (error) {
    const reason = errorMessage(error).replace(/^TOML Parse error: /, "");
    throw new FithaError(`${file}:${syntaxErrorLine(source)}: invalid TOML: ${reason}`, ExitCode.usage);
  }
}

/**
 * Bun's TOML parser does not say where an error is. The line after the longest prefix of the file
 * that still parses is where the error starts (an unterminated multi-line array points at its
 * first line), which is what an operator needs to look at. Files are bounded, so this is cheap.
 */
function syntaxErrorLine(source: string): number {
  const lines = source.split("\n");
  for (let count = lines.length - 1; count > 0; count--) {
    try {
      Bun.TOML.parse(lines.slice(0, count).join("\n"));
      return count + 1;
    } catch {
      // still inside or after the error: try a shorter prefix
    }
  }
  return 1;
}
