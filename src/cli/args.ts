/** Options shared by many commands, defined once so they read and behave the same everywhere. */
import type { ArgsDef } from "citty";
import { logFormats, logLevels } from "../config/fitha-config.ts";

/** On every command. No defaults here: an absent flag lets the config file's `[log]` decide. */
export const logArgs = {
  "log-level": { type: "enum", options: [...logLevels], description: "Least severe log level written to stderr (default: info)" },
  "log-format": { type: "enum", options: [...logFormats], description: "Log line format: human, or json for journald (default: human)" },
} as const satisfies ArgsDef;

/** On every command that reads fitha.toml. */
export const configArg = {
  config: {
    type: "string",
    valueHint: "FILE",
    description: "Configuration file (default: $FITHA_CONFIG, else /etc/fitha/fitha.toml)",
  },
} as const satisfies ArgsDef;

/** On every command that reads something: prints a stable JSON document on stdout instead of text. */
export const jsonArg = {
  json: { type: "boolean", description: "Print a JSON document instead of text" },
} as const satisfies ArgsDef;
