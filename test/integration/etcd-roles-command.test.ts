/** `fitha etcd roles`: the RBAC recipe of src/store/etcd-roles.ts, as JSON and as etcdctl commands per plane (offline). */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { planes } from "../../src/config/fitha-config.ts";
import { agentRole, clusterRoles, etcdctlCommands } from "../../src/store/etcd-roles.ts";
import { keys } from "../../src/store/keys.ts";
import { writeConfig } from "../helpers/config.ts";
import { runFitha } from "../helpers/fitha.ts";
import { tempDir, type TempDir } from "../helpers/tmp.ts";

let dir: TempDir;
let config: string;

beforeAll(async () => {
  dir = await tempDir("etcd-roles");
  // Nothing listens there: the command never connects.
  config = await writeConfig(dir.path, { prefix: "/lab", management: "https://10.0.0.1:2379", storage: "https://10.0.1.1:2379", service: "https://10.0.2.1:2379" });
});

afterAll(async () => {
  await dir?.remove();
});

describe("fitha etcd roles", () => {
  test("--host NAME --json: that host's agent role, as the tests apply it", async () => {
    const result = await runFitha(["etcd", "roles", "--host", "web1", "--config", config, "--json"]);
    expect(result.stderr).toBe("");
    expect(result.exitCode).toBe(0);
    expect(JSON.parse(result.stdout)).toEqual({ prefix: "/lab", roles: [JSON.parse(JSON.stringify(agentRole(keys("/lab"), "web1")))] });
  });

  test("text: per plane, with its endpoints, the etcdctl commands of every role", async () => {
    const result = await runFitha(["etcd", "roles", "--config", config]);
    expect(result.stderr).toBe("");
    expect(result.exitCode).toBe(0);
    const roles = clusterRoles(keys("/lab"));
    expect(roles.map((r) => r.name)).toEqual(["fitha-controller", "fitha-operator", "fitha-viewer"]);
    const sections = result.stdout.split(/\n(?=## )/).slice(1);
    expect(sections.map((s) => s.split("\n")[0])).toEqual([
      "## management plane (etcd.management.endpoints: https://10.0.0.1:2379)",
      "## storage plane (etcd.storage.endpoints: https://10.0.1.1:2379)",
      "## service plane (etcd.service.endpoints: https://10.0.2.1:2379)",
    ]);
    planes.forEach((plane, i) => expect(sections[i]!.trimEnd().split("\n").slice(1)).toEqual(etcdctlCommands(roles, plane)));
    expect(etcdctlCommands(roles, "storage")).toEqual([
      "# fitha-controller: the controllers",
      "etcdctl role add fitha-controller",
      "etcdctl role grant-permission --prefix=true fitha-controller readwrite /lab/  # all of fitha's keys: the controller decides where every VM runs and answers fencing questions",
      "etcdctl user add fitha-controller",
      "etcdctl user grant-role fitha-controller fitha-controller",
    ]);
  });

  test("a host name that cannot be one is refused", async () => {
    const result = await runFitha(["etcd", "roles", "--host", "web 1", "--config", config]);
    expect(result.exitCode).toBe(2);
    expect(result.stderr).toStartWith('fitha: etcd roles: --host: host name "web 1": 1 to 63 letters');
  });
});
