/**
 * `fitha vm add | ha | list | show | remove`: the VM registry (src/store/vm-registry.ts) in
 * P/vms/UUID. An HA VM gets a VM lease slot (P/lease-slots/SLOT) that its stored domain XML
 * names in fitha's lease element, which the qemu hook acquires before the VM starts.
 */
import { defineCommand, type ArgsDef } from "citty";
import { describeFsError } from "../../config/load.ts";
import { FithaError, UsageError } from "../../errors.ts";
import { logger } from "../../log.ts";
import { maxVmPriority, vmGroupPattern, type VmRecord } from "../../store/records.ts";
import { addVm, describeVm, findVm, listVms, removeVm, setVmHa } from "../../store/vm-registry.ts";
import { maxDefinitionBytes, readDomainDefinition, type DomainDefinition } from "../../virt/domain-definition.ts";
import { configArg, jsonArg, logArgs } from "../args.ts";
import { formatTable, printJson, printLines } from "../output.ts";
import { hostArgument } from "./common/host-argument.ts";
import { recordOperatorEvent, withManagement } from "./common/management.ts";

const log = logger("vm");

const vmArg = { vm: { type: "positional", required: true, description: "The VM: its UUID or its name" } } as const satisfies ArgsDef;

/**
 * JSON shape of one VM (`vm show --json`, `vm add --json`; `vm list --json` without "xml"):
 * { "uuid": "6f1c8a3e-…", "name": "web-1", "ha": bool, "priority": 0..1000, "group": "db" | "",
 *   "slot": 3 | null (the VM lease slot; kept when HA goes off), "host": "compute-1" | null,
 *   "added_at": ISO time, "updated_at": ISO time, "xml": "<domain …>…</domain>" }
 */
function vmToJson(record: VmRecord, withXml: boolean) {
  const { uuid, name, ha, priority, group, slot, host, addedAt, updatedAt, xml } = record;
  return { uuid, name, ha, priority, group, slot, host, added_at: addedAt, updated_at: updatedAt, ...(withXml ? { xml } : {}) };
}

/** "HA on, lease slot 3", "HA off (lease slot 3 stays its own)", "HA off". */
function haSummary(record: VmRecord): string {
  if (record.ha) return `HA on, lease slot ${record.slot}`;
  return record.slot === null ? "HA off" : `HA off (lease slot ${record.slot} stays its own)`;
}

/** JSON shape (`--json`): the added VM, as `vm show --json`. */
const addCommand = defineCommand({
  meta: { description: "Register a VM from its domain XML; --ha gives it a lease slot (refused if its UUID or name is registered)" },
  args: {
    xml: { type: "string", required: true, valueHint: "FILE", description: "The domain XML (as `virsh dumpxml` prints it); a missing <uuid> is generated" },
    ha: { type: "boolean", description: "Make it an HA VM: a lease slot, named in its XML's <metadata>" },
    priority: { type: "string", valueHint: "N", description: `Recovery priority, 0 to ${maxVmPriority}, higher first (default 0)` },
    group: { type: "string", valueHint: "G", description: "Anti-affinity group: no two VMs of one group on one host (default: none)" },
    host: { type: "string", valueHint: "NAME", description: "The registered host it runs on (default: not known)" },
    ...configArg,
    ...jsonArg,
    ...logArgs,
  },
  async run({ args }) {
    const where = "vm add";
    const priority = priorityArgument(args.priority ?? "0", where);
    const group = groupArgument(args.group ?? "", where);
    const host = args.host === undefined ? null : hostArgument(args.host, where);
    // Checked before connecting: a rejected file must not touch the registry.
    const definition = await loadDefinition(args.xml, where);
    await withManagement(args, async (management) => {
      const { kv, keys } = management;
      if (host !== null && (await kv.get(keys.host(host))) === undefined) throw new FithaError(`${where}: no host "${host}" is registered (${keys.host(host)} does not exist)`);
      const record = await addVm(kv, keys, { definition, ha: args.ha === true, priority, group, host });
      const what = `VM ${describeVm(record)} added`;
      const details = [haSummary(record), `priority ${record.priority}`, ...(record.group === "" ? [] : [`group ${record.group}`]), ...(record.host === null ? [] : [`host ${record.host}`])];
      await recordOperatorEvent(management, "vm-added", record.host, `${what}: ${details.join(", ")}`, what);
      if (args.json) printJson(vmToJson(record, true));
      else printLines(`${what}: ${haSummary(record)}`);
    });
  },
});

const haCommand = defineCommand({
  meta: { description: "Switch a VM's HA on (it gets a lease slot, kept for good) or off" },
  args: {
    ...vmArg,
    state: { type: "positional", required: true, description: "on or off" },
    ...configArg,
    ...logArgs,
  },
  async run({ args }) {
    if (args.state !== "on" && args.state !== "off") throw new UsageError(`vm ha: the state must be on or off, not "${args.state}"`);
    const on = args.state === "on";
    await withManagement(args, async (management) => {
      const { record, changed } = await setVmHa(management.kv, management.keys, args.vm, on);
      const what = `VM ${describeVm(record)}: ${haSummary(record)}`;
      if (changed) await recordOperatorEvent(management, "vm-ha-changed", record.host, what, what);
      printLines(changed ? what : `VM ${describeVm(record)}: unchanged, ${haSummary(record)}`);
    });
  },
});

/**
 * JSON shape (`--json`): { "vms": [ one VM as `vm show --json`, without "xml" ],
 *   "bad_values": [ "/fitha/vms/…: priority: expected an integer from 0 to 1000, got 5000" ] }
 * VMs by name, then UUID.
 */
const listCommand = defineCommand({
  meta: { description: "List the registered VMs" },
  args: {
    host: { type: "string", valueHint: "NAME", description: "Only the VMs on this host" },
    ...configArg,
    ...jsonArg,
    ...logArgs,
  },
  async run({ args }) {
    const host = args.host === undefined ? undefined : hostArgument(args.host, "vm list");
    await withManagement(args, async ({ kv, keys }) => {
      const { vms, bad } = await listVms(kv, keys);
      for (const error of bad) log.warn(`bad value skipped: ${error.message}`);
      const records = vms
        .map((v) => v.record)
        .filter((r) => host === undefined || r.host === host)
        .sort((a, b) => (a.name === b.name ? (a.uuid < b.uuid ? -1 : 1) : a.name < b.name ? -1 : 1));
      if (args.json) {
        printJson({ vms: records.map((r) => vmToJson(r, false)), bad_values: bad.map((error) => error.message) });
        return;
      }
      if (records.length === 0) {
        printLines(host === undefined ? "no VMs registered" : `no VMs registered on host ${host}`);
        return;
      }
      const rows = records.map((r) => [r.name, r.uuid, r.ha ? "on" : "off", r.slot === null ? "-" : String(r.slot), String(r.priority), r.group === "" ? "-" : r.group, r.host ?? "-"]);
      printLines(...formatTable(["NAME", "UUID", "HA", "SLOT", "PRIORITY", "GROUP", "HOST"], rows));
    });
  },
});

/** JSON shape: see vmToJson. */
const showCommand = defineCommand({
  meta: { description: "Show one VM (by UUID or name) with its domain XML as fitha keeps it" },
  args: { ...vmArg, ...configArg, ...jsonArg, ...logArgs },
  async run({ args }) {
    await withManagement(args, async ({ kv, keys }) => {
      const { record } = await findVm(kv, keys, args.vm);
      if (args.json) {
        printJson(vmToJson(record, true));
        return;
      }
      printLines(
        `VM ${describeVm(record)}: ${haSummary(record)}`,
        `  priority: ${record.priority}`,
        `  group:    ${record.group === "" ? "none" : record.group}`,
        `  host:     ${record.host ?? "not known"}`,
        `  added:    ${record.addedAt}`,
        `  updated:  ${record.updatedAt}`,
        "  domain XML:",
        record.xml.trimEnd(),
      );
    });
  },
});

const removeCommand = defineCommand({
  meta: { description: "Remove a VM from the registry (an HA one only with --force); its lease slot stays claimed" },
  args: {
    ...vmArg,
    force: { type: "boolean", description: "Remove it even though it is HA (the VM is no longer recovered)" },
    ...configArg,
    ...logArgs,
  },
  async run({ args }) {
    await withManagement(args, async (management) => {
      const record = await removeVm(management.kv, management.keys, args.vm, args.force === true);
      const slot = record.slot === null ? "" : `; lease slot ${record.slot} stays claimed`;
      const what = `VM ${describeVm(record)} removed`;
      await recordOperatorEvent(management, "vm-removed", record.host, `${what} (HA was ${record.ha ? "on" : "off"}${slot})`, what);
      printLines(`${what}${slot}`);
    });
  },
});

export const vmCommand = defineCommand({
  meta: { description: "Register VMs, switch their HA on or off (each HA VM gets a lease slot), list and remove them" },
  subCommands: { add: addCommand, ha: haCommand, list: listCommand, show: showCommand, remove: removeCommand },
});

function priorityArgument(value: string, where: string): number {
  const priority = Number(value);
  if (!/^[0-9]+$/.test(value) || priority > maxVmPriority) throw new UsageError(`${where}: --priority must be a whole number from 0 to ${maxVmPriority}, not "${value}"`);
  return priority;
}

function groupArgument(value: string, where: string): string {
  if (value !== "" && !vmGroupPattern.test(value)) throw new UsageError(`${where}: --group ${JSON.stringify(value)}: 1 to 63 letters, digits, ".", "_" or "-", starting with a letter or digit`);
  return value;
}

/** The domain XML file, checked and with its <uuid>; any problem is a usage error naming the file. */
async function loadDefinition(file: string, where: string): Promise<DomainDefinition> {
  let text: string;
  try {
    const handle = Bun.file(file);
    const { size } = await handle.stat();
    if (size > maxDefinitionBytes) throw new UsageError(`${where}: ${file}: larger than ${maxDefinitionBytes} bytes: not a domain XML`);
    text = await handle.text();
  } catch (error) {
    if (error instanceof UsageError) throw error;
    throw new UsageError(`${where}: ${file}: cannot read the file (${describeFsError(error)})`);
  }
  try {
    return readDomainDefinition(text);
  } catch (error) {
    if (error instanceof FithaError) throw new UsageError(`${where}: ${file}: ${error.message}`);
    throw error;
  }
}
