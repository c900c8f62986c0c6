/** What is in maintenance, for `fitha maintenance status` and `fitha status`. */
import type { DecodeError } from "../../../store/codec.ts";
import { hostOfKey, type Keys } from "../../../store/keys.ts";
import type { Kv } from "../../../store/kv.ts";
import { maintenanceRecord, type MaintenanceRecord } from "../../../store/records.ts";
import { listRecords, readRecord } from "../../../store/typed.ts";
import { formatSince } from "./time.ts";

/**
 * JSON shape (stable); only what is on is listed (a record with on: false is off):
 * { "global": { "reason": string, "by": "user@host", "at": ISO time } | null,
 *   "hosts": [ { "host": "compute-1", "reason": string, "by": "user@host", "at": ISO time } ] }
 */
export interface MaintenanceJson {
  global: MaintenanceOnJson | null;
  hosts: Array<{ host: string } & MaintenanceOnJson>;
}

interface MaintenanceOnJson {
  reason: string;
  by: string;
  at: string;
}

export interface MaintenanceState extends MaintenanceJson {
  /** Maintenance keys whose value is no MaintenanceRecord (the controller ignores them too). */
  readonly bad: readonly DecodeError[];
}

export async function readMaintenance(kv: Kv, keys: Keys): Promise<MaintenanceState> {
  const [global, perHost] = await Promise.all([readRecord(kv, keys.maintenanceGlobal, maintenanceRecord), listRecords(kv, keys.maintenanceHostsPrefix, maintenanceRecord)]);
  const bad = [...(global !== undefined && "bad" in global ? [global.bad] : []), ...perHost.bad];
  const hosts = perHost.records.flatMap(({ key, record }) => {
    const host = hostOfKey(keys.maintenanceHostsPrefix, key);
    return host !== undefined && record.on ? [{ host, ...onJson(record) }] : [];
  });
  const globalOn = global !== undefined && "record" in global && global.record.on ? onJson(global.record) : null;
  return { global: globalOn, hosts, bad };
}

function onJson(record: MaintenanceRecord): MaintenanceOnJson {
  return { reason: record.reason, by: record.by, at: record.at };
}

/** "maintenance: off", or a line for the global switch and one per host in maintenance. */
export function renderMaintenance(state: MaintenanceJson, nowMs: number): string[] {
  const describe = (on: MaintenanceOnJson) => `on since ${formatSince(on.at, nowMs)} by ${on.by}${on.reason === "" ? "" : `: ${on.reason}`}`;
  if (state.global === null && state.hosts.length === 0) return ["maintenance: off"];
  return [
    `maintenance: ${state.global === null ? "off cluster-wide" : `cluster-wide ${describe(state.global)} (no HA anywhere)`}`,
    ...state.hosts.map((h) => `  host ${h.host} ${describe(h)}`),
  ];
}

/** JSON without the bad values (those go where the command reports problems). */
export function maintenanceToJson(state: MaintenanceState): MaintenanceJson {
  return { global: state.global, hosts: state.hosts };
}
