/**
 * The hypervisor as the daemons see it: the few domain operations HA needs on one host. Two
 * implementations: LibvirtHypervisor (libvirt-hypervisor.ts, any libvirt URI) and MemoryHypervisor
 * (memory-hypervisor.ts, for unit tests and the simulator, with injected failures).
 *
 * Domains are named by their libvirt name or their UUID: a string shaped like a UUID is looked up
 * as one first, then as a name (libvirt allows a name that looks like a UUID).
 */

/**
 * What a domain is doing, reduced to what HA decides on. Everything but "shutoff" may still have
 * a qemu process holding the domain's disks.
 * - running: the guest executes (libvirt's running, blocked, and shutting down).
 * - paused: qemu is alive but the guest is stopped (paused, or suspended to RAM by the guest); it
 *   can run again without a start.
 * - shutoff: defined but not running: no qemu.
 * - crashed: the guest crashed. Usually its qemu is gone (libvirt's default on_crash=destroy);
 *   with on_crash=preserve it stays until destroyed. To restart one: destroy (a "not running"
 *   failure is fine), then start.
 * - other: libvirt reports no state.
 */
export type DomainState = "running" | "paused" | "shutoff" | "crashed" | "other";

export interface DomainInfo {
  readonly name: string;
  /** Lower-case, 8-4-4-4-12 hex digits, as libvirt prints it. */
  readonly uuid: string;
  readonly state: DomainState;
}

export interface NodeInfo {
  /** Active logical CPUs. */
  readonly cpus: number;
  readonly memoryKiB: number;
}

export interface Hypervisor {
  /** Where the domains live, e.g. "qemu:///system" or "test:///default". */
  readonly uri: string;
  /** Every domain, running or only defined. */
  listDomains(): Promise<DomainInfo[]>;
  /** The domain, or undefined when there is none by that name or UUID. */
  lookup(nameOrUuid: string): Promise<DomainInfo | undefined>;
  /** Defines a persistent domain from libvirt domain XML (or redefines one: same name and UUID). */
  define(xml: string): Promise<DomainInfo>;
  start(nameOrUuid: string): Promise<void>;
  /** Hard stop (kills qemu). A domain that is not running is an error (kind "invalid-state"). */
  destroy(nameOrUuid: string): Promise<void>;
  /** Removes the definition; a running domain keeps running and is gone once stopped. */
  undefine(nameOrUuid: string): Promise<void>;
  /** The domain's XML (the live one while it runs). */
  xml(nameOrUuid: string): Promise<string>;
  nodeInfo(): Promise<NodeInfo>;
  /** Releases the connection; idempotent. Every later call fails. */
  close(): Promise<void>;
}

/** Operations on one domain; a define whose XML names none is "a domain". */
export type DomainOperation = "lookup" | "define" | "start" | "destroy" | "undefine" | "xml";
/** Operations on the connection or the node. */
type ConnectionOperation = "connect" | "list" | "node-info" | "close";
export type HypervisorOperation = DomainOperation | ConnectionOperation;

/**
 * What kind of failure, for callers that handle some: "no-domain" (nothing by that name or UUID),
 * "invalid-state" (refused in the domain's current state: destroy of a domain that is not running;
 * start of a running one, except on libvirt's test driver, which calls that an internal error),
 * "unanswered" (no answer in time, or the connection was given up on after too many such: the
 * operation may or may not have taken effect, and the hypervisor may be hung), "failed"
 * (anything else).
 */
export type HypervisorErrorKind = "no-domain" | "invalid-state" | "unanswered" | "failed";

const verbs: Record<HypervisorOperation, string> = {
  lookup: "look up",
  define: "define",
  start: "start",
  destroy: "destroy",
  undefine: "undefine",
  xml: "get the XML of",
  connect: "connect to",
  list: "list the domains on",
  "node-info": "read the node info of",
  close: "close the connection to",
};

/** A failed hypervisor operation: `cannot start domain "web1" on qemu:///system: <libvirt's message>`. */
export class HypervisorError extends Error {
  constructor(
    readonly uri: string,
    readonly operation: HypervisorOperation,
    /** The domain as the caller named it (for define, as its XML does, if it does); undefined for the others. */
    readonly domain: string | undefined,
    readonly kind: HypervisorErrorKind,
    /** The hypervisor's own words: libvirt's message, or the in-memory hypervisor's. */
    readonly detail: string,
    options?: ErrorOptions,
  ) {
    const target = domain !== undefined ? `domain ${JSON.stringify(domain)} on ${uri}` : operation === "define" ? `a domain on ${uri}` : uri;
    super(`cannot ${verbs[operation]} ${target}: ${detail}`, options);
    this.name = "HypervisorError";
  }
}

const uuidPattern = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** Whether `text` is a UUID in libvirt's printed form (either case). */
export function isUuid(text: string): boolean {
  return uuidPattern.test(text);
}
