/**
 * The etcd key schema: every key fitha reads or writes is built here and nowhere else, under the
 * configured prefix (`etcd.prefix`, "/fitha" by default). Values are JSON, one shape per key
 * kind (src/store/records.ts), validated on every read.
 *
 * | key                                | cluster         | value (records.ts)   | written by            |
 * |------------------------------------|-----------------|----------------------|-----------------------|
 * | P/hosts/NAME                       | management      | HostRecord           | agent (registration)  |
 * | P/host-ids/ID                      | management      | HostIdClaim          | agent (create-only txn) |
 * | P/heartbeats/PLANE/NAME            | PLANE's         | Heartbeat (leased)   | agent, every interval |
 * | P/reachability/NAME                | management      | Reachability         | agent                 |
 * | P/controller/election              | management      | LeaderRecord (leased)| controllers (election.ts) |
 * | P/strategy                         | management      | StrategyTemplate     | `fitha strategy set`  |
 * | P/settings                         | management      | RuntimeSettings      | `fitha config set`    |
 * | P/maintenance/global               | management      | MaintenanceRecord    | `fitha maintenance`   |
 * | P/maintenance/hosts/NAME           | management      | MaintenanceRecord    | `fitha maintenance`   |
 * | P/mode                             | management      | ModeRecord           | active controller     |
 * | P/events/SEQ                       | management      | EventRecord          | everyone (append)     |
 * | P/recovery-requests/NAME           | management      | RecoveryRequest      | active controller     |
 * | P/host-states/NAME                 | management      | HostStateRecord      | active controller     |
 * | P/vms/UUID                         | management      | VmRecord             | `fitha vm` (add: create-only; ha: compare-and-swap) |
 * | P/lease-slots/SLOT                 | management      | LeaseSlotClaim       | `fitha vm` (create-only txn) |
 * | P/vm-states/HOST/UUID              | management      | VmStateRecord        | agent of HOST, on change |
 * | P/orders/HOST/UUID                 | management      | VmOrder              | active controller     |
 * | P/order-results/HOST/UUID          | management      | OrderResult          | agent of HOST         |
 * | P/tasks/UUID                       | management      | TaskRecord           | active controller     |
 * | P/fencing/HOST/QUESTION            | every plane's   | FencingEventRecord   | agent of HOST (lockd asks) |
 * | P/fencing-answers/HOST/QUESTION    | every plane's   | FencingAnswerRecord  | active controller     |
 *
 * NAME is a host name (DNS label characters); PLANE is management, storage or service (in the
 * key as well as the cluster: on a lab machine the three planes may share one cluster); SEQ is a
 * zero-padded, time-ordered id so that a range read returns events oldest first. UUID is a VM's
 * UUID in lower case (8-4-4-4-12 hex digits); SLOT is a VM lease slot, 5 digits zero-padded.
 * A heartbeat key lives under an etcd lease whose TTL makes it vanish when the agent stops renewing it: its absence is the "plane down" signal.
 */
import { planes, type Plane } from "../config/fitha-config.ts";
import { maxSlots } from "../lease/layout.ts";

export interface Keys {
  readonly prefix: string;
  /** Prefix of the host registry: one key per registered compute host. */
  readonly hostsPrefix: string;
  host(name: string): string;
  readonly hostIdsPrefix: string;
  hostId(id: number): string;
  /** In the plane's own cluster. */
  heartbeatsPrefix(plane: Plane): string;
  heartbeat(plane: Plane, name: string): string;
  readonly reachabilityPrefix: string;
  reachability(name: string): string;
  readonly election: string;
  readonly strategy: string;
  readonly settings: string;
  readonly maintenanceGlobal: string;
  readonly maintenanceHostsPrefix: string;
  maintenanceHost(name: string): string;
  readonly mode: string;
  readonly eventsPrefix: string;
  event(sequence: string): string;
  readonly recoveryRequestsPrefix: string;
  recoveryRequest(name: string): string;
  /** The leader's view of each host (planes and decision), for `fitha status`. */
  readonly hostStatesPrefix: string;
  hostState(name: string): string;
  /** The VM registry: one key per VM fitha knows, HA or not. */
  readonly vmsPrefix: string;
  vm(uuid: string): string;
  /** Which VM owns each VM lease slot of the lockspace (vm-registry.ts). */
  readonly leaseSlotsPrefix: string;
  leaseSlot(slot: number): string;
  /** What each host's hypervisor shows of each VM (the agent's report). */
  vmStatesPrefix(host: string): string;
  vmState(host: string, uuid: string): string;
  /** Orders to a host's agent: start or stop one VM. */
  ordersPrefix(host: string): string;
  order(host: string, uuid: string): string;
  /** How an order went, written by the agent; the controller reads and removes it. */
  orderResultsPrefix(host: string): string;
  orderResult(host: string, uuid: string): string;
  /** One recovery task per VM being recovered. */
  readonly tasksPrefix: string;
  task(uuid: string): string;
  /** Fencing events (lockd's questions), written to every plane's cluster: any one getting through is enough. */
  readonly fencingPrefix: string;
  /** One host's fencing events (its etcd role's grant). */
  hostFencingPrefix(host: string): string;
  fencing(host: string, question: number): string;
  readonly fencingAnswersPrefix: string;
  hostFencingAnswersPrefix(host: string): string;
  fencingAnswer(host: string, question: number): string;
  /** The last event whose alarm the leader's relay delivered: the next leader goes on from there. */
  readonly alarmCursor: string;
}

/** Host names as keys: DNS label characters only, so no name can reach outside its prefix. */
const hostNamePattern = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;

export function checkHostName(name: string): string {
  if (!hostNamePattern.test(name)) throw new RangeError(`host name ${JSON.stringify(name)}: 1 to 63 letters, digits, ".", "_" or "-", starting with a letter or digit`);
  return name;
}

/** A VM's UUID as keys and records hold it: lower case, with the dashes (libvirt's own form). */
export const vmUuidPattern = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

function checkVmUuid(uuid: string): string {
  if (!vmUuidPattern.test(uuid)) throw new RangeError(`VM UUID ${JSON.stringify(uuid)}: 8-4-4-4-12 lower-case hex digits`);
  return uuid;
}

function checkQuestion(question: number): number {
  if (!(Number.isSafeInteger(question) && question >= 1)) throw new RangeError(`fencing question ${question}`);
  return question;
}

function checkPlane(plane: Plane): Plane {
  if (!planes.includes(plane)) throw new RangeError(`plane ${JSON.stringify(plane)}`);
  return plane;
}

/** The host name of a key under `prefix`, if the key is one host's (nothing after the name). */
export function hostOfKey(prefix: string, key: string): string | undefined {
  if (!key.startsWith(prefix)) return undefined;
  const name = key.slice(prefix.length);
  return hostNamePattern.test(name) ? name : undefined;
}

export function keys(prefix: string): Keys {
  if (!prefix.startsWith("/") || prefix.endsWith("/")) throw new RangeError(`etcd key prefix ${JSON.stringify(prefix)}`);
  const under = (path: string) => `${prefix}/${path}`;
  return Object.freeze({
    prefix,
    hostsPrefix: under("hosts/"),
    host: (name: string) => under(`hosts/${checkHostName(name)}`),
    hostIdsPrefix: under("host-ids/"),
    hostId: (id: number) => {
      if (!(Number.isSafeInteger(id) && id >= 1)) throw new RangeError(`host id ${id}`);
      return under(`host-ids/${String(id).padStart(5, "0")}`);
    },
    heartbeatsPrefix: (plane: Plane) => under(`heartbeats/${checkPlane(plane)}/`),
    heartbeat: (plane: Plane, name: string) => under(`heartbeats/${checkPlane(plane)}/${checkHostName(name)}`),
    reachabilityPrefix: under("reachability/"),
    reachability: (name: string) => under(`reachability/${checkHostName(name)}`),
    election: under("controller/election"),
    strategy: under("strategy"),
    settings: under("settings"),
    maintenanceGlobal: under("maintenance/global"),
    maintenanceHostsPrefix: under("maintenance/hosts/"),
    maintenanceHost: (name: string) => under(`maintenance/hosts/${checkHostName(name)}`),
    mode: under("mode"),
    eventsPrefix: under("events/"),
    event: (sequence: string) => {
      if (!/^[0-9a-z-]{1,64}$/.test(sequence)) throw new RangeError(`event sequence ${JSON.stringify(sequence)}`);
      return under(`events/${sequence}`);
    },
    recoveryRequestsPrefix: under("recovery-requests/"),
    recoveryRequest: (name: string) => under(`recovery-requests/${checkHostName(name)}`),
    hostStatesPrefix: under("host-states/"),
    hostState: (name: string) => under(`host-states/${checkHostName(name)}`),
    vmsPrefix: under("vms/"),
    vm: (uuid: string) => under(`vms/${checkVmUuid(uuid)}`),
    leaseSlotsPrefix: under("lease-slots/"),
    leaseSlot: (slot: number) => {
      // Slots are numbered from 0 (src/lease/layout.ts); 5 digits hold every one of them.
      if (!(Number.isSafeInteger(slot) && slot >= 0 && slot < maxSlots)) throw new RangeError(`lease slot ${slot}: 0 to ${maxSlots - 1}`);
      return under(`lease-slots/${String(slot).padStart(5, "0")}`);
    },
    vmStatesPrefix: (host: string) => under(`vm-states/${checkHostName(host)}/`),
    vmState: (host: string, uuid: string) => under(`vm-states/${checkHostName(host)}/${checkVmUuid(uuid)}`),
    ordersPrefix: (host: string) => under(`orders/${checkHostName(host)}/`),
    order: (host: string, uuid: string) => under(`orders/${checkHostName(host)}/${checkVmUuid(uuid)}`),
    orderResultsPrefix: (host: string) => under(`order-results/${checkHostName(host)}/`),
    orderResult: (host: string, uuid: string) => under(`order-results/${checkHostName(host)}/${checkVmUuid(uuid)}`),
    tasksPrefix: under("tasks/"),
    task: (uuid: string) => under(`tasks/${checkVmUuid(uuid)}`),
    fencingPrefix: under("fencing/"),
    hostFencingPrefix: (host: string) => under(`fencing/${checkHostName(host)}/`),
    fencing: (host: string, question: number) => under(`fencing/${checkHostName(host)}/${checkQuestion(question)}`),
    fencingAnswersPrefix: under("fencing-answers/"),
    hostFencingAnswersPrefix: (host: string) => under(`fencing-answers/${checkHostName(host)}/`),
    fencingAnswer: (host: string, question: number) => under(`fencing-answers/${checkHostName(host)}/${checkQuestion(question)}`),
    alarmCursor: under("alarms/cursor"),
  });
}
