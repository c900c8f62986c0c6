/**
 * What the management cluster says about the fitha cluster, for `fitha status`: the leading
 * controller, the mode, maintenance, each registered host with the leader's view of it, the open
 * recovery requests and the last events. Read in one go (each read bounded by the request
 * deadline); values that do not decode are set apart as the daemons do, and listed.
 */
import { planes, type Plane } from "../../../config/fitha-config.ts";
import type { PlaneState } from "../../../core/strategy.ts";
import type { DecodeError } from "../../../store/codec.ts";
import { leaderRecord } from "../../../store/election.ts";
import { listRecentEvents } from "../../../store/events.ts";
import { hostOfKey, type Keys } from "../../../store/keys.ts";
import type { Kv } from "../../../store/kv.ts";
import { hostRecord, hostStateRecord, modeRecord, recoveryRequest, type HostStateRecord, type Mode } from "../../../store/records.ts";
import { decodeEntry, listRecords, readRecord } from "../../../store/typed.ts";
import { eventToJson, type EventJson } from "./event-output.ts";
import { maintenanceToJson, readMaintenance, type MaintenanceJson } from "./maintenance-state.ts";
import { ageMs } from "./time.ts";

/** `fitha status` shows this many of the newest events. */
export const statusEventCount = 5;

/**
 * JSON shape (stable; `fitha status --json` has it as "state"). Times are ISO 8601 UTC as
 * stored; each age_ms is this machine's clock minus that time (0 if the time is ahead):
 * { "leader": string|null (the controller that leads; null: none),
 *   "mode": { "mode": "normal"|"maintenance"|"self-defense", "since", "age_ms", "reason", "leader" } | null (null: no controller decided yet),
 *   "maintenance": { "global": { "reason", "by", "at" } | null, "hosts": [ { "host", "reason", "by", "at" } ] },
 *   "hosts": [ { "name", "host_id": number|null (its lockspace host id, lockd's --host-id; null: a bad host record),
 *                "maintenance": bool, "recovery_requested": bool,
 *                "view": { "planes": { "management"|"storage"|"service": { "state": "up"|"down"|"unknown", "since", "age_ms" } },
 *                          "decision": "ha-needed"|"healthy"|"strategy"|"grace"|"platform-fault"|"maintenance"|"self-defense",
 *                          "reason", "at", "leader" } | null (null: no controller view yet) } ],
 *   "recovery_requests": [ { "host", "requested_at", "age_ms", "reason", "planes": { "management"|"storage"|"service": "up"|"down" } } ],
 *   "events": [ the last 5, oldest first, as `fitha events --json` ],
 *   "bad_values": [ "/fitha/mode: mode: expected one of ..." ] (values the daemons ignore) }
 */
export interface ClusterStateJson {
  leader: string | null;
  mode: { mode: Mode; since: string; age_ms: number; reason: string; leader: string } | null;
  maintenance: MaintenanceJson;
  hosts: HostStatusJson[];
  recovery_requests: Array<{ host: string; requested_at: string; age_ms: number; reason: string; planes: Record<Plane, PlaneState> }>;
  events: EventJson[];
  bad_values: string[];
}

export interface HostStatusJson {
  name: string;
  host_id: number | null;
  maintenance: boolean;
  recovery_requested: boolean;
  view: {
    planes: Record<Plane, { state: HostStateRecord["planes"][Plane]["state"]; since: string; age_ms: number }>;
    decision: HostStateRecord["decision"];
    reason: string;
    at: string;
    leader: string;
  } | null;
}

export interface ClusterState {
  readonly json: ClusterStateJson;
  /** Keys under P/hosts/ (as `fitha status` has always counted them). */
  readonly registered: number;
}

/** Reads the state; a failed read rejects (a KvError), a bad value is listed in bad_values. */
export async function readClusterState(kv: Kv, keys: Keys, nowMs: number): Promise<ClusterState> {
  const [leader, mode, maintenance, hosts, hostStates, requests, events] = await Promise.all([
    readRecord(kv, keys.election, leaderRecord),
    readRecord(kv, keys.mode, modeRecord),
    readMaintenance(kv, keys),
    kv.getPrefix(keys.hostsPrefix),
    listRecords(kv, keys.hostStatesPrefix, hostStateRecord),
    listRecords(kv, keys.recoveryRequestsPrefix, recoveryRequest),
    listRecentEvents(kv, keys, { limit: statusEventCount, nowMs }),
  ]);
  const bad: DecodeError[] = [];
  const good = <T>(decoded: { record: T } | { bad: DecodeError } | undefined): T | undefined => {
    if (decoded === undefined) return undefined;
    if ("bad" in decoded) {
      bad.push(decoded.bad);
      return undefined;
    }
    return decoded.record;
  };
  const modeNow = good(mode);
  const openRequests = requests.records.flatMap(({ key, record }) => {
    const host = hostOfKey(keys.recoveryRequestsPrefix, key);
    return host === undefined ? [] : [{ host, requested_at: record.requestedAt, age_ms: ageMs(record.requestedAt, nowMs), reason: record.reason, planes: { ...record.planes } }];
  });
  const views = new Map(hostStates.records.flatMap(({ key, record }) => {
    const name = hostOfKey(keys.hostStatesPrefix, key);
    return name === undefined ? [] : [[name, record] as const];
  }));
  const inMaintenance = new Set(maintenance.hosts.map((h) => h.host));
  const requested = new Set(openRequests.map((r) => r.host));
  const hostList = hosts.entries.flatMap((entry): HostStatusJson[] => {
    const name = hostOfKey(keys.hostsPrefix, entry.key);
    if (name === undefined) return [];
    // The record itself is the agent's business; a bad one is still a registered host.
    const record = good(decodeEntry(entry, hostRecord));
    const view = views.get(name);
    return [{ name, host_id: record?.hostId ?? null, maintenance: inMaintenance.has(name), recovery_requested: requested.has(name), view: view === undefined ? null : viewJson(view, nowMs) }];
  });
  bad.push(...maintenance.bad, ...hostStates.bad, ...requests.bad, ...events.bad);
  const json: ClusterStateJson = {
    leader: good(leader)?.name ?? null,
    mode: modeNow === undefined ? null : { mode: modeNow.mode, since: modeNow.since, age_ms: ageMs(modeNow.since, nowMs), reason: modeNow.reason, leader: modeNow.leader },
    maintenance: maintenanceToJson(maintenance),
    hosts: hostList,
    recovery_requests: openRequests,
    events: events.events.map(eventToJson),
    bad_values: bad.map((error) => error.message),
  };
  return { json, registered: hosts.count };
}

function viewJson(record: HostStateRecord, nowMs: number): NonNullable<HostStatusJson["view"]> {
  const plane = (name: Plane) => ({ state: record.planes[name].state, since: record.planes[name].since, age_ms: ageMs(record.planes[name].since, nowMs) });
  return {
    planes: Object.fromEntries(planes.map((name) => [name, plane(name)])) as NonNullable<HostStatusJson["view"]>["planes"],
    decision: record.decision,
    reason: record.reason,
    at: record.at,
    leader: record.leader,
  };
}
