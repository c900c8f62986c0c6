import { defineCommand } from "citty";
import { ConfigError, loadConfig, resolveConfigPath } from "../../config/load.ts";
import { ExitCode, FithaError } from "../../errors.ts";
import { configArg, jsonArg, logArgs } from "../args.ts";
import { printJson, printLines } from "../output.ts";

/**
 * JSON shape (`--json`), also for an invalid file (exit code 2 then):
 * { "file": "...", "ok": true, "config": { ...every key with defaults applied } }
 * { "file": "...", "ok": false, "problems": [ { "key": "etcd.storage.endpoints", "message": "..." } ] }
 * A file that cannot be read or parsed at all has one problem with key "" and the reason (with the
 * line number, for a TOML syntax error).
 */
const checkCommand = defineCommand({
  meta: { description: "Validate a configuration file offline (no etcd needed)" },
  args: {
    file: { type: "positional", required: false, description: "File to check (default: as --config)" },
    ...configArg,
    ...jsonArg,
    ...logArgs,
  },
  async run({ args }) {
    const file = args.file ?? resolveConfigPath(args.config, process.env);
    if (!args.json) {
      await loadConfig(file);
      printLines(`${file}: ok`);
      return ExitCode.ok;
    }
    try {
      printJson({ file, ok: true, config: await loadConfig(file) });
      return ExitCode.ok;
    } catch (error) {
      // Only a bad file is a result; anything else is reported as usual.
      if (!(error instanceof FithaError) || error.exitCode !== ExitCode.usage) throw error;
      const problems = error instanceof ConfigError ? error.problems : [{ key: "", message: error.message }];
      printJson({ file, ok: false, problems });
      return ExitCode.usage;
    }
  },
});

export const configCommand = defineCommand({
  meta: { description: "Work with fitha configuration: the file (check) and the runtime settings in etcd (get, set)" },
  // Lazily, as in fitha-command.ts: `config check` runs offline and needs no etcd client.
  subCommands: {
    check: checkCommand,
    get: () => import("./runtime-settings.ts").then((m) => m.getCommand),
    set: () => import("./runtime-settings.ts").then((m) => m.setCommand),
  },
});
