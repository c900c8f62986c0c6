import { loadConfig, resolveConfigPath } from "../config/load.ts";
import type { FithaConfig, LogFormat, LogLevel } from "../config/fitha-config.ts";
import { configureLogging } from "../log.ts";

interface ConfigFlags {
  readonly config?: string | undefined;
  readonly "log-level"?: LogLevel | undefined;
  readonly "log-format"?: LogFormat | undefined;
}

/**
 * Loads fitha.toml for a command (`--config`, else `FITHA_CONFIG`, else the default path) and
 * applies its `[log]` section wherever the command line did not already choose.
 */
export async function loadCommandConfig(flags: ConfigFlags): Promise<{ file: string; config: FithaConfig }> {
  const file = resolveConfigPath(flags.config, process.env);
  const config = await loadConfig(file);
  configureLogging({ level: flags["log-level"] ?? config.log.level, format: flags["log-format"] ?? config.log.format });
  return { file, config };
}
