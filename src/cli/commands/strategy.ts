/**
 * `fitha strategy show | check | set | default`: the HA strategy template (src/core/strategy.ts)
 * that the controllers apply, stored in P/strategy; the default when nothing is stored.
 */
import { defineCommand, type ArgsDef } from "citty";
import { describeFsError } from "../../config/load.ts";
import { decodeStrategy, defaultStrategy, parseStrategy, strategyToJson, type Strategy } from "../../core/strategy.ts";
import { ExitCode, FithaError } from "../../errors.ts";
import { DecodeError } from "../../store/codec.ts";
import { configArg, jsonArg, logArgs } from "../args.ts";
import { formatTable, printJson, printLines } from "../output.ts";
import { BadValueError, readInForce, recordOperatorEvent, withManagement } from "./common/management.ts";

const templateFileArg = { file: { type: "positional", required: true, description: "Template file (JSON; `fitha strategy default` prints one)" } } as const satisfies ArgsDef;

/** A template is 8 small rows; anything larger is a wrong file. */
const maxTemplateBytes = 64 * 1024;

/**
 * JSON shape (`--json`):
 * { "source": "etcd"|"default", "key": "/fitha/strategy",
 *   "strategy": { "grace_ms": 120000, "rows": [ { "management": "down"|"up", "service": ..., "storage": ..., "ha": bool } × 8 ] } }
 * Rows in the seed's numbering (management 4, service 2, storage 1; up = 1). A stored value that
 * is no valid template is an error (exit 1, nothing on stdout).
 */
const showCommand = defineCommand({
  meta: { description: "Show the HA strategy in force (stored in etcd, else the default)" },
  args: { ...configArg, ...jsonArg, ...logArgs },
  async run({ args }) {
    await withManagement(args, async ({ kv, keys }) => {
      const inForce = await readInForce(kv, keys.strategy, decodeStrategy, defaultStrategy);
      const source = inForce.stored ? "etcd" : "default";
      if (args.json) {
        printJson({ source, key: keys.strategy, strategy: strategyToJson(inForce.value) });
        return;
      }
      printLines(inForce.stored ? `strategy in force: stored in ${keys.strategy}` : `strategy in force: the default (nothing stored in ${keys.strategy})`, ...renderStrategy(inForce.value));
    });
  },
});

/**
 * JSON shape (`--json`), also for an invalid file (exit code 2 then):
 * { "file": "...", "ok": true, "strategy": { "grace_ms": ..., "rows": [...] } }
 * { "file": "...", "ok": false, "problems": [ "rows[3]: duplicate row for management up, storage up, service down" ] }
 */
const checkCommand = defineCommand({
  meta: { description: "Validate a strategy template file offline (no etcd needed)" },
  args: { ...templateFileArg, ...jsonArg, ...logArgs },
  async run({ args }) {
    if (!args.json) {
      await loadTemplate(args.file);
      printLines(`${args.file}: ok`);
      return ExitCode.ok;
    }
    try {
      printJson({ file: args.file, ok: true, strategy: strategyToJson(await loadTemplate(args.file)) });
      return ExitCode.ok;
    } catch (error) {
      if (!(error instanceof TemplateError)) throw error;
      printJson({ file: args.file, ok: false, problems: error.problems });
      return ExitCode.usage;
    }
  },
});

const setCommand = defineCommand({
  meta: { description: "Validate a strategy template file and put it in force (a rejected file changes nothing)" },
  args: { ...templateFileArg, ...configArg, ...logArgs },
  async run({ args }) {
    // Checked before connecting: a rejected template must not touch what is in force.
    const strategy = await loadTemplate(args.file);
    await withManagement(args, async (management) => {
      const { kv, keys } = management;
      // What was in force, for the event; a bad stored value is replaced, which is what fixes it.
      const before = await readInForce(kv, keys.strategy, decodeStrategy, defaultStrategy).catch((error: unknown) => {
        if (error instanceof BadValueError) return undefined;
        throw error;
      });
      if (before?.stored === true && sameStrategy(before.value, strategy)) {
        printLines(`strategy unchanged: ${keys.strategy} already holds this template`);
        return;
      }
      // A whole template replaces the one in force: the last `strategy set` wins, as it should.
      await kv.put(keys.strategy, JSON.stringify(strategyToJson(strategy)));
      const was = before === undefined ? "a bad value" : `${before.stored ? "" : "the default: "}${summary(before.value)}`;
      await recordOperatorEvent(management, "strategy-changed", null, `strategy from ${args.file}: ${summary(strategy)} (was ${was})`, "the strategy is in force");
      printLines(`strategy in force: ${summary(strategy)}`);
    });
  },
});

/** JSON shape: as `strategy show --json`'s "strategy". */
const defaultCommand = defineCommand({
  meta: { description: "Print the default strategy template (JSON): a starting point for your own" },
  args: { ...logArgs },
  run() {
    printJson(strategyToJson(defaultStrategy));
  },
});

export const strategyCommand = defineCommand({
  meta: { description: "Show, check and set the HA strategy: which plane failures recover a host's VMs, after what grace" },
  subCommands: { show: showCommand, check: checkCommand, set: setCommand, default: defaultCommand },
});

/** A template file that is no valid template: one problem per line, each naming the file and the row or field. */
class TemplateError extends FithaError {
  constructor(
    file: string,
    readonly problems: readonly string[],
  ) {
    super(problems.map((problem) => `${file}: ${problem}`).join("\n"), ExitCode.usage);
    this.name = "TemplateError";
  }
}

async function loadTemplate(file: string): Promise<Strategy> {
  let text: string;
  try {
    const handle = Bun.file(file);
    if ((await handle.stat()).size > maxTemplateBytes) throw new TemplateError(file, [`larger than ${maxTemplateBytes} bytes: not a strategy template`]);
    text = await handle.text();
  } catch (error) {
    if (error instanceof TemplateError) throw error;
    throw new TemplateError(file, [`cannot read the file (${describeFsError(error)})`]);
  }
  try {
    return parseStrategy(text, file);
  } catch (error) {
    if (error instanceof DecodeError) throw new TemplateError(file, error.problems);
    throw error;
  }
}

function sameStrategy(a: Strategy, b: Strategy): boolean {
  return JSON.stringify(strategyToJson(a)) === JSON.stringify(strategyToJson(b));
}

/** "grace 120000 ms, HA in rows 0, 1, 2, 4, 6" */
function summary(strategy: Strategy): string {
  const haRows = strategy.rows.flatMap((row, number) => (row.ha ? [number] : []));
  return `grace ${strategy.graceMs} ms, HA in rows ${haRows.length === 0 ? "none" : haRows.join(", ")}`;
}

/** The planes in the order of the row numbers (management 4, service 2, storage 1) and of the template's JSON. */
const rowPlanes = ["management", "service", "storage"] as const;

function renderStrategy(strategy: Strategy): string[] {
  const rows = strategy.rows.map((row, number) => [String(number), ...rowPlanes.map((plane) => row.planes[plane]), row.ha ? "yes" : "no"]);
  return [
    `grace period: ${strategy.graceMs} ms (a host stays in an HA row this long before its VMs are recovered)`,
    ...formatTable(["ROW", ...rowPlanes.map((plane) => plane.toUpperCase()), "HA"], rows).map((line) => `  ${line}`),
  ];
}
