/**
 * The alarms: which events of the log (src/store/events.ts) an operator must hear about at once,
 * how bad each is and what to do. One source for the webhook relay (relay.ts), for
 * `fitha alarms`, and for the table in src/alarms/README.md (a test keeps the two in step).
 *
 * An alarm fires on an event; some are resolved by a later event (a plane comes back, the
 * cluster leaves self-defense). The others stand for themselves: they report something that
 * happened (a fence, a failed recovery) and need no resolving event.
 */
import type { EventKind, EventRecord } from "../store/records.ts";

export type AlarmSeverity = "critical" | "warning" | "info";

export interface AlarmDefinition {
  readonly name: string;
  readonly severity: AlarmSeverity;
  /** Events that fire it. */
  readonly firedBy: readonly EventKind[];
  /** Events that resolve it (for the same host, or the cluster when the alarm has no host). */
  readonly resolvedBy: readonly EventKind[];
  readonly meaning: string;
  readonly action: string;
}

export const alarmCatalogue: readonly AlarmDefinition[] = Object.freeze([
  {
    name: "host-down",
    severity: "critical",
    firedBy: ["ha-needed"],
    resolvedBy: [],
    meaning: "The controller decided a host failed (its planes are down as the HA strategy says, past the grace period): its HA VMs are being recovered on other hosts.",
    action: "Find out why the host failed (power, kernel, network); `fitha tasks` shows the recoveries. Once repaired it rejoins by itself (its agent heartbeats again); its HA VMs stay where they were recovered.",
  },
  {
    name: "plane-down",
    severity: "warning",
    firedBy: ["plane-down"],
    resolvedBy: ["plane-up"],
    meaning: "A host stopped heartbeating on one network plane (management, storage or service).",
    action: "Check that host's link, switch port and bond on that plane (`fitha status` shows which). Whether its VMs move depends on the HA strategy row of its planes.",
  },
  {
    name: "platform-fault",
    severity: "critical",
    firedBy: ["platform-fault"],
    resolvedBy: ["platform-recovered"],
    meaning: "The leading controller cannot reach a plane's etcd cluster: it takes no HA decision from that plane's heartbeats until the cluster answers again (no VM moves for that plane).",
    action: "Repair that etcd cluster or the controller's route to it (`fitha status` on the controller's host); HA is reduced meanwhile.",
  },
  {
    name: "fence-executed",
    severity: "critical",
    firedBy: ["self-fenced", "lockd-fenced", "leases-taken"],
    resolvedBy: [],
    meaning: "VMs were stopped on a host to keep them from running twice: its agent fenced the host (cut off per the HA strategy), or its lockd could not renew the host lease in time, or it found VM leases taken over by another host.",
    action: "Look at that host's storage path and networks (`fitha lease status` on it, the lockd journal). The VMs run elsewhere if they were recovered; `fitha vm list` shows where.",
  },
  {
    name: "recovery-failed",
    severity: "critical",
    firedBy: ["recovery-failed"],
    resolvedBy: [],
    meaning: "An HA VM could not be started on any host after every retry: it is down.",
    action: "`fitha tasks` names the VM and the last reason (no host with room, lease held, libvirt error). Fix the cause, then start the VM on a host with room (`virsh start`: the qemu hook takes its lease, so it cannot start twice).",
  },
  {
    name: "self-defense",
    severity: "critical",
    firedBy: ["self-defense-entered"],
    resolvedBy: ["self-defense-left"],
    meaning: "Too many hosts look down at once (a fault of the platform, not of hosts): the controller stopped recovering VMs so as not to act on a false picture.",
    action: "Find the common cause (a switch, etcd, the storage network); fitha leaves self-defense by itself once enough hosts are healthy again.",
  },
  {
    name: "storage-global-fault",
    severity: "critical",
    firedBy: ["storage-global-fault"],
    resolvedBy: [],
    meaning: "Every host reports trouble with the shared lease storage at once: the controller answered no-fence, so the VMs keep running while the storage is away (the lease grace period).",
    action: "Repair the shared storage now: if it stays away past the grace period, lockd fences the VMs after all.",
  },
  {
    name: "lease-corrupt",
    severity: "critical",
    firedBy: ["lease-corrupt"],
    resolvedBy: [],
    meaning: "lockd read a damaged lease record (bad checksum or magic) on the shared storage: that lease cannot be taken until it is repaired.",
    action: "`fitha lease dump --path LEASEFILE` lists the corrupt records; check the storage for errors. Reformatting a lockspace (`fitha lease format --force`) is only safe with every lockd stopped.",
  },
  {
    name: "leader-change",
    severity: "warning",
    firedBy: ["leader-elected"],
    resolvedBy: [],
    meaning: "Another controller leads now (the previous one stopped, crashed or lost etcd).",
    action: "None if it happens once: check why the previous leader stopped (its journal). Repeated changes point at a flapping management network or etcd.",
  },
  {
    name: "clock-jump",
    severity: "warning",
    firedBy: ["clock-jump"],
    resolvedBy: [],
    meaning: "A host's wall clock was stepped: fitha's timing is unaffected (monotonic clocks), but that host's event and log times disagree with the others'.",
    action: "Check time synchronisation on that host (chronyc tracking, timedatectl).",
  },
]);

/** An alarm's state change, as the relay sends it. */
export interface AlarmNotice {
  readonly alarm: string;
  readonly status: "firing" | "resolved";
  readonly severity: AlarmSeverity;
  readonly host: string | null;
  readonly reason: string;
  readonly action: string;
  /** The event that caused it (its key's sequence in the log, time, kind, author); null for the relay's own notices (alarms-dropped, a test). */
  readonly event: { readonly sequence: string; readonly time: string; readonly kind: EventKind; readonly by: string } | null;
}

const byEvent = new Map<EventKind, { definition: AlarmDefinition; status: AlarmNotice["status"] }>();
for (const definition of alarmCatalogue) {
  for (const kind of definition.firedBy) byEvent.set(kind, { definition, status: "firing" });
  for (const kind of definition.resolvedBy) byEvent.set(kind, { definition, status: "resolved" });
}
// One event kind, one alarm: a second mapping would make an event fire two alarms at random.
if (byEvent.size !== alarmCatalogue.reduce((n, d) => n + d.firedBy.length + d.resolvedBy.length, 0)) throw new Error("alarm catalogue: an event kind is mapped twice");

/** The alarm notice an event raises, if any. */
export function alarmOf(sequence: string, event: EventRecord): AlarmNotice | undefined {
  const mapped = byEvent.get(event.kind);
  if (mapped === undefined) return undefined;
  const { definition, status } = mapped;
  return {
    alarm: definition.name,
    status,
    severity: status === "resolved" ? "info" : definition.severity,
    host: event.host,
    reason: event.reason,
    action: status === "resolved" ? "None: resolved." : definition.action,
    event: { sequence, time: event.time, kind: event.kind, by: event.by },
  };
}
