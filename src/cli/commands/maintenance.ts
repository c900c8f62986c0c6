/**
 * `fitha maintenance on | off | status`: maintenance switches off HA, cluster-wide (P/maintenance/
 * global) or for one host (P/maintenance/hosts/NAME); the controller follows both keys.
 */
import { defineCommand, type ArgsDef } from "citty";
import { FithaError, UsageError } from "../../errors.ts";
import { logger } from "../../log.ts";
import type { MaintenanceRecord } from "../../store/records.ts";
import { configArg, jsonArg, logArgs } from "../args.ts";
import { printJson, printLines } from "../output.ts";
import { hostArgument } from "./common/host-argument.ts";
import { maintenanceToJson, readMaintenance, renderMaintenance } from "./common/maintenance-state.ts";
import { operatorName, recordOperatorEvent, withManagement, type Management } from "./common/management.ts";

const log = logger("maintenance");

/** A reason is a sentence or two; the record allows 4096 characters, and the event adds its own words. */
const maxReasonLength = 1024;

const switchArgs = {
  host: { type: "string", valueHint: "NAME", description: "Only this registered host (default: the whole cluster)" },
  reason: { type: "string", valueHint: "TEXT", description: "Why, for the record and the event" },
  ...configArg,
  ...logArgs,
} as const satisfies ArgsDef;

function switchCommand(on: boolean) {
  return defineCommand({
    meta: { description: on ? "Switch maintenance on (no HA), cluster-wide or for one host" : "Switch maintenance off (HA again), cluster-wide or for one host" },
    args: switchArgs,
    async run({ args }) {
      const where = `maintenance ${on ? "on" : "off"}`;
      const host = args.host === undefined ? null : hostArgument(args.host, where);
      const reason = args.reason ?? "";
      if (reason.length > maxReasonLength) throw new UsageError(`${where}: --reason: at most ${maxReasonLength} characters, not ${reason.length}`);
      await withManagement(args, (management) => setMaintenance(management, host, on, reason, where));
    },
  });
}

const statusArgs = { ...configArg, ...jsonArg, ...logArgs } as const satisfies ArgsDef;

async function showMaintenance(args: { readonly json?: boolean | undefined } & Parameters<typeof withManagement>[0]): Promise<void> {
  await withManagement(args, async ({ kv, keys }) => {
    const state = await readMaintenance(kv, keys);
    for (const bad of state.bad) log.warn(`bad value ignored (the controller ignores it too): ${bad.message}`);
    if (args.json) printJson({ ...maintenanceToJson(state), bad_values: state.bad.map((bad) => bad.message) });
    else printLines(...renderMaintenance(state, Date.now()));
  });
}

/**
 * JSON shape (`--json`), of `fitha maintenance` alone too; only what is on is listed:
 * { "global": { "reason": string, "by": "user@host", "at": ISO time } | null,
 *   "hosts": [ { "host": "compute-1", "reason": string, "by": "user@host", "at": ISO time } ],
 *   "bad_values": [ "/fitha/maintenance/hosts/x: on: expected true or false, got 1" ] }
 */
const statusCommand = defineCommand({
  meta: { description: "Show what is in maintenance (also `fitha maintenance` alone)" },
  args: statusArgs,
  run: ({ args }) => showMaintenance(args),
});

export const maintenanceCommand = defineCommand({
  meta: { description: "Switch maintenance (no HA) on or off, cluster-wide or per host; without a command: show it" },
  args: statusArgs,
  subCommands: { on: switchCommand(true), off: switchCommand(false), status: statusCommand },
  run: ({ args }) => showMaintenance(args),
});

async function setMaintenance(management: Management, host: string | null, on: boolean, reason: string, where: string): Promise<void> {
  const { kv, keys } = management;
  const key = host === null ? keys.maintenanceGlobal : keys.maintenanceHost(host);
  // Switching off a host that is no longer registered stays possible: its record must not stay on for ever.
  if (host !== null && (await kv.get(keys.host(host))) === undefined && (on || (await kv.get(key)) === undefined)) {
    throw new FithaError(`${where}: no host "${host}" is registered (${keys.host(host)} does not exist)`);
  }
  const record: MaintenanceRecord = { on, reason, by: operatorName(), at: new Date().toISOString() };
  await kv.put(key, JSON.stringify(record));
  const what = `${host === null ? "cluster-wide maintenance" : `maintenance of host ${host}`} is ${on ? "on" : "off"}`;
  await recordOperatorEvent(management, on ? "maintenance-on" : "maintenance-off", host, `${what}${reason === "" ? "" : `: ${reason}`}`, what);
  printLines(what);
}
