/** `fitha tasks`: every recovery task (P/tasks/UUID), as the leader's executor left it. */
import { defineCommand } from "citty";
import { ExitCode } from "../../errors.ts";
import { taskRecord, vmRecord } from "../../store/records.ts";
import { listRecords } from "../../store/typed.ts";
import { configArg, jsonArg, logArgs } from "../args.ts";
import { formatTable, printJson, printLines } from "../output.ts";
import { withManagement } from "./common/management.ts";
import { formatDuration } from "./common/time.ts";

/**
 * JSON shape (`--json`):
 * { "tasks": [ { "vm", "name": string|null, "state": "queued"|"starting"|"done"|"retrying"|"failed",
 *                "attempts", "source", "target": string|null, "tried": [host], "created_at", "updated_at",
 *                "not_before": ISO time|null (while waiting), "reason" } ],
 *   "bad_values": [ "KEY: problem", ... ] }
 * Open tasks first (by creation), then closed ones (newest first).
 */
export const tasksCommand = defineCommand({
  meta: { description: "Show the recovery tasks: state, attempts, source and target host, timings, reason" },
  args: { ...configArg, ...jsonArg, ...logArgs },
  async run({ args }) {
    return await withManagement(args, async ({ kv, keys }) => {
      const [tasks, vms] = await Promise.all([listRecords(kv, keys.tasksPrefix, taskRecord), listRecords(kv, keys.vmsPrefix, vmRecord)]);
      const names = new Map(vms.records.map((v) => [v.record.uuid, v.record.name]));
      const nowMs = Date.now();
      const open = (state: string) => state !== "done" && state !== "failed";
      const rows = tasks.records
        .map((t) => t.record)
        .sort((a, b) => Number(open(b.state)) - Number(open(a.state)) || (open(a.state) ? a.createdMs - b.createdMs : b.updatedMs - a.updatedMs))
        .map((t) => ({
          vm: t.vm,
          name: names.get(t.vm) ?? null,
          state: t.state,
          attempts: t.attempts,
          source: t.source,
          target: t.target,
          tried: t.tried,
          created_at: new Date(t.createdMs).toISOString(),
          updated_at: new Date(t.updatedMs).toISOString(),
          not_before: (t.state === "queued" || t.state === "retrying") && t.notBeforeMs > nowMs ? new Date(t.notBeforeMs).toISOString() : null,
          reason: t.reason,
        }));
      const bad = [...tasks.bad, ...vms.bad].map((b) => b.message);
      if (args.json) {
        printJson({ tasks: rows, bad_values: bad });
      } else if (rows.length === 0) {
        printLines("no recovery tasks");
      } else {
        printLines(
          ...formatTable(
            ["VM", "STATE", "ATTEMPTS", "FROM", "TO", "AGE", "REASON"],
            rows.map((r) => [r.name ?? r.vm, r.state, String(r.attempts), r.source, r.target ?? "-", formatDuration(nowMs - Date.parse(r.created_at)), r.reason]),
          ),
        );
      }
      if (bad.length > 0) printLines("bad values (ignored):", ...bad.map((b) => `  ${b}`));
      return bad.length > 0 ? ExitCode.failed : ExitCode.ok;
    });
  },
});
