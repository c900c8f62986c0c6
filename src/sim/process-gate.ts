/**
 * A simulated process: running, paused (SIGSTOP) or dead (SIGKILL). The daemons' code runs as it
 * is; what the process is enters through the interfaces the simulator hands it. Every call it
 * makes to the world (etcd, storage, hypervisor, lockd) and every timer it sets passes the gate:
 * paused, the call or the wake-up waits for SIGCONT; dead, it never returns. So a killed daemon
 * has no effect on the world from the instant it dies (its etcd leases then expire, its host
 * lease goes stale, its VMs run on), and a paused one acts again, late, when resumed — which is
 * exactly what makes SIGSTOP dangerous for leases.
 */
import { AsyncLocalStorage } from "node:async_hooks";
import type { Clock } from "../core/clock.ts";

/** Which simulated process the code running now belongs to: the trace names it on log lines. */
const currentProcess = new AsyncLocalStorage<string>();

/** The simulated process whose code is running (undefined: the simulator's own). */
export function runningProcess(): string | undefined {
  return currentProcess.getStore();
}

export type ProcessState = "running" | "paused" | "dead";

export class ProcessGate {
  #state: ProcessState = "running";
  #resumed = Promise.withResolvers<void>();
  /** Never resolves: what a dead process waits on. */
  static readonly #never = new Promise<void>(() => {});

  constructor(readonly name: string) {}

  get state(): ProcessState {
    return this.#state;
  }

  /** Resolves once the process runs (at once if it does; never if it is dead). */
  open(): Promise<void> {
    if (this.#state === "running") return Promise.resolve();
    return this.#state === "paused" ? this.#resumed.promise : ProcessGate.#never;
  }

  pause(): void {
    if (this.#state !== "running") return;
    this.#state = "paused";
    this.#resumed = Promise.withResolvers<void>();
  }

  resume(): void {
    if (this.#state !== "paused") return;
    this.#state = "running";
    this.#resumed.resolve();
  }

  kill(): void {
    this.#state = "dead";
  }

  /** Runs `work` as this process's code: what it and its continuations log is traced under its name. */
  run<T>(work: () => T): T {
    return currentProcess.run(this.name, work);
  }

  /** The process's view of `base`: its timers fire only while it runs. */
  clock(base: Clock): Clock {
    return {
      nowMs: () => base.nowMs(),
      sleep: async (ms) => {
        await base.sleep(ms);
        await this.open();
      },
    };
  }

  /**
   * `target` as this process sees it: each method call waits for the process to run before it
   * reaches the target, and its result waits again before the process sees it. Callbacks handed
   * to the target (watch listeners) run only while the process runs; objects it returns with
   * methods of their own (an etcd lease, a watch) are wrapped the same way.
   */
  wrap<T extends object>(target: T): T {
    return new Proxy(target, {
      get: (object, property) => {
        const value: unknown = Reflect.get(object, property, object);
        if (typeof value !== "function") return value;
        return async (...args: unknown[]) => {
          const result: unknown = await this.call(() => Reflect.apply(value, object, args.map((arg) => this.#callback(arg))) as Promise<unknown>);
          return hasMethods(result) ? this.wrap(result) : result;
        };
      },
    });
  }

  /** One call out of this process: made only while it runs, and seen by it only while it runs. */
  async call<T>(work: () => Promise<T>): Promise<T> {
    await this.open();
    const result = await work();
    await this.open();
    return result;
  }

  /** A callback into this process: runs only while it runs (later when paused, never when dead). */
  deliver<A extends unknown[]>(callback: (...args: A) => void): (...args: A) => void {
    return (...args) => void this.open().then(() => this.run(() => callback(...args)));
  }

  #callback(arg: unknown): unknown {
    if (typeof arg === "function") return this.deliver((...args: unknown[]) => Reflect.apply(arg, undefined, args));
    if (!hasMethods(arg)) return arg;
    return new Proxy(arg, {
      get: (object, property) => {
        const value: unknown = Reflect.get(object, property, object);
        if (typeof value !== "function") return value;
        return this.deliver((...args: unknown[]) => Reflect.apply(value, object, args));
      },
    });
  }
}

/** An object with behaviour (a class instance or a listener), as opposed to plain data. */
function hasMethods(value: unknown): value is object {
  if (typeof value !== "object" || value === null || Array.isArray(value) || ArrayBuffer.isView(value)) return false;
  if (Object.getPrototypeOf(value) !== Object.prototype) return !(value instanceof Date) && !(value instanceof Error);
  return Object.values(value).some((v) => typeof v === "function");
}
