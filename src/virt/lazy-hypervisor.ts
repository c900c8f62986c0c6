/**
 * A Hypervisor that connects on first use, and again after a failed connect: for the watchdog,
 * which must start (and kill VM processes, src/virt/qemu-processes.ts) even while libvirtd is
 * down or hung, and use libvirt whenever it is back. A call while no connection can be made
 * fails with kind "unanswered", as a hung hypervisor's call does.
 */
import { HypervisorError, type DomainInfo, type Hypervisor, type HypervisorOperation, type NodeInfo } from "./hypervisor.ts";

export class LazyHypervisor implements Hypervisor {
  #connection: Promise<Hypervisor> | undefined;
  #closed = false;

  constructor(
    readonly uri: string,
    /** Opens a connection to `uri`; bounded by its own deadline. */
    readonly connect: () => Promise<Hypervisor>,
  ) {}

  async listDomains(): Promise<DomainInfo[]> {
    return (await this.#hypervisor("list", undefined)).listDomains();
  }
  async lookup(nameOrUuid: string): Promise<DomainInfo | undefined> {
    return (await this.#hypervisor("lookup", nameOrUuid)).lookup(nameOrUuid);
  }
  async define(xml: string): Promise<DomainInfo> {
    return (await this.#hypervisor("define", undefined)).define(xml);
  }
  async start(nameOrUuid: string): Promise<void> {
    return (await this.#hypervisor("start", nameOrUuid)).start(nameOrUuid);
  }
  async destroy(nameOrUuid: string): Promise<void> {
    return (await this.#hypervisor("destroy", nameOrUuid)).destroy(nameOrUuid);
  }
  async undefine(nameOrUuid: string): Promise<void> {
    return (await this.#hypervisor("undefine", nameOrUuid)).undefine(nameOrUuid);
  }
  async xml(nameOrUuid: string): Promise<string> {
    return (await this.#hypervisor("xml", nameOrUuid)).xml(nameOrUuid);
  }
  async nodeInfo(): Promise<NodeInfo> {
    return (await this.#hypervisor("node-info", undefined)).nodeInfo();
  }

  async close(): Promise<void> {
    this.#closed = true;
    const connection = this.#connection;
    this.#connection = undefined;
    const hypervisor = await connection?.catch(() => undefined);
    await hypervisor?.close();
  }

  async #hypervisor(operation: HypervisorOperation, domain: string | undefined): Promise<Hypervisor> {
    if (this.#closed) throw new HypervisorError(this.uri, operation, domain, "failed", "the connection is closed");
    const connection = (this.#connection ??= this.connect());
    try {
      return await connection;
    } catch (error) {
      // The next call tries again: libvirtd may be back by then.
      if (this.#connection === connection) this.#connection = undefined;
      const reason = error instanceof HypervisorError ? error.detail : error instanceof Error ? error.message : String(error);
      throw new HypervisorError(this.uri, operation, domain, "unanswered", `not connected (${reason})`, { cause: error });
    }
  }
}
