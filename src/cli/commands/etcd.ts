/** `fitha etcd roles`: the etcd RBAC recipe (src/store/etcd-roles.ts) as etcdctl commands, per plane. */
import { defineCommand } from "citty";
import { planes } from "../../config/fitha-config.ts";
import { ExitCode } from "../../errors.ts";
import { agentRole, clusterRoles, etcdctlCommands } from "../../store/etcd-roles.ts";
import { keys } from "../../store/keys.ts";
import { configArg, jsonArg, logArgs } from "../args.ts";
import { loadCommandConfig } from "../command-config.ts";
import { printJson, printLines } from "../output.ts";
import { hostArgument } from "./common/host-argument.ts";

/**
 * JSON shape (`--json`):
 * { "prefix": "/fitha",
 *   "roles": [ { "name": "fitha-agent-web1", "description",
 *                "grants": { "management"|"storage"|"service": [ { "key", "prefix": bool, "permission": "read"|"write"|"readwrite", "why" } ] } } ] }
 * Role and user names are the same: one etcd user per role.
 */
const rolesCommand = defineCommand({
  meta: { description: "Print the etcd roles and users fitha needs once etcd auth is on, as etcdctl commands per plane: the controller's, operators' and viewers' roles, or with --host the agent role of that host" },
  args: {
    host: { type: "string", valueHint: "NAME", description: "The compute host whose agent role to print (one per host, each able to write only its own host's keys)" },
    ...configArg,
    ...jsonArg,
    ...logArgs,
  },
  async run({ args }) {
    // Offline: only etcd.prefix and the endpoints are read from fitha.toml.
    const { config } = await loadCommandConfig(args);
    const prefixKeys = keys(config.etcd.prefix);
    const roles = args.host === undefined ? clusterRoles(prefixKeys) : [agentRole(prefixKeys, hostArgument(args.host, "etcd roles"))];
    if (args.json) {
      printJson({ prefix: config.etcd.prefix, roles });
      return ExitCode.ok;
    }
    const lines = [
      `# etcd roles for ${roles.map((r) => r.description).join(", ")}; fitha's keys are under ${config.etcd.prefix}/.`,
      "# Run each plane's commands against that plane's cluster as etcd's root user, e.g.",
      "#   ETCDCTL_ENDPOINTS=https://… etcdctl --cacert CA --cert CERT --key KEY --user root <command>",
      "# Once per cluster, before auth is on: etcdctl user add root; etcdctl auth enable",
      "# `user add` asks for the new user's password: put it in that user's etcd.auth.password_file",
      "# (or give the user a client certificate whose CN is its name). Planes sharing one cluster:",
      "# run every plane's commands there; a second `role add` or `user add` of a name says it exists.",
    ];
    for (const plane of planes) {
      const commands = etcdctlCommands(roles, plane);
      lines.push("", `## ${plane} plane (etcd.${plane}.endpoints: ${config.etcd[plane].endpoints.join(", ")})`);
      lines.push(...(commands.length > 0 ? commands : ["# nothing: these roles need no keys in this cluster"]));
    }
    printLines(...lines);
    return ExitCode.ok;
  },
});

export const etcdCommand = defineCommand({
  meta: { description: "Set up the etcd clusters for fitha: the RBAC roles (roles)" },
  subCommands: { roles: rolesCommand },
});
