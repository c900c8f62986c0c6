/**
 * `fitha alarms list`: the alarms fitha raises, what each means and what to do (the catalogue).
 * `fitha alarms test`: sends one test alarm to the configured webhook, once, and says how it went:
 * to check a receiver before relying on it.
 */
import { defineCommand } from "citty";
import { alarmCatalogue, type AlarmNotice } from "../../alarms/catalogue.ts";
import { webhookTransport } from "../../alarms/webhook.ts";
import { errorMessage, FithaError, UsageError } from "../../errors.ts";
import { configArg, jsonArg, logArgs } from "../args.ts";
import { loadCommandConfig } from "../command-config.ts";
import { formatTable, printJson, printLines } from "../output.ts";
import { operatorName } from "./common/management.ts";

/** JSON shape (`--json`): { "alarms": [{ "name", "severity", "fired_by": [kind…], "resolved_by": [kind…], "meaning", "action" }] } */
const listCommand = defineCommand({
  meta: { description: "List the alarms fitha raises: severity, the events that fire and resolve them, what to do" },
  args: { ...jsonArg, ...logArgs },
  run({ args }) {
    if (args.json) {
      printJson({ alarms: alarmCatalogue.map((d) => ({ name: d.name, severity: d.severity, fired_by: d.firedBy, resolved_by: d.resolvedBy, meaning: d.meaning, action: d.action })) });
      return;
    }
    printLines(...formatTable(["ALARM", "SEVERITY", "FIRED BY", "RESOLVED BY"], alarmCatalogue.map((d) => [d.name, d.severity, d.firedBy.join(","), d.resolvedBy.join(",") || "-"])));
    printLines("", "Meaning and what to do: fitha alarms list --json, or src/alarms/README.md.");
  },
});

const testCommand = defineCommand({
  meta: { description: "Send one test alarm to [alarms] webhook_url (no retries) and report the receiver's answer" },
  args: { ...configArg, ...logArgs },
  async run({ args }) {
    const { config } = await loadCommandConfig(args);
    const { webhook_url: url, webhook_timeout_ms: timeoutMs } = config.alarms;
    if (url === "") throw new UsageError("alarms test: [alarms] webhook_url is empty in the configuration: no webhook to test");
    const transport = webhookTransport(url, { timeoutMs, cluster: config.etcd.prefix });
    const by = operatorName();
    const notice: AlarmNotice = { alarm: "test", status: "firing", severity: "info", host: null, reason: `a test alarm sent by ${by} with fitha alarms test`, action: "None: a test.", event: null };
    try {
      await transport.send(notice);
    } catch (error) {
      throw new FithaError(`alarms test: ${transport.name} did not take the test alarm: ${errorMessage(error)}`);
    }
    printLines(`test alarm delivered to ${transport.name}`);
  },
});

export const alarmsCommand = defineCommand({
  meta: { description: "The alarms fitha raises (list) and a check of the webhook they go to (test)" },
  subCommands: { list: listCommand, test: testCommand },
});
