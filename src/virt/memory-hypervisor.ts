/**
 * A Hypervisor in memory, for unit tests and the simulator: domains known only by the <name> and
 * <uuid> of their XML, the state rules of libvirt (with its messages where it has one), and
 * failures injected on demand: an operation that fails, a guest that crashes.
 */
import { monotonicClock, type Clock } from "../core/clock.ts";
import { domainIdentity } from "./domain-xml.ts";
import {
  HypervisorError,
  isUuid,
  type DomainInfo,
  type DomainOperation,
  type DomainState,
  type Hypervisor,
  type HypervisorErrorKind,
  type HypervisorOperation,
  type NodeInfo,
} from "./hypervisor.ts";

export interface MemoryHypervisorOptions {
  /** Default "memory:///"; give each simulated host its own to tell their errors apart. */
  readonly uri?: string;
  /** Default 8 CPUs, 16 GiB. */
  readonly node?: NodeInfo;
  /** UUIDs for XML without one; default crypto.randomUUID. The simulator passes a seeded one to replay runs exactly. */
  readonly newUuid?: () => string;
  /** Times start()'s boot wait (startMs); default the machine's monotonic clock. The simulator passes its virtual one. */
  readonly clock?: Clock;
  /**
   * Called whenever a domain starts or stops running (start, destroy, crash), synchronously, in
   * the same turn: the simulator checks "never running on two hosts" at the instant it changes.
   */
  readonly onRunning?: (domain: { readonly name: string; readonly uuid: string }, running: boolean) => void;
}

export interface InjectedFailure {
  /** How many of the next matching operations fail; default 1. */
  readonly times?: number;
  /** The error's detail; default "injected failure". */
  readonly message?: string;
  /** The error's kind: "failed" (default), or "unanswered" to play a hung hypervisor. */
  readonly kind?: "failed" | "unanswered";
}

interface Domain {
  readonly name: string;
  readonly uuid: string;
  xml: string;
  state: DomainState;
  /** False once undefined while running: the domain disappears when it stops, as in libvirt. */
  persistent: boolean;
  /** Set while a start is booting it (state "paused"); a destroy clears it, failing that start. */
  boot?: object | undefined;
}

interface PendingFailure {
  readonly operation: DomainOperation;
  /** A name, or a UUID in lower case. */
  readonly target: string;
  remaining: number;
  readonly message: string;
  readonly kind: "failed" | "unanswered";
}

const defaultNode: NodeInfo = { cpus: 8, memoryKiB: 16 * 1024 * 1024 };

export class MemoryHypervisor implements Hypervisor {
  readonly uri: string;
  readonly #node: NodeInfo;
  readonly #newUuid: () => string;
  /** By UUID, in definition order (listDomains keeps it). */
  readonly #domains = new Map<string, Domain>();
  #failures: PendingFailure[] = [];
  #closed = false;
  readonly #clock: Clock;
  readonly #onRunning: MemoryHypervisorOptions["onRunning"];
  /**
   * How long a start takes before the domain runs (a guest's boot, as a real start would be
   * waited for): 0 by default; benches and tests set it, at any time.
   */
  startMs = 0;

  constructor(options: MemoryHypervisorOptions = {}) {
    this.uri = options.uri ?? "memory:///";
    this.#clock = options.clock ?? monotonicClock;
    this.#node = options.node ?? defaultNode;
    this.#newUuid = options.newUuid ?? (() => crypto.randomUUID());
    this.#onRunning = options.onRunning;
  }

  async listDomains(): Promise<DomainInfo[]> {
    this.#checkOpen("list", undefined);
    return [...this.#domains.values()].map(info);
  }

  async lookup(nameOrUuid: string): Promise<DomainInfo | undefined> {
    this.#checkOpen("lookup", nameOrUuid);
    const domain = this.#find(nameOrUuid);
    this.#takeFailure("lookup", domain === undefined ? [normalized(nameOrUuid)] : [domain.name, domain.uuid], nameOrUuid);
    return domain === undefined ? undefined : info(domain);
  }

  async define(xml: string): Promise<DomainInfo> {
    const { isDomain, name, uuid: givenUuid } = domainIdentity(xml);
    this.#checkOpen("define", name);
    const invalid = (detail: string) => this.#error("define", name, "failed", detail);
    if (!isDomain) throw invalid("XML error: expecting root element of 'domain'");
    if (name === undefined) throw invalid("missing name information");
    if (givenUuid !== undefined && !isUuid(givenUuid)) throw invalid("internal error: malformed uuid element");
    const uuid = givenUuid === undefined ? this.#newUuid() : normalized(givenUuid);
    this.#takeFailure("define", givenUuid === undefined ? [name] : [name, uuid], name);

    const sameName = this.#byName(name);
    const sameUuid = this.#domains.get(uuid);
    if (sameUuid !== undefined && sameUuid.name !== name) throw invalid(`operation failed: domain '${sameUuid.name}' is already defined with uuid ${uuid}`);
    if (sameName !== undefined && sameName.uuid !== uuid) throw invalid(`operation failed: domain '${name}' already exists with uuid ${sameName.uuid}`);
    // Redefining changes the definition only: a running domain keeps running.
    const domain = sameUuid ?? { name, uuid, xml, state: "shutoff", persistent: true };
    domain.xml = xml;
    domain.persistent = true;
    this.#domains.set(uuid, domain);
    return info(domain);
  }

  async start(nameOrUuid: string): Promise<void> {
    const domain = this.#domainFor("start", nameOrUuid);
    if (isActive(domain)) throw this.#error("start", nameOrUuid, "invalid-state", "Requested operation is not valid: domain is already running");
    if (this.startMs === 0) return this.#running(domain);
    // As libvirt does, the qemu exists from the start of the call (the domain is "paused" until
    // its CPUs run): a second start is refused, and a destroy meanwhile kills it, failing the start.
    domain.state = "paused";
    const boot = (domain.boot = {});
    await this.#clock.sleep(this.startMs);
    this.#checkOpen("start", nameOrUuid);
    if (domain.boot !== boot || domain.state !== "paused" || this.#find(domain.uuid) !== domain) throw this.#error("start", nameOrUuid, "failed", "the domain was destroyed while it started");
    domain.boot = undefined;
    this.#running(domain);
  }

  #running(domain: Domain): void {
    domain.state = "running";
    this.#onRunning?.({ name: domain.name, uuid: domain.uuid }, true);
  }

  async destroy(nameOrUuid: string): Promise<void> {
    const domain = this.#domainFor("destroy", nameOrUuid);
    if (!isActive(domain)) throw this.#error("destroy", nameOrUuid, "invalid-state", "Requested operation is not valid: domain is not running");
    this.#stopped(domain);
  }

  async undefine(nameOrUuid: string): Promise<void> {
    const domain = this.#domainFor("undefine", nameOrUuid);
    if (isActive(domain)) domain.persistent = false;
    else this.#domains.delete(domain.uuid);
  }

  /** The XML as defined, with its <uuid> added if it had none (libvirt's shows the generated one). */
  async xml(nameOrUuid: string): Promise<string> {
    const domain = this.#domainFor("xml", nameOrUuid);
    if (domainIdentity(domain.xml).uuid !== undefined) return domain.xml;
    return domain.xml.replace(/<\/name>/, `</name>\n  <uuid>${domain.uuid}</uuid>`);
  }

  async nodeInfo(): Promise<NodeInfo> {
    this.#checkOpen("node-info", undefined);
    return this.#node;
  }

  async close(): Promise<void> {
    this.#closed = true;
  }

  /**
   * The next `times` (default 1) `operation`s on the domain named `nameOrUuid` fail with a
   * HypervisorError of kind "failed" and change nothing. The domain need not exist yet (a define
   * can be made to fail). Failures for the same operation and domain add up.
   */
  injectFailure(operation: DomainOperation, nameOrUuid: string, failure: InjectedFailure = {}): void {
    const times = failure.times ?? 1;
    if (!(Number.isSafeInteger(times) && times > 0)) throw new RangeError(`injected failure times ${times}`);
    this.#failures.push({ operation, target: normalized(nameOrUuid), remaining: times, message: failure.message ?? "injected failure", kind: failure.kind ?? "failed" });
  }

  /** The UUIDs of the domains that run (or are paused) now. */
  activeUuids(): string[] {
    return [...this.#domains.values()].filter(isActive).map((domain) => domain.uuid);
  }

  /** Forgets every injected failure not yet used. */
  clearFailures(): void {
    this.#failures = [];
  }

  /**
   * The guest of a running or paused domain crashes: state "crashed", its qemu gone (libvirt's
   * default on_crash=destroy), so it can be started again but not destroyed. A domain undefined
   * while running is gone. Throws if the domain is not running: a test that crashes a stopped
   * domain is wrong.
   */
  crash(nameOrUuid: string): void {
    const domain = this.#find(nameOrUuid);
    if (domain === undefined || !isActive(domain)) throw new Error(`${this.uri}: cannot crash ${JSON.stringify(nameOrUuid)}: no running domain by that name or UUID`);
    this.#stopped(domain, "crashed");
  }

  #stopped(domain: Domain, state: "shutoff" | "crashed" = "shutoff"): void {
    const wasRunning = domain.state === "running" || (domain.state === "paused" && domain.boot === undefined);
    domain.boot = undefined;
    if (domain.persistent) domain.state = state;
    else this.#domains.delete(domain.uuid);
    if (wasRunning) this.#onRunning?.({ name: domain.name, uuid: domain.uuid }, false);
  }

  /** The domain an operation acts on, after the checks every such operation makes. */
  #domainFor(operation: DomainOperation, nameOrUuid: string): Domain {
    this.#checkOpen(operation, nameOrUuid);
    const domain = this.#find(nameOrUuid);
    if (domain === undefined) throw this.#error(operation, nameOrUuid, "no-domain", "Domain not found");
    this.#takeFailure(operation, [domain.name, domain.uuid], nameOrUuid);
    return domain;
  }

  #find(nameOrUuid: string): Domain | undefined {
    return this.#domains.get(normalized(nameOrUuid)) ?? this.#byName(nameOrUuid);
  }

  #byName(name: string): Domain | undefined {
    for (const domain of this.#domains.values()) if (domain.name === name) return domain;
    return undefined;
  }

  /** Throws the first injected failure for `operation` on any of `targets` (names, lower-case UUIDs), using it up. */
  #takeFailure(operation: DomainOperation, targets: readonly string[], domain: string): void {
    const failure = this.#failures.find((candidate) => candidate.operation === operation && targets.includes(candidate.target));
    if (failure === undefined) return;
    failure.remaining -= 1;
    if (failure.remaining === 0) this.#failures = this.#failures.filter((candidate) => candidate !== failure);
    throw this.#error(operation, domain, failure.kind, failure.message);
  }

  #checkOpen(operation: HypervisorOperation, domain: string | undefined): void {
    if (this.#closed) throw this.#error(operation, domain, "failed", "the connection is closed");
  }

  #error(operation: HypervisorOperation, domain: string | undefined, kind: HypervisorErrorKind, detail: string): HypervisorError {
    return new HypervisorError(this.uri, operation, domain, kind, detail);
  }
}

/** Whether the domain has a qemu: it must be destroyed before it can start again. */
function isActive(domain: Domain): boolean {
  return domain.state === "running" || domain.state === "paused";
}

/** A UUID in the form the domains are keyed by (lower case); a name unchanged. */
function normalized(nameOrUuid: string): string {
  return isUuid(nameOrUuid) ? nameOrUuid.toLowerCase() : nameOrUuid;
}

function info(domain: Domain): DomainInfo {
  return { name: domain.name, uuid: domain.uuid, state: domain.state };
}
