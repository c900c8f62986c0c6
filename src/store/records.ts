/**
 * The values under fitha's etcd keys (keys.ts has which key holds which), with their codecs.
 * Times are ISO 8601 UTC strings (wall clock: for people and for ordering events; no decision
 * compares wall-clock times of different machines).
 */
import { planes, type Plane } from "../config/fitha-config.ts";
import type { PlaneState } from "../core/strategy.ts";
import { maxSlots } from "../lease/layout.ts";
import { Fields, type Codec } from "./codec.ts";
import { vmUuidPattern } from "./keys.ts";
import { maxAttempts, taskStates, type RecoveryTask } from "../core/recovery-tasks.ts";

const hostName = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;

export interface HostRecord {
  readonly name: string;
  /** This host's id in the lockspace, allocated once through P/host-ids/ID. */
  readonly hostId: number;
  /** The address this host has on each plane (for operators and placement). */
  readonly addresses: Readonly<Record<Plane, string>>;
  readonly capacity: { readonly cpus: number; readonly memoryKiB: number };
  readonly agentVersion: string;
  readonly registeredAt: string;
}

export const hostRecord: Codec<HostRecord> = (raw, source) => {
  const f = new Fields(source);
  const r = f.object(raw, "", ["name", "hostId", "addresses", "capacity", "agentVersion", "registeredAt"]);
  const addresses = f.object(r["addresses"], "addresses", planes);
  const capacity = f.object(r["capacity"], "capacity", ["cpus", "memoryKiB"]);
  return f.done({
    name: f.string(r["name"], "name", { pattern: hostName }),
    hostId: f.integer(r["hostId"], "hostId", 1, 2000),
    // "" when the host's config does not say ([host.addresses]).
    addresses: { management: f.text(addresses["management"], "addresses.management", 253), storage: f.text(addresses["storage"], "addresses.storage", 253), service: f.text(addresses["service"], "addresses.service", 253) },
    capacity: { cpus: f.integer(capacity["cpus"], "capacity.cpus", 0, 1_000_000), memoryKiB: f.integer(capacity["memoryKiB"], "capacity.memoryKiB", 0, Number.MAX_SAFE_INTEGER) },
    agentVersion: f.string(r["agentVersion"], "agentVersion", { maxLength: 64 }),
    registeredAt: f.time(r["registeredAt"], "registeredAt"),
  });
};

/** Who owns a lockspace host id: created once, in a transaction that fails if the key exists. */
export interface HostIdClaim {
  readonly host: string;
  readonly claimedAt: string;
}

export const hostIdClaim: Codec<HostIdClaim> = (raw, source) => {
  const f = new Fields(source);
  const r = f.object(raw, "", ["host", "claimedAt"]);
  return f.done({ host: f.string(r["host"], "host", { pattern: hostName }), claimedAt: f.time(r["claimedAt"], "claimedAt") });
};

/** One plane's heartbeat of one host, in that plane's cluster, under an etcd lease. */
export interface Heartbeat {
  readonly host: string;
  readonly plane: Plane;
  readonly sentAt: string;
  /** Counts up with every heartbeat of this agent process: a changed value is a live agent. */
  readonly sequence: number;
}

export const heartbeat: Codec<Heartbeat> = (raw, source) => {
  const f = new Fields(source);
  const r = f.object(raw, "", ["host", "plane", "sentAt", "sequence"]);
  return f.done({
    host: f.string(r["host"], "host", { pattern: hostName }),
    plane: f.choice(r["plane"], "plane", planes),
    sentAt: f.time(r["sentAt"], "sentAt"),
    sequence: f.integer(r["sequence"], "sequence", 0, Number.MAX_SAFE_INTEGER),
  });
};

/** Which planes' clusters an agent can reach itself (its own side of the plane matrix). */
export interface Reachability {
  readonly host: string;
  readonly planes: Readonly<Record<Plane, boolean>>;
  readonly at: string;
}

export const reachability: Codec<Reachability> = (raw, source) => {
  const f = new Fields(source);
  const r = f.object(raw, "", ["host", "planes", "at"]);
  const p = f.object(r["planes"], "planes", planes);
  return f.done({
    host: f.string(r["host"], "host", { pattern: hostName }),
    planes: { management: f.boolean(p["management"], "planes.management"), storage: f.boolean(p["storage"], "planes.storage"), service: f.boolean(p["service"], "planes.service") },
    at: f.time(r["at"], "at"),
  });
};

export interface MaintenanceRecord {
  readonly on: boolean;
  readonly reason: string;
  /** Who switched it (user@host of the operator command). */
  readonly by: string;
  readonly at: string;
}

export const maintenanceRecord: Codec<MaintenanceRecord> = (raw, source) => {
  const f = new Fields(source);
  const r = f.object(raw, "", ["on", "reason", "by", "at"]);
  return f.done({ on: f.boolean(r["on"], "on"), reason: f.text(r["reason"], "reason"), by: f.string(r["by"], "by", { maxLength: 256 }), at: f.time(r["at"], "at") });
};

/** Where the alarm relay is in the event log (src/alarms/relay.ts). */
export interface AlarmCursorRecord {
  /** The sequence of the last event whose alarm was delivered or given up. */
  readonly sequence: string;
  readonly at: string;
  readonly by: string;
}

export const alarmCursorRecord: Codec<AlarmCursorRecord> = (raw, source) => {
  const f = new Fields(source);
  const r = f.object(raw, "", ["sequence", "at", "by"]);
  return f.done({ sequence: f.string(r["sequence"], "sequence", { pattern: /^[0-9a-z-]{1,64}$/ }), at: f.time(r["at"], "at"), by: f.string(r["by"], "by", { maxLength: 256 }) });
};

export const modes = ["normal", "maintenance", "self-defense"] as const;
export type Mode = (typeof modes)[number];

/** The cluster's HA mode as the active controller last decided it. */
export interface ModeRecord {
  readonly mode: Mode;
  readonly since: string;
  readonly reason: string;
  /** The controller that wrote it. */
  readonly leader: string;
}

export const modeRecord: Codec<ModeRecord> = (raw, source) => {
  const f = new Fields(source);
  const r = f.object(raw, "", ["mode", "since", "reason", "leader"]);
  return f.done({ mode: f.choice(r["mode"], "mode", modes), since: f.time(r["since"], "since"), reason: f.text(r["reason"], "reason"), leader: f.string(r["leader"], "leader", { maxLength: 256 }) });
};

export const eventKinds = [
  "host-registered",
  "plane-down",
  "plane-up",
  "platform-fault",
  "platform-recovered",
  "ha-needed",
  "ha-not-needed",
  "self-defense-entered",
  "self-defense-left",
  "maintenance-on",
  "maintenance-off",
  "leader-elected",
  "leader-lost",
  "strategy-changed",
  "settings-changed",
  "bad-value",
  "vm-added",
  "vm-ha-changed",
  "vm-removed",
  "recovery-task-created",
  "vm-recovered",
  "recovery-waiting",
  "recovery-failed",
  "vm-restarted",
  "fencing-asked",
  "fencing-answered",
  "self-fenced",
  "lockd-fenced",
  "leases-taken",
  "lease-corrupt",
  "storage-global-fault",
  "clock-jump",
] as const;
export type EventKind = (typeof eventKinds)[number];

export interface EventRecord {
  readonly time: string;
  readonly kind: EventKind;
  /** The host it is about, if any. */
  readonly host: string | null;
  /** Why, in words an operator can act on. */
  readonly reason: string;
  /** Who raised it: "controller@NAME", "agent@NAME", "cli@USER". */
  readonly by: string;
}

export const eventRecord: Codec<EventRecord> = (raw, source) => {
  const f = new Fields(source);
  const r = f.object(raw, "", ["time", "kind", "host", "reason", "by"]);
  return f.done({
    time: f.time(r["time"], "time"),
    kind: f.choice(r["kind"], "kind", eventKinds),
    host: r["host"] === null ? null : f.string(r["host"], "host", { pattern: hostName }),
    reason: f.text(r["reason"], "reason"),
    by: f.string(r["by"], "by", { maxLength: 256 }),
  });
};

/** The controller's order to recover a host's HA VMs (carried out by the recovery issue's executor). */
export interface RecoveryRequest {
  readonly host: string;
  readonly requestedAt: string;
  readonly reason: string;
  /** The plane matrix row when it was made. */
  readonly planes: Readonly<Record<Plane, PlaneState>>;
  /**
   * "planes": the host's planes failed (closed when the host is healthy again); "storage": its
   * lockd lost the lease storage and was answered `fence` (closed when its VMs' tasks are).
   * Absent in requests written before it existed: "planes".
   */
  readonly cause: "planes" | "storage";
}

export const recoveryRequest: Codec<RecoveryRequest> = (raw, source) => {
  const f = new Fields(source);
  const r = f.object(raw, "", ["host", "requestedAt", "reason", "planes", "cause"]);
  const p = f.object(r["planes"], "planes", planes);
  const state = (plane: Plane) => f.choice(p[plane], `planes.${plane}`, ["up", "down"] as const);
  return f.done({
    host: f.string(r["host"], "host", { pattern: hostName }),
    requestedAt: f.time(r["requestedAt"], "requestedAt"),
    reason: f.text(r["reason"], "reason"),
    planes: { management: state("management"), storage: state("storage"), service: state("service") },
    cause: r["cause"] === undefined ? "planes" : f.choice(r["cause"], "cause", ["planes", "storage"] as const),
  });
};

export const observedStates = ["up", "down", "unknown"] as const;
export const decisionKinds = ["ha-needed", "healthy", "strategy", "grace", "platform-fault", "maintenance", "self-defense"] as const;

/** The active controller's view of one host, written when it changes (for `fitha status`). */
export interface HostStateRecord {
  readonly host: string;
  /** Each plane's state and since when (wall clock of the controller, from its own observation). */
  readonly planes: Readonly<Record<Plane, { readonly state: (typeof observedStates)[number]; readonly since: string }>>;
  readonly decision: (typeof decisionKinds)[number];
  readonly reason: string;
  readonly at: string;
  readonly leader: string;
}

export const hostStateRecord: Codec<HostStateRecord> = (raw, source) => {
  const f = new Fields(source);
  const r = f.object(raw, "", ["host", "planes", "decision", "reason", "at", "leader"]);
  const p = f.object(r["planes"], "planes", planes);
  const plane = (name: Plane) => {
    const o = f.object(p[name], `planes.${name}`, ["state", "since"]);
    return { state: f.choice(o["state"], `planes.${name}.state`, observedStates), since: f.time(o["since"], `planes.${name}.since`) };
  };
  return f.done({
    host: f.string(r["host"], "host", { pattern: hostName }),
    planes: { management: plane("management"), storage: plane("storage"), service: plane("service") },
    decision: f.choice(r["decision"], "decision", decisionKinds),
    reason: f.text(r["reason"], "reason"),
    at: f.time(r["at"], "at"),
    leader: f.string(r["leader"], "leader", { maxLength: 256 }),
  });
};

/** VmRecord.priority: higher recovers first. */
export const maxVmPriority = 1000;
/**
 * VmRecord.xml's bound: far above a real domain (a few KiB), and below etcd's default request
 * limit (1.5 MiB) with room for the rest of the record and JSON's escapes.
 */
export const maxVmXmlBytes = 1024 * 1024;
/** An anti-affinity group's name: the characters of a host name, as it may end up in keys and logs. */
export const vmGroupPattern = hostName;
/** A domain's name: libvirt refuses "/" in one; control characters have no business in one either. */
export const vmNamePattern = /^[^/\p{Cc}]{1,255}$/u;

/** A VM fitha knows, HA or not: what `fitha vm` writes and the recovery reads. */
export interface VmRecord {
  /** Lower case: the key's and the lease resource's form. */
  readonly uuid: string;
  /** The domain's <name>. */
  readonly name: string;
  /** The domain XML as fitha defines it: with fitha's lease element exactly when ha is on. */
  readonly xml: string;
  readonly ha: boolean;
  /** 0 to maxVmPriority; higher recovers first. */
  readonly priority: number;
  /** Anti-affinity group: no two VMs of one group on one host; "" for none. */
  readonly group: string;
  /**
   * The VM lease slot, allocated when HA is first turned on and kept afterwards (HA off too), so
   * that a slot never changes owner while a lease might still be held in it. null: never HA.
   */
  readonly slot: number | null;
  /** The host the VM runs on or was last placed on; null: not known. */
  readonly host: string | null;
  readonly addedAt: string;
  readonly updatedAt: string;
}

export const vmRecord: Codec<VmRecord> = (raw, source) => {
  const f = new Fields(source);
  const r = f.object(raw, "", ["uuid", "name", "xml", "ha", "priority", "group", "slot", "host", "addedAt", "updatedAt"]);
  const ha = f.boolean(r["ha"], "ha");
  const slot = r["slot"] === null ? null : f.integer(r["slot"], "slot", 0, maxSlots - 1);
  if (ha && slot === null) f.problem("slot", "an HA VM needs a lease slot, got null");
  return f.done({
    uuid: f.string(r["uuid"], "uuid", { pattern: vmUuidPattern }),
    name: f.string(r["name"], "name", { pattern: vmNamePattern }),
    xml: f.string(r["xml"], "xml", { maxLength: maxVmXmlBytes }),
    ha,
    priority: f.integer(r["priority"], "priority", 0, maxVmPriority),
    group: r["group"] === "" ? "" : f.string(r["group"], "group", { pattern: vmGroupPattern }),
    slot,
    host: r["host"] === null ? null : f.string(r["host"], "host", { pattern: hostName }),
    addedAt: f.time(r["addedAt"], "addedAt"),
    updatedAt: f.time(r["updatedAt"], "updatedAt"),
  });
};

/** Which VM owns a VM lease slot: created once, in a transaction that fails if the key exists. */
export interface LeaseSlotClaim {
  readonly vm: string;
  readonly claimedAt: string;
}

export const leaseSlotClaim: Codec<LeaseSlotClaim> = (raw, source) => {
  const f = new Fields(source);
  const r = f.object(raw, "", ["vm", "claimedAt"]);
  return f.done({ vm: f.string(r["vm"], "vm", { pattern: vmUuidPattern }), claimedAt: f.time(r["claimedAt"], "claimedAt") });
};

export const domainStates = ["running", "paused", "shutoff", "crashed", "other"] as const;

/** One VM as its host's hypervisor shows it (the agent writes it when it changes). */
export interface VmStateRecord {
  readonly vm: string;
  readonly host: string;
  readonly name: string;
  readonly state: (typeof domainStates)[number];
  readonly at: string;
}

export const vmStateRecord: Codec<VmStateRecord> = (raw, source) => {
  const f = new Fields(source);
  const r = f.object(raw, "", ["vm", "host", "name", "state", "at"]);
  return f.done({
    vm: f.string(r["vm"], "vm", { pattern: vmUuidPattern }),
    host: f.string(r["host"], "host", { pattern: hostName }),
    name: f.string(r["name"], "name", { maxLength: 256 }),
    state: f.choice(r["state"], "state", domainStates),
    at: f.time(r["at"], "at"),
  });
};

/** An order to one host's agent about one VM (its definition comes from the registry). */
export interface VmOrder {
  readonly vm: string;
  readonly action: "start" | "stop";
  readonly issuedAt: string;
  /** The controller that issued it. */
  readonly by: string;
}

export const vmOrder: Codec<VmOrder> = (raw, source) => {
  const f = new Fields(source);
  const r = f.object(raw, "", ["vm", "action", "issuedAt", "by"]);
  return f.done({
    vm: f.string(r["vm"], "vm", { pattern: vmUuidPattern }),
    action: f.choice(r["action"], "action", ["start", "stop"] as const),
    issuedAt: f.time(r["issuedAt"], "issuedAt"),
    by: f.string(r["by"], "by", { maxLength: 256 }),
  });
};

export const orderOutcomes = ["done", "failed", "lease-held"] as const;

/**
 * How an order went. "lease-held": the VM's lease is held by another live host (named), which
 * may be dead in `freeInMs` at the earliest — a wait, not a failure.
 */
export interface OrderResult {
  readonly vm: string;
  readonly host: string;
  readonly action: "start" | "stop";
  readonly outcome: (typeof orderOutcomes)[number];
  readonly reason: string;
  readonly holder: string | null;
  readonly freeInMs: number | null;
  readonly at: string;
}

export const orderResult: Codec<OrderResult> = (raw, source) => {
  const f = new Fields(source);
  const r = f.object(raw, "", ["vm", "host", "action", "outcome", "reason", "holder", "freeInMs", "at"]);
  return f.done({
    vm: f.string(r["vm"], "vm", { pattern: vmUuidPattern }),
    host: f.string(r["host"], "host", { pattern: hostName }),
    action: f.choice(r["action"], "action", ["start", "stop"] as const),
    outcome: f.choice(r["outcome"], "outcome", orderOutcomes),
    reason: f.text(r["reason"], "reason"),
    holder: r["holder"] === null ? null : f.string(r["holder"], "holder", { maxLength: 256 }),
    freeInMs: r["freeInMs"] === null ? null : f.integer(r["freeInMs"], "freeInMs", 0, 86_400_000),
    at: f.time(r["at"], "at"),
  });
};

/** A recovery task as stored: src/core/recovery-tasks.ts's RecoveryTask (times in ms since the epoch). */
export type TaskRecord = RecoveryTask;

export const taskRecord: Codec<TaskRecord> = (raw, source) => {
  const f = new Fields(source);
  const r = f.object(raw, "", ["vm", "source", "state", "target", "attempts", "tried", "notBeforeMs", "createdMs", "updatedMs", "reason"]);
  const time = (key: string) => f.integer(r[key], key, 0, 8_640_000_000_000_000);
  const tried = Array.isArray(r["tried"]) && r["tried"].length <= maxAttempts ? (r["tried"] as unknown[]).map((host, i) => f.string(host, `tried[${i}]`, { pattern: hostName })) : (f.problem("tried", `expected a list of at most ${maxAttempts} host names`), []);
  return f.done({
    vm: f.string(r["vm"], "vm", { pattern: vmUuidPattern }),
    source: f.string(r["source"], "source", { pattern: hostName }),
    state: f.choice(r["state"], "state", taskStates),
    target: r["target"] === null ? null : f.string(r["target"], "target", { pattern: hostName }),
    attempts: f.integer(r["attempts"], "attempts", 0, maxAttempts),
    tried,
    notBeforeMs: time("notBeforeMs"),
    createdMs: time("createdMs"),
    updatedMs: time("updatedMs"),
    reason: f.text(r["reason"], "reason"),
  });
};

/** lockd on HOST cannot renew its lease and asks whether to fence (question number QUESTION of that lockd). */
export interface FencingEventRecord {
  readonly host: string;
  readonly question: number;
  readonly vms: readonly string[];
  readonly reason: string;
  /** How long lockd waits for the answer before it fences anyway. */
  readonly answerWithinMs: number;
  readonly at: string;
}

export const fencingEventRecord: Codec<FencingEventRecord> = (raw, source) => {
  const f = new Fields(source);
  const r = f.object(raw, "", ["host", "question", "vms", "reason", "answerWithinMs", "at"]);
  const vms = Array.isArray(r["vms"]) && r["vms"].length <= 10_000 ? (r["vms"] as unknown[]).map((vm, i) => f.string(vm, `vms[${i}]`, { maxLength: 64 })) : (f.problem("vms", "expected a list of at most 10000 VMs"), []);
  return f.done({
    host: f.string(r["host"], "host", { pattern: hostName }),
    question: f.integer(r["question"], "question", 1, Number.MAX_SAFE_INTEGER),
    vms,
    reason: f.text(r["reason"], "reason"),
    answerWithinMs: f.integer(r["answerWithinMs"], "answerWithinMs", 0, 86_400_000),
    at: f.time(r["at"], "at"),
  });
};

export interface FencingAnswerRecord {
  readonly host: string;
  readonly question: number;
  readonly answer: "fence" | "no-fence";
  readonly reason: string;
  readonly at: string;
  readonly by: string;
}

export const fencingAnswerRecord: Codec<FencingAnswerRecord> = (raw, source) => {
  const f = new Fields(source);
  const r = f.object(raw, "", ["host", "question", "answer", "reason", "at", "by"]);
  return f.done({
    host: f.string(r["host"], "host", { pattern: hostName }),
    question: f.integer(r["question"], "question", 1, Number.MAX_SAFE_INTEGER),
    answer: f.choice(r["answer"], "answer", ["fence", "no-fence"] as const),
    reason: f.text(r["reason"], "reason"),
    at: f.time(r["at"], "at"),
    by: f.string(r["by"], "by", { maxLength: 256 }),
  });
};
