/**
 * The libvirt calls fitha needs (libvirt.so.0 of Debian's libvirt0, libvirt 9.0), as thin safe
 * wrappers over bun:ffi: every failure becomes a thrown LibvirtError carrying libvirt's own code
 * and message, and every object libvirt hands back (connection, domain, string, array) is freed
 * here. Domain handles never leave this module: each call looks its domain up, acts, and frees it,
 * so a caller cannot leak one or use one after free.
 *
 * The calls are synchronous and can block for as long as libvirt takes: in-process drivers
 * (test:///…) answer in microseconds, but a remote or qemu:///system connection waits for
 * libvirtd, which can be slow or hung. Whoever calls them decides which thread may block.
 *
 * libvirt keeps its last error per thread and reports it to one process-wide handler, called by
 * the public function that failed on its caller's thread. This module replaces libvirt's default
 * handler, which prints every error on stderr (also those fitha expects and handles, such as a
 * lookup of a domain that is not there), by a native no-op that any thread may call: this module
 * works on any thread, several at once included (src/virt/worker-hypervisor.ts runs it in
 * Workers, and replaces one that hangs while the hung one is still inside libvirt). A Connection
 * is used by one thread at a time.
 */
import { CString, dlopen, read, type Library, type Pointer } from "bun:ffi";
import { SystemLibraryMissingError, systemLibraryPath } from "./system-library.ts";

const libraryName = "libvirt.so.0";
const debianPackage = "libvirt0";

const symbols = {
  virSetErrorFunc: { args: ["ptr", "ptr"], returns: "void" },
  // libxml2's, found through libvirt which links it: libvirt parses XML with it, and a few of its
  // messages (e.g. "I/O warning" for a test driver file that is missing) bypass libvirt's handler.
  xmlSetGenericErrorFunc: { args: ["ptr", "ptr"], returns: "void" },
  virGetLastError: { args: [], returns: "ptr" },
  virResetLastError: { args: [], returns: "void" },
  virConnectOpen: { args: ["ptr"], returns: "ptr" },
  virConnectClose: { args: ["ptr"], returns: "i32" },
  virConnectListAllDomains: { args: ["ptr", "ptr", "u32"], returns: "i32" },
  virNodeGetInfo: { args: ["ptr", "ptr"], returns: "i32" },
  virDomainLookupByName: { args: ["ptr", "ptr"], returns: "ptr" },
  virDomainLookupByUUIDString: { args: ["ptr", "ptr"], returns: "ptr" },
  virDomainDefineXML: { args: ["ptr", "ptr"], returns: "ptr" },
  virDomainCreate: { args: ["ptr"], returns: "i32" },
  virDomainDestroy: { args: ["ptr"], returns: "i32" },
  virDomainUndefine: { args: ["ptr"], returns: "i32" },
  virDomainGetXMLDesc: { args: ["ptr", "u32"], returns: "ptr" },
  virDomainGetName: { args: ["ptr"], returns: "ptr" },
  virDomainGetUUIDString: { args: ["ptr", "ptr"], returns: "i32" },
  virDomainGetState: { args: ["ptr", "ptr", "ptr", "u32"], returns: "i32" },
  virDomainFree: { args: ["ptr"], returns: "i32" },
  // libvirt documents that the strings and arrays it returns are released with free(); dlsym on
  // libvirt's handle finds the C library's, which libvirt itself links against.
  free: { args: ["ptr"], returns: "void" },
  // The C library's too: finds the no-op error handler (silenceErrors).
  dlsym: { args: ["ptr", "ptr"], returns: "ptr" },
} as const;

let library: Library<typeof symbols> | undefined;

/** libvirt.so.0 could not be loaded: it is not installed, or not the version fitha needs. */
export class LibvirtLoadError extends Error {
  constructor(cause: unknown) {
    const reason = cause instanceof Error ? cause.message : String(cause);
    super(cause instanceof SystemLibraryMissingError ? reason : `cannot load ${libraryName} (install the Debian package ${debianPackage}): ${reason}`, { cause });
    this.name = "LibvirtLoadError";
  }
}

/** dlopen on first use, not at import: commands that never touch libvirt run without it. */
function libvirt() {
  if (library === undefined) {
    let opened: Library<typeof symbols>;
    try {
      opened = dlopen(systemLibraryPath(libraryName, debianPackage), symbols);
    } catch (error) {
      throw new LibvirtLoadError(error);
    }
    silenceErrors(opened);
    library = opened;
  }
  return library.symbols;
}

/** dlsym's RTLD_DEFAULT: the program and the libraries it was linked with (the C library among them). */
const RTLD_DEFAULT = null;

/**
 * Makes libvirt and libxml2 report errors to a handler that prints nothing: C's getpid, which
 * takes no argument and changes nothing, so it ignores those it is called with (on x86_64 they are
 * passed in registers, and the caller pops any it pushed). It must be native code, not a
 * JSCallback: libvirt keeps one handler for the whole process and calls it on whichever thread
 * failed, and a JSCallback may only run on the thread that made it, while that thread lives. With
 * a JSCallback per thread, a libvirt error on the main thread after a Worker that had loaded this
 * module ended crashed the process (a segfault in Bun). libxml2 keeps its handler per thread:
 * each thread that loads this module sets its own.
 */
function silenceErrors(opened: Library<typeof symbols>): void {
  const noop = returned(opened.symbols.dlsym(RTLD_DEFAULT, cString("getpid", "symbol name")));
  if (noop === null) throw new LibvirtLoadError("the C library's getpid was not found");
  opened.symbols.virSetErrorFunc(null, noop);
  opened.symbols.xmlSetGenericErrorFunc(null, noop);
}

/** virErrorNumber values fitha tells apart (libvirt/virterror.h). */
export const VIR_ERR_NO_DOMAIN = 42;
export const VIR_ERR_OPERATION_INVALID = 55;

/** A libvirt call that failed, with libvirt's error: `virDomainCreate: Requested operation is not valid: …`. */
export class LibvirtError extends Error {
  constructor(
    /** The libvirt function that failed. */
    readonly call: string,
    /** virErrorNumber, e.g. 42 = VIR_ERR_NO_DOMAIN; 0 when libvirt left no error. */
    readonly code: number,
    /** virErrorDomain: the part of libvirt that raised it (10 qemu, 12 test driver, 7 RPC, 20 domain config…). */
    readonly domain: number,
    /** libvirt's own message. */
    readonly libvirtMessage: string,
  ) {
    super(`${call}: ${libvirtMessage}`);
    this.name = "LibvirtError";
  }
}

/**
 * The calling thread's last libvirt error as a LibvirtError, and clears it. virGetLastError's
 * struct belongs to libvirt (nothing to free); its layout (libvirt/virterror.h, x86_64):
 * int code @0, int domain @4, char *message @8.
 */
function lastError(call: string): LibvirtError {
  const api = libvirt();
  const error = returned(api.virGetLastError());
  if (error === null) return new LibvirtError(call, 0, 0, "failed without an error from libvirt");
  const code = read.i32(error, 0);
  const domain = read.i32(error, 4);
  const message = read.ptr(error, 8) as Pointer | 0;
  const text = message === 0 ? `libvirt error ${code}` : new CString(message).toString();
  api.virResetLastError();
  return new LibvirtError(call, code, domain, text);
}

/**
 * A pointer a function returned. bun:ffi types it Pointer | bigint, a bigint being for addresses
 * beyond 2^53, which x86_64 user space never has.
 */
function returned(pointer: Pointer | bigint | null): Pointer | null {
  return typeof pointer === "bigint" ? (Number(pointer) as Pointer) : pointer;
}

function cString(text: string, what: string): Buffer {
  if (text.includes("\0")) throw new RangeError(`${what} contains a NUL byte: ${JSON.stringify(text)}`);
  return Buffer.from(`${text}\0`, "utf8");
}

/** A string libvirt allocated for the caller: copied into JavaScript, then freed. */
function takeString(pointer: Pointer): string {
  try {
    return new CString(pointer).toString();
  } finally {
    libvirt().free(pointer);
  }
}

/** virDomainState (libvirt/libvirt-domain.h). */
export const DomainStateCode = {
  noState: 0,
  running: 1,
  blocked: 2,
  paused: 3,
  shutdown: 4,
  shutoff: 5,
  crashed: 6,
  pmSuspended: 7,
} as const;
/** virDomainShutoffReason VIR_DOMAIN_SHUTOFF_CRASHED: the domain is off because its guest crashed. */
export const VIR_DOMAIN_SHUTOFF_CRASHED = 3;

export interface DomainRecord {
  readonly name: string;
  readonly uuid: string;
  /** virDomainState (DomainStateCode). */
  readonly state: number;
  /** Why it is in that state: the virDomain*Reason enum of that state. */
  readonly reason: number;
}

export interface NodeRecord {
  readonly memoryKiB: number;
  /** Active logical CPUs. */
  readonly cpus: number;
}

/** How a domain is looked up. */
export type DomainKey = { readonly name: string } | { readonly uuid: string };

/** VIR_UUID_STRING_BUFLEN: 36 characters and the NUL. */
const uuidStringBytes = 37;
/** sizeof(virNodeInfo) on x86_64: char model[32], unsigned long memory, then 6 unsigned ints. */
const nodeInfoBytes = 64;

/** One open libvirt connection (virConnectPtr). close() it: libvirt holds a socket or a driver state for it. */
export class Connection {
  #pointer: Pointer | undefined;

  private constructor(
    readonly uri: string,
    pointer: Pointer,
  ) {
    this.#pointer = pointer;
  }

  /** virConnectOpen: read-write, any URI libvirt knows (test:///default, qemu:///system, test+unix:///default?socket=…). */
  static open(uri: string): Connection {
    const pointer = returned(libvirt().virConnectOpen(cString(uri, "libvirt URI")));
    if (pointer === null) throw lastError("virConnectOpen");
    return new Connection(uri, pointer);
  }

  /** virConnectClose. Idempotent; every later call on this connection throws. */
  close(): void {
    const pointer = this.#pointer;
    if (pointer === undefined) return;
    this.#pointer = undefined;
    // A negative result means libvirt could not tear the connection down cleanly; the handle is
    // released either way, so there is nothing the caller could retry.
    if (libvirt().virConnectClose(pointer) < 0) throw lastError("virConnectClose");
  }

  get #handle(): Pointer {
    if (this.#pointer === undefined) throw new Error(`libvirt connection to ${this.uri} used after close`);
    return this.#pointer;
  }

  /**
   * virConnectListAllDomains (active and inactive), each with its state. A domain that vanishes
   * between the listing and the reading of its state (a transient one stopped by another client)
   * is left out, as if listed a moment later.
   */
  listAllDomains(): DomainRecord[] {
    const api = libvirt();
    const out = new BigUint64Array(1);
    const count = api.virConnectListAllDomains(this.#handle, out, 0);
    if (count < 0) throw lastError("virConnectListAllDomains");
    const array = Number(out[0]) as Pointer;
    // libvirt allocates the array even for no domains; each element and the array are the caller's.
    const domains = Array.from({ length: count }, (_, i) => read.ptr(array, i * 8) as Pointer);
    try {
      return domains.flatMap((domain) => {
        const record = unlessGone(() => describe(domain));
        return record === undefined ? [] : [record];
      });
    } finally {
      for (const domain of domains) api.virDomainFree(domain);
      api.free(array);
    }
  }

  /** The domain, or undefined when libvirt has none by that name or UUID (VIR_ERR_NO_DOMAIN). */
  lookup(key: DomainKey): DomainRecord | undefined {
    return unlessGone(() => this.#withDomain(key, describe));
  }

  /** virDomainDefineXML: defines (or redefines, same name and UUID) a persistent domain. */
  define(xml: string): DomainRecord {
    const api = libvirt();
    const domain = returned(api.virDomainDefineXML(this.#handle, cString(xml, "domain XML")));
    if (domain === null) throw lastError("virDomainDefineXML");
    try {
      return describe(domain);
    } finally {
      api.virDomainFree(domain);
    }
  }

  /** virDomainCreate: starts a defined domain. */
  start(key: DomainKey): void {
    this.#withDomain(key, (domain) => check(libvirt().virDomainCreate(domain), "virDomainCreate"));
  }

  /** virDomainDestroy: stops a running domain at once (kills its qemu). */
  destroy(key: DomainKey): void {
    this.#withDomain(key, (domain) => check(libvirt().virDomainDestroy(domain), "virDomainDestroy"));
  }

  /** virDomainUndefine: removes the definition (a running domain becomes transient, gone when stopped). */
  undefine(key: DomainKey): void {
    this.#withDomain(key, (domain) => check(libvirt().virDomainUndefine(domain), "virDomainUndefine"));
  }

  /** virDomainGetXMLDesc: the domain's XML (the live one while it runs). */
  xml(key: DomainKey): string {
    return this.#withDomain(key, (domain) => {
      const xml = returned(libvirt().virDomainGetXMLDesc(domain, 0));
      if (xml === null) throw lastError("virDomainGetXMLDesc");
      return takeString(xml);
    });
  }

  /** virNodeGetInfo. */
  nodeInfo(): NodeRecord {
    const info = new Uint8Array(nodeInfoBytes);
    check(libvirt().virNodeGetInfo(this.#handle, info), "virNodeGetInfo");
    const view = new DataView(info.buffer);
    return { memoryKiB: Number(view.getBigUint64(32, true)), cpus: view.getUint32(40, true) };
  }

  /** Looks the domain up, runs `action` on it, and frees it whatever happens. */
  #withDomain<T>(key: DomainKey, action: (domain: Pointer) => T): T {
    const api = libvirt();
    const domain = returned(
      "uuid" in key
        ? api.virDomainLookupByUUIDString(this.#handle, cString(key.uuid, "domain UUID"))
        : api.virDomainLookupByName(this.#handle, cString(key.name, "domain name")),
    );
    if (domain === null) throw lastError("uuid" in key ? "virDomainLookupByUUIDString" : "virDomainLookupByName");
    try {
      return action(domain);
    } finally {
      api.virDomainFree(domain);
    }
  }
}

/** `action`'s result, or undefined when it fails because the domain does not exist (any more). */
function unlessGone<T>(action: () => T): T | undefined {
  try {
    return action();
  } catch (error) {
    if (error instanceof LibvirtError && error.code === VIR_ERR_NO_DOMAIN) return undefined;
    throw error;
  }
}

function check(result: number, call: string): void {
  if (result < 0) throw lastError(call);
}

/** Name, UUID and state of a domain handle (which stays the caller's to free). */
function describe(domain: Pointer): DomainRecord {
  const api = libvirt();
  // virDomainGetName's string belongs to the domain handle: copied, never freed here.
  const name = returned(api.virDomainGetName(domain));
  if (name === null) throw lastError("virDomainGetName");
  const uuid = new Uint8Array(uuidStringBytes);
  check(api.virDomainGetUUIDString(domain, uuid), "virDomainGetUUIDString");
  const state = new Int32Array(1);
  const reason = new Int32Array(1);
  check(api.virDomainGetState(domain, state, reason, 0), "virDomainGetState");
  return { name: new CString(name).toString(), uuid: cStringAt(uuid), state: state[0]!, reason: reason[0]! };
}

/** The NUL-terminated UTF-8 string at the start of `bytes` (a char array filled in by libvirt). */
function cStringAt(bytes: Uint8Array): string {
  const end = bytes.indexOf(0);
  return new TextDecoder().decode(end < 0 ? bytes : bytes.subarray(0, end));
}
