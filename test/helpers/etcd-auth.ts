/**
 * etcd's authentication for tests, set up with etcd3's auth API (Debian ships no etcdctl): auth
 * enabled with a root user, and fitha's roles (src/store/etcd-roles.ts) applied as an operator
 * would apply the etcdctl commands `fitha etcd roles` prints.
 */
import { Range, type Etcd3 } from "etcd3";
import type { Plane } from "../../src/config/fitha-config.ts";
import type { EtcdRole, Permission } from "../../src/store/etcd-roles.ts";

/** `etcdctl user add root; etcdctl auth enable`: root gets the root role, then auth is on. */
export async function enableAuth(client: Etcd3, rootPassword: string): Promise<void> {
  await client.auth.roleAdd({ name: "root" });
  await client.auth.userAdd({ name: "root", password: rootPassword });
  await client.auth.userGrantRole({ user: "root", role: "root" });
  await client.auth.authEnable();
}

const permissionTypes: Record<Permission, "Read" | "Write" | "Readwrite"> = { read: "Read", write: "Write", readwrite: "Readwrite" };

/** `role`'s grants in `plane`'s cluster, and a user of the role's name with `password` (client: as root). */
export async function applyRole(client: Etcd3, role: EtcdRole, plane: Plane, password: string): Promise<void> {
  await client.auth.roleAdd({ name: role.name });
  for (const grant of role.grants[plane]) {
    const key = Buffer.from(grant.key);
    // etcd's range_end: empty for one key, the end of the prefix's range for a prefix.
    const rangeEnd = grant.prefix ? Range.prefix(grant.key).end : Buffer.alloc(0);
    await client.auth.roleGrantPermission({ name: role.name, perm: { permType: permissionTypes[grant.permission], key, range_end: rangeEnd } });
  }
  await client.auth.userAdd({ name: role.name, password });
  await client.auth.userGrantRole({ user: role.name, role: role.name });
}
