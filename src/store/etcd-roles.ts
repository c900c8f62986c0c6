/**
 * etcd RBAC for fitha (etcd's `auth enable`): which keys each kind of fitha user must read and
 * write in each plane's cluster. This is the one source of the recipe: `fitha etcd roles` prints
 * it as etcdctl commands, and the tests apply it and run the real daemons under it.
 *
 * The agent of a host gets only what that agent reads, writes and watches (src/agent/*.ts, the
 * keys in keys.ts): the keys of its own host, written as exact keys where the agent writes one
 * key (its record, heartbeats, reachability), as "NAME/" prefixes where it writes several. Some
 * grants cannot be narrower, and say so in `why`:
 * - etcd permissions cannot tell create from overwrite or delete (all are "write"), and a
 *   transaction's compare needs read: the append-only event log (keys by time, not by host) and
 *   the host-id claims (any free id may be claimed) are readwrite for every agent; deleting its
 *   orders and fencing answers lets an agent put some to its own host (lockd's VM leases still
 *   guard every start; root on a host commands its lockd anyway);
 * - a watched single key is a prefix range (followKey watches the key as a prefix), so reading
 *   maintenance/hosts/web1 also reads maintenance/hosts/web10 (harmless: reads, not writes);
 * - every VM record is readable: an order may name any VM.
 * The controller decides where every VM runs and answers fencing questions, so it may write all
 * of fitha's keys; narrowing it would protect nothing and risk an outage on a key missed. The
 * operator role is what the operator commands need (management only); the viewer role reads.
 */
import type { Plane } from "../config/fitha-config.ts";
import { checkHostName, type Keys } from "./keys.ts";

export type Permission = "read" | "write" | "readwrite";

export interface KeyGrant {
  /** The key, or the start of every key granted when `prefix`. */
  readonly key: string;
  readonly prefix: boolean;
  readonly permission: Permission;
  /** Why this role needs it (and, for a shared range, why it cannot be narrower). */
  readonly why: string;
}

export interface EtcdRole {
  /** Role and user name (an etcd user per role; a client certificate's CN may name it instead of a password). */
  readonly name: string;
  readonly description: string;
  /** What to grant in each plane's cluster; a plane with no grants needs no role there. */
  readonly grants: Readonly<Record<Plane, readonly KeyGrant[]>>;
}

const exact = (key: string, permission: Permission, why: string): KeyGrant => ({ key, prefix: false, permission, why });
const under = (key: string, permission: Permission, why: string): KeyGrant => ({ key, prefix: true, permission, why });

/** The role of the agent of `host`: its own keys, and the few shared ranges it cannot do without. */
export function agentRole(keys: Keys, host: string): EtcdRole {
  checkHostName(host);
  const fencing = (plane: Plane): KeyGrant[] => [
    exact(keys.heartbeat(plane, host), "write", `the ${plane} heartbeat (put under a lease, the lease renewed and revoked)`),
    under(keys.hostFencingPrefix(host), "write", "fencing events of lockd's questions (put, deleted when over)"),
    under(keys.hostFencingAnswersPrefix(host), "readwrite", "the controller's fencing answers to this host (read, deleted when over; the write that deletes could also put one: no more than root on the host can do to its own lockd)"),
  ];
  return {
    name: `fitha-agent-${host}`,
    description: `the agent of host ${host}`,
    grants: {
      management: [
        exact(keys.host(host), "readwrite", "this host's registration record"),
        under(keys.hostIdsPrefix, "readwrite", "shared: a lockspace host id is claimed by a create-only transaction on the lowest free id, so every claim is read"),
        exact(keys.reachability(host), "write", "which planes this host reaches"),
        under(keys.settings, "read", "runtime settings (followed)"),
        under(keys.strategy, "read", "the strategy, for self-fencing (followed)"),
        under(keys.maintenanceGlobal, "read", "global maintenance, for self-fencing (followed)"),
        under(keys.maintenanceHost(host), "read", "this host's maintenance (followed; the prefix also reads hosts whose names start with this one)"),
        under(keys.recoveryRequest(host), "read", "a recovery request for this host, for self-fencing (followed; the prefix also reads hosts whose names start with this one)"),
        under(keys.vmsPrefix, "read", "shared: the VM registry (an order may name any VM)"),
        under(keys.vmStatesPrefix(host), "readwrite", "the states of this host's VMs (reported, stale ones deleted)"),
        under(keys.ordersPrefix(host), "readwrite", "orders to this host (watched, deleted when carried out; the write that deletes could also put one: lockd's VM leases still guard every start)"),
        under(keys.orderResultsPrefix(host), "write", "results of those orders"),
        under(keys.eventsPrefix, "readwrite", "shared: the event log, appended by create-only transactions; keys are times, not hosts"),
        ...fencing("management"),
      ],
      storage: fencing("storage"),
      service: fencing("service"),
    },
  };
}

/** The roles every cluster has once: the controllers', the operators' and a read-only one. */
export function clusterRoles(keys: Keys): EtcdRole[] {
  const all = `${keys.prefix}/`;
  const everyPlane = (grant: KeyGrant): Record<Plane, KeyGrant[]> => ({ management: [grant], storage: [grant], service: [grant] });
  return [
    {
      name: "fitha-controller",
      description: "the controllers",
      grants: everyPlane(under(all, "readwrite", "all of fitha's keys: the controller decides where every VM runs and answers fencing questions")),
    },
    {
      name: "fitha-operator",
      description: "operators (fitha status, vm, maintenance, strategy, config set, events, tasks)",
      grants: { management: [under(all, "readwrite", "the operator commands read and change fitha's state, which the management cluster holds")], storage: [], service: [] },
    },
    {
      name: "fitha-viewer",
      description: "read-only operators (fitha status, events, tasks, vm list)",
      grants: { management: [under(all, "read", "fitha's state, read only")], storage: [], service: [] },
    },
  ];
}

/**
 * The etcdctl commands that set `roles` up in `plane`'s cluster, as root. A user per role; its
 * password is asked for by etcdctl (`user add` prompts).
 */
export function etcdctlCommands(roles: readonly EtcdRole[], plane: Plane): string[] {
  const lines: string[] = [];
  for (const role of roles) {
    const grants = role.grants[plane];
    if (grants.length === 0) continue;
    lines.push(`# ${role.name}: ${role.description}`, `etcdctl role add ${role.name}`);
    for (const grant of grants) {
      lines.push(`etcdctl role grant-permission ${grant.prefix ? "--prefix=true " : ""}${role.name} ${grant.permission} ${grant.key}  # ${grant.why}`);
    }
    lines.push(`etcdctl user add ${role.name}`, `etcdctl user grant-role ${role.name} ${role.name}`);
  }
  return lines;
}
