/**
 * The thread behind one WorkerHypervisor (worker-hypervisor.ts): it holds one LibvirtHypervisor
 * and makes its libvirt calls, which block for as long as libvirtd takes to answer, so that a
 * hung libvirtd blocks this thread only, never the caller's event loop and its timers.
 *
 * The caller sends one request at a time and waits for its reply before the next: "open" first,
 * then calls, then "close". Each handler makes its libvirt calls synchronously, so a request the
 * caller gave up on (deadline passed) holds this thread until libvirt returns, if ever. The caller
 * then abandons this worker: it posts "close" behind the stuck request (run once libvirt returns,
 * to free the connection), ignores the late replies, and terminates the worker after the last.
 */
import { HypervisorError, type DomainInfo, type HypervisorErrorKind, type HypervisorOperation, type NodeInfo } from "./hypervisor.ts";
import { LibvirtHypervisor } from "./libvirt-hypervisor.ts";

/** A Hypervisor method the worker runs, with its arguments. */
export type HypervisorCall =
  | { readonly method: "listDomains" | "nodeInfo" }
  | { readonly method: "lookup" | "start" | "destroy" | "undefine" | "xml"; readonly nameOrUuid: string }
  | { readonly method: "define"; readonly xml: string };

/** What each call resolves to, as the Hypervisor interface says. */
export interface CallResults {
  listDomains: DomainInfo[];
  lookup: DomainInfo | undefined;
  define: DomainInfo;
  start: void;
  destroy: void;
  undefine: void;
  xml: string;
  nodeInfo: NodeInfo;
}

export type WorkerRequest =
  | { readonly type: "open"; readonly uri: string }
  | { readonly type: "call"; readonly call: HypervisorCall }
  | { readonly type: "close" };

/** A HypervisorError as it crosses threads: a structured clone would keep only its message. */
export interface HypervisorErrorFields {
  readonly uri: string;
  readonly operation: HypervisorOperation;
  readonly domain: string | undefined;
  readonly kind: HypervisorErrorKind;
  readonly detail: string;
}

export type WorkerReply =
  | { readonly type: "done"; readonly value: CallResults[keyof CallResults] }
  | { readonly type: "failed"; readonly error: HypervisorErrorFields }
  /** Anything but a HypervisorError (a bug, or an argument libvirt cannot take): cloned as is. */
  | { readonly type: "threw"; readonly error: Error };

declare const self: Worker;

let hypervisor: LibvirtHypervisor | undefined;

self.onmessage = async (event: MessageEvent<WorkerRequest>) => {
  postMessage(await answer(event.data));
};

async function answer(request: WorkerRequest): Promise<WorkerReply> {
  try {
    return { type: "done", value: await perform(request) };
  } catch (error) {
    if (error instanceof HypervisorError) {
      const { uri, operation, domain, kind, detail } = error;
      return { type: "failed", error: { uri, operation, domain, kind, detail } };
    }
    return { type: "threw", error: error instanceof Error ? error : new Error(String(error)) };
  }
}

async function perform(request: WorkerRequest): Promise<CallResults[keyof CallResults]> {
  switch (request.type) {
    case "open":
      hypervisor = await LibvirtHypervisor.open(request.uri);
      return undefined;
    case "close":
      await hypervisor?.close();
      return undefined;
    case "call":
      if (hypervisor === undefined) throw new Error("libvirt worker: a call before open");
      return call(hypervisor, request.call);
  }
}

function call(opened: LibvirtHypervisor, request: HypervisorCall): Promise<CallResults[keyof CallResults]> {
  switch (request.method) {
    case "listDomains":
      return opened.listDomains();
    case "nodeInfo":
      return opened.nodeInfo();
    case "define":
      return opened.define(request.xml);
    default:
      return opened[request.method](request.nameOrUuid);
  }
}
