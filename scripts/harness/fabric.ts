/**
 * The harness's network: one "fabric" namespace holding a bridge per plane, and one namespace per
 * node (compute host, controller, the operator's admin node) with a veth link into each plane's
 * bridge it uses. Addresses are 10.88.<plane>.<n>/24, assigned inside these namespaces only; no
 * namespace has a default route, so nothing leaves them (TESTING-NOTES: "Several hosts on one
 * machine"). etcd members listen on extra addresses of their plane's bridge, in the fabric.
 *
 * Cutting a node's plane sets its veth end in the fabric down: established TCP stalls without a
 * reset, as a pulled cable does (netem is not available here).
 *
 * Every namespace is named `<prefix>-…` with prefix `fh<pid>`; `removeStaleFabrics()` deletes
 * those of harness processes that no longer run (a run killed before its teardown).
 */
import { planes, type Plane } from "../../src/config/fitha-config.ts";

/** One letter per plane in interface names (15 characters at most in Linux). */
const planeLetter: Readonly<Record<Plane, string>> = { management: "m", storage: "s", service: "v" };
const planeOctet: Readonly<Record<Plane, number>> = { management: 1, storage: 2, service: 3 };
/** Fabric-side addresses for etcd members start here (node numbers stay below). */
const firstServiceAddress = 200;
export const maxNodes = 150;
/** How long one `ip` command may take before the harness gives up on it. */
const ipTimeoutMs = 10_000;

export interface FabricNode {
  /** Namespace name. */
  readonly netns: string;
  /** This node's address on each plane it is linked to. */
  readonly addresses: Partial<Readonly<Record<Plane, string>>>;
}

/** Runs `ip ARGS…`; throws with its stderr when it fails or takes longer than ipTimeoutMs. */
export async function ip(...args: string[]): Promise<void> {
  const child = Bun.spawn(["ip", ...args], { stdin: "ignore", stdout: "ignore", stderr: "pipe" });
  const timer = setTimeout(() => child.kill("SIGKILL"), ipTimeoutMs);
  try {
    const [stderr, code] = await Promise.all([new Response(child.stderr).text(), child.exited]);
    if (code !== 0) throw new Error(`ip ${args.join(" ")}: ${stderr.trim() || `exit ${code}`}`);
  } finally {
    clearTimeout(timer);
  }
}

export class Fabric {
  readonly netns: string;
  readonly #nodes = new Map<string, FabricNode>();
  readonly #serviceAddresses: Record<Plane, number> = { management: firstServiceAddress, storage: firstServiceAddress, service: firstServiceAddress };
  #removed = false;

  private constructor(readonly prefix: string) {
    this.netns = `${prefix}-fabric`;
  }

  /** The fabric namespace with its three bridges, up. */
  static async create(prefix = `fh${process.pid}`): Promise<Fabric> {
    if (!/^fh[0-9]{1,8}$/.test(prefix)) throw new RangeError(`fabric prefix ${JSON.stringify(prefix)}`);
    const fabric = new Fabric(prefix);
    await ip("netns", "add", fabric.netns);
    try {
      await ip("-n", fabric.netns, "link", "set", "lo", "up");
      for (const plane of planes) {
        // A fixed MAC: a bridge otherwise takes its lowest port's, so each node added could change
        // it under the etcd addresses it holds, and every node's ARP entry for them would point
        // nowhere until it expired (seen: management reads timing out for 30 s after a new host).
        await ip("-n", fabric.netns, "link", "add", bridge(plane), "address", `02:88:00:00:00:0${planeOctet[plane]}`, "type", "bridge");
        await ip("-n", fabric.netns, "link", "set", bridge(plane), "up");
      }
    } catch (error) {
      await fabric.remove();
      throw error;
    }
    return fabric;
  }

  /** A namespace `<prefix>-<name>` linked to `on` planes, node number `n` (its address's last octet). */
  async addNode(name: string, n: number, on: readonly Plane[]): Promise<FabricNode> {
    if (!/^[a-z][a-z0-9]{0,7}$/.test(name)) throw new RangeError(`node name ${JSON.stringify(name)} (a-z0-9, 8 characters at most)`);
    if (!(Number.isInteger(n) && n >= 1 && n <= maxNodes)) throw new RangeError(`node number ${n} (1–${maxNodes})`);
    if (this.#nodes.has(name)) throw new Error(`node ${name} exists already`);
    const netns = `${this.prefix}-${name}`;
    await ip("netns", "add", netns);
    const addresses: Partial<Record<Plane, string>> = {};
    // Listed before it is complete: remove() deletes whatever part of it exists.
    this.#nodes.set(name, { netns, addresses });
    await ip("-n", netns, "link", "set", "lo", "up");
    for (const plane of on) {
      const outer = this.#veth(name, plane);
      await ip("-n", this.netns, "link", "add", outer, "type", "veth", "peer", "name", plane, "netns", netns);
      await ip("-n", this.netns, "link", "set", outer, "master", bridge(plane), "up");
      const address = `10.88.${planeOctet[plane]}.${n}`;
      await ip("-n", netns, "addr", "add", `${address}/24`, "dev", plane);
      await ip("-n", netns, "link", "set", plane, "up");
      addresses[plane] = address;
    }
    return this.#nodes.get(name)!;
  }

  /** A further address on `plane`'s bridge, for a server in the fabric namespace (an etcd member). */
  async addServiceAddress(plane: Plane): Promise<string> {
    const octet = this.#serviceAddresses[plane]++;
    if (octet > 254) throw new RangeError(`no addresses left on the ${plane} bridge`);
    const address = `10.88.${planeOctet[plane]}.${octet}`;
    await ip("-n", this.netns, "addr", "add", `${address}/24`, "dev", bridge(plane));
    return address;
  }

  /** Cuts (`up` false) or heals a node's link to a plane. */
  async setLink(name: string, plane: Plane, up: boolean): Promise<void> {
    const node = this.#nodes.get(name);
    if (node?.addresses[plane] === undefined) throw new Error(`node ${name} has no link to the ${plane} plane`);
    await ip("-n", this.netns, "link", "set", this.#veth(name, plane), up ? "up" : "down");
  }

  /** A whole plane's bridge down (every node cut from it, its etcd with them) or up again. */
  async setPlane(plane: Plane, up: boolean): Promise<void> {
    await ip("-n", this.netns, "link", "set", bridge(plane), up ? "up" : "down");
  }

  node(name: string): FabricNode {
    const node = this.#nodes.get(name);
    if (node === undefined) throw new Error(`no node ${name}`);
    return node;
  }

  /** Deletes every namespace (their links go with them). Idempotent; never throws. */
  async remove(): Promise<void> {
    if (this.#removed) return;
    this.#removed = true;
    for (const node of this.#nodes.values()) await ip("netns", "del", node.netns).catch(() => undefined);
    await ip("netns", "del", this.netns).catch(() => undefined);
  }

  #veth(name: string, plane: Plane): string {
    return `${name}${planeLetter[plane]}`;
  }
}

function bridge(plane: Plane): string {
  return `br-${planeLetter[plane]}`;
}

/** Deletes the namespaces of harness runs whose process is gone. */
export async function removeStaleFabrics(): Promise<string[]> {
  const child = Bun.spawn(["ip", "netns", "list"], { stdout: "pipe", stderr: "ignore" });
  const [text] = await Promise.all([new Response(child.stdout).text(), child.exited]);
  const removed: string[] = [];
  for (const line of text.split("\n")) {
    const name = line.split(" ")[0] ?? "";
    const match = /^fh([0-9]+)-/.exec(name);
    if (match === null || processAlive(Number(match[1]))) continue;
    await ip("netns", "del", name).catch(() => undefined);
    removed.push(name);
  }
  return removed;
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}
