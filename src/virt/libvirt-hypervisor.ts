/**
 * The Hypervisor over libvirt (ffi/libvirt.ts): one libvirt connection to any URI, e.g.
 * qemu:///system on a compute host, test:///default or test:///path/node.xml in tests, or
 * test+unix:///default?socket=… for a test-driver libvirtd shared by several processes.
 *
 * Each method makes its libvirt calls synchronously on the calling thread and returns a settled
 * promise: the thread (and its event loop, timers included) waits for as long as libvirt does.
 * That is microseconds for test:///…, and milliseconds for a healthy libvirtd, but a hung libvirtd
 * stalls the caller until it answers. A daemon that must keep time (lockd renewing its lease) must
 * not call it from its main loop until these calls move to a Worker (ffi/libvirt.ts works there;
 * scripts/build must then list the worker as an entry point, as it does for the lease I/O worker).
 */
import * as libvirt from "../../ffi/libvirt.ts";
import { domainIdentity } from "./domain-xml.ts";
import {
  HypervisorError,
  isUuid,
  type DomainInfo,
  type DomainState,
  type Hypervisor,
  type HypervisorErrorKind,
  type HypervisorOperation,
  type NodeInfo,
} from "./hypervisor.ts";

export class LibvirtHypervisor implements Hypervisor {
  #connection: libvirt.Connection | undefined;

  private constructor(
    readonly uri: string,
    connection: libvirt.Connection,
  ) {
    this.#connection = connection;
  }

  /** Connects (read-write); rejects with HypervisorError, also when libvirt.so.0 is not installed. */
  static async open(uri: string): Promise<LibvirtHypervisor> {
    const connection = attempt(uri, "connect", undefined, () => libvirt.Connection.open(uri));
    return new LibvirtHypervisor(uri, connection);
  }

  async listDomains(): Promise<DomainInfo[]> {
    return this.#call("list", undefined, (connection) => connection.listAllDomains().map(domainInfo));
  }

  async lookup(nameOrUuid: string): Promise<DomainInfo | undefined> {
    return this.#call("lookup", nameOrUuid, (connection) => {
      const found = isUuid(nameOrUuid) ? connection.lookup({ uuid: nameOrUuid }) : undefined;
      const record = found ?? connection.lookup({ name: nameOrUuid });
      return record === undefined ? undefined : domainInfo(record);
    });
  }

  async define(xml: string): Promise<DomainInfo> {
    return this.#call("define", domainIdentity(xml).name, (connection) => domainInfo(connection.define(xml)));
  }

  async start(nameOrUuid: string): Promise<void> {
    this.#onDomain("start", nameOrUuid, (connection, key) => connection.start(key));
  }

  async destroy(nameOrUuid: string): Promise<void> {
    this.#onDomain("destroy", nameOrUuid, (connection, key) => connection.destroy(key));
  }

  async undefine(nameOrUuid: string): Promise<void> {
    this.#onDomain("undefine", nameOrUuid, (connection, key) => connection.undefine(key));
  }

  async xml(nameOrUuid: string): Promise<string> {
    return this.#onDomain("xml", nameOrUuid, (connection, key) => connection.xml(key));
  }

  async nodeInfo(): Promise<NodeInfo> {
    return this.#call("node-info", undefined, (connection) => {
      const { cpus, memoryKiB } = connection.nodeInfo();
      return { cpus, memoryKiB };
    });
  }

  async close(): Promise<void> {
    const connection = this.#connection;
    this.#connection = undefined;
    if (connection !== undefined) attempt(this.uri, "close", undefined, () => connection.close());
  }

  #call<T>(operation: HypervisorOperation, domain: string | undefined, action: (connection: libvirt.Connection) => T): T {
    const connection = this.#connection;
    if (connection === undefined) throw new HypervisorError(this.uri, operation, domain, "failed", "the connection is closed");
    return attempt(this.uri, operation, domain, () => action(connection));
  }

  /**
   * `action` on the domain named `nameOrUuid`: by UUID if it looks like one, else (or when no
   * domain has that UUID) by name. A failed lookup changes nothing, so trying the name after it
   * is safe.
   */
  #onDomain<T>(operation: HypervisorOperation, nameOrUuid: string, action: (connection: libvirt.Connection, key: libvirt.DomainKey) => T): T {
    return this.#call(operation, nameOrUuid, (connection) => {
      if (isUuid(nameOrUuid)) {
        try {
          return action(connection, { uuid: nameOrUuid });
        } catch (error) {
          if (!(error instanceof libvirt.LibvirtError && error.code === libvirt.VIR_ERR_NO_DOMAIN)) throw error;
        }
      }
      return action(connection, { name: nameOrUuid });
    });
  }
}

/** Runs a libvirt call, turning its failure (or libvirt missing) into a HypervisorError. */
function attempt<T>(uri: string, operation: HypervisorOperation, domain: string | undefined, action: () => T): T {
  try {
    return action();
  } catch (error) {
    if (error instanceof libvirt.LibvirtError) {
      throw new HypervisorError(uri, operation, domain, errorKind(error.code), error.libvirtMessage, { cause: error });
    }
    if (error instanceof libvirt.LibvirtLoadError) throw new HypervisorError(uri, operation, domain, "failed", error.message, { cause: error });
    throw error;
  }
}

function errorKind(code: number): HypervisorErrorKind {
  if (code === libvirt.VIR_ERR_NO_DOMAIN) return "no-domain";
  if (code === libvirt.VIR_ERR_OPERATION_INVALID) return "invalid-state";
  return "failed";
}

function domainInfo(record: libvirt.DomainRecord): DomainInfo {
  return { name: record.name, uuid: record.uuid, state: domainState(record.state, record.reason) };
}

/** libvirt's state and reason → DomainState (whose comment says why each maps where it does). */
function domainState(state: number, reason: number): DomainState {
  const code = libvirt.DomainStateCode;
  switch (state) {
    case code.running:
    case code.blocked:
    case code.shutdown:
      return "running";
    case code.paused:
    case code.pmSuspended:
      return "paused";
    case code.shutoff:
      return reason === libvirt.VIR_DOMAIN_SHUTOFF_CRASHED ? "crashed" : "shutoff";
    case code.crashed:
      return "crashed";
    default:
      return "other";
  }
}
