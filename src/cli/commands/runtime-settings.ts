/**
 * `fitha config get | set`: the runtime settings (src/core/settings.ts) in P/settings, which the
 * controller and the agents apply without a restart. (fitha.toml is `fitha config check`'s.)
 */
import { defineCommand } from "citty";
import { decodeSettings, defaultSettings, settingNames, settingSpecs, settingsToJson, withSetting, type RuntimeSettings, type SettingName } from "../../core/settings.ts";
import { FithaError, UsageError } from "../../errors.ts";
import { DecodeError } from "../../store/codec.ts";
import { logger } from "../../log.ts";
import { configArg, jsonArg, logArgs } from "../args.ts";
import { formatTable, printJson, printLines } from "../output.ts";
import { readInForce, recordOperatorEvent, withManagement } from "./common/management.ts";

const log = logger("config");

/**
 * A compare-and-swap that loses means another `config set` wrote in between: read again and
 * re-apply. More losses in a row than this is a fight, not a race: give up and say so.
 */
const maxSetAttempts = 5;

/**
 * JSON shape (`--json`); with KEY, "settings" holds that setting alone:
 * { "key": "/fitha/settings", "stored": bool (false: nothing stored, every default in force),
 *   "settings": [ { "name": "heartbeat_ttl_ms", "value": 60000, "default": 60000, "min": 1000, "max": 3600000, "doc": "..." } ] }
 * A stored value that is not valid is an error (exit 1, nothing on stdout).
 */
export const getCommand = defineCommand({
  meta: { description: "Show the runtime settings in force (stored in etcd; defaults where unset)" },
  args: {
    key: { type: "positional", required: false, description: `One setting (${settingNames.join(", ")})` },
    ...configArg,
    ...jsonArg,
    ...logArgs,
  },
  async run({ args }) {
    const names = args.key === undefined ? settingNames : [settingName(args.key, "config get")];
    await withManagement(args, async ({ kv, keys }) => {
      const inForce = await readInForce(kv, keys.settings, decodeSettings, defaultSettings);
      const values = settingsToJson(inForce.value);
      const settings = names.map((name) => {
        const { min, max, doc } = settingSpecs[name];
        return { name, value: values[name], default: settingSpecs[name].default, min, max, doc };
      });
      if (args.json) {
        printJson({ key: keys.settings, stored: inForce.stored, settings });
      } else if (args.key !== undefined) {
        // One value alone, for scripts: VALUE=$(fitha config get heartbeat_ttl_ms)
        printLines(String(settings[0]!.value));
      } else {
        const rows = settings.map((s) => [s.name, String(s.value), String(s.default), `${s.min}..${s.max}`, s.doc]);
        printLines(
          inForce.stored ? `settings in force: stored in ${keys.settings}` : `settings in force: the defaults (nothing stored in ${keys.settings})`,
          ...formatTable(["SETTING", "VALUE", "DEFAULT", "RANGE", "MEANING"], rows).map((line) => `  ${line}`),
        );
      }
    });
  },
});

export const setCommand = defineCommand({
  meta: { description: "Change one runtime setting (checked with all the others first; a rejected value changes nothing)" },
  args: {
    key: { type: "positional", required: true, description: "The setting (see `fitha config get`)" },
    value: { type: "positional", required: true, description: "Its new value (a whole number)" },
    ...configArg,
    ...logArgs,
  },
  async run({ args }) {
    const name = settingName(args.key, "config set");
    await withManagement(args, async (management) => {
      const { kv, keys } = management;
      for (let attempt = 1; attempt <= maxSetAttempts; attempt++) {
        const current = await readInForce(kv, keys.settings, decodeSettings, defaultSettings);
        const next = checkedSetting(current.value, name, args.value);
        const [before, after] = [settingsToJson(current.value)[name], settingsToJson(next)[name]];
        if (before === after) {
          printLines(`${name} is ${after} already: nothing changed`);
          return;
        }
        // Only if nobody wrote since the read: else their change would be lost, or ours checked against stale values.
        if (await kv.putIfModRevision(keys.settings, JSON.stringify(settingsToJson(next)), current.modRevision)) {
          const change = `${name}: ${before} → ${after}`;
          await recordOperatorEvent(management, "settings-changed", null, change, `${name} is ${after}`);
          printLines(change);
          return;
        }
        log.debug("another change came first; reading the settings again", { key: keys.settings, attempt });
      }
      throw new FithaError(`config set: ${keys.settings} changed under this command ${maxSetAttempts} times in a row (other \`fitha config set\`s?); nothing written, try again`);
    });
  },
});

function settingName(key: string, where: string): SettingName {
  if (!(settingNames as string[]).includes(key)) throw new UsageError(`${where}: unknown setting "${key}" (settings: ${settingNames.join(", ")})`);
  return key as SettingName;
}

/** withSetting, its problems as a usage error: one line each. */
function checkedSetting(settings: RuntimeSettings, name: SettingName, value: string): RuntimeSettings {
  try {
    return withSetting(settings, name, value);
  } catch (error) {
    if (error instanceof DecodeError) throw new UsageError(error.problems.map((problem) => `config set: ${problem}`).join("\n"));
    throw error;
  }
}
