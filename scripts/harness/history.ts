/**
 * Where every VM ran, watched from outside fitha: the harness polls each host's hypervisor and
 * records every VM's start and stop on every host, with this machine's monotonic clock (all hosts
 * share it). The check is the safety invariant (DESIGN §3): no VM runs on two hosts at once.
 *
 * Sound, not complete: a VM is taken to run on a host from the first poll that saw it running to
 * the last, a sub-interval of when it really ran, so an overlap found is real; an overlap shorter
 * than one poll round (`pollIntervalMs` plus one listing per host) can be missed. fitha's own
 * records are not used: a bug there must not hide what the hypervisors show.
 */
export interface Listing {
  /** UUIDs of the domains running now; throws if the hypervisor cannot be asked. */
  running(): Promise<readonly string[]>;
}

export interface Interval {
  readonly vm: string;
  readonly host: string;
  readonly firstSeenMs: number;
  /** The last poll that saw it running (up to now if it still runs). */
  readonly lastSeenMs: number;
  readonly open: boolean;
}

export interface Overlap {
  readonly vm: string;
  readonly hosts: readonly [string, string];
  readonly fromMs: number;
  readonly toMs: number;
}

/** A host whose hypervisor cannot be asked (powered off) counts as running nothing. */
export class History {
  readonly #hosts = new Map<string, Listing>();
  readonly #open = new Map<string, { firstSeenMs: number; lastSeenMs: number }>();
  readonly #closed: Interval[] = [];
  readonly #unreachable = new Set<string>();
  #rounds = 0;
  #stopped = false;
  #loop: Promise<void> | undefined;

  constructor(
    readonly pollIntervalMs = 20,
    readonly now: () => number = () => performance.now(),
  ) {}

  watch(host: string, listing: Listing): void {
    this.#hosts.set(host, listing);
  }

  /** Polls every host until stop(). */
  start(): void {
    this.#loop ??= (async () => {
      while (!this.#stopped) {
        await this.pollOnce();
        await Bun.sleep(this.pollIntervalMs);
      }
    })();
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    await this.#loop;
  }

  /** One look at every host. */
  async pollOnce(): Promise<void> {
    for (const [host, listing] of this.#hosts) {
      let running: readonly string[];
      try {
        running = await listing.running();
        this.#unreachable.delete(host);
      } catch {
        running = [];
        this.#unreachable.add(host);
      }
      this.observe(host, running, this.now());
    }
    this.#rounds++;
  }

  /** What one listing of `host` at `atMs` showed. */
  observe(host: string, running: readonly string[], atMs: number): void {
    const now = new Set(running);
    for (const [key, seen] of this.#open) {
      const [onHost, vm] = split(key);
      if (onHost !== host || now.has(vm)) continue;
      this.#open.delete(key);
      this.#closed.push({ vm, host, firstSeenMs: seen.firstSeenMs, lastSeenMs: seen.lastSeenMs, open: false });
    }
    for (const vm of now) {
      const key = `${host}\n${vm}`;
      const seen = this.#open.get(key);
      if (seen === undefined) this.#open.set(key, { firstSeenMs: atMs, lastSeenMs: atMs });
      else seen.lastSeenMs = atMs;
    }
  }

  /** Drops everything recorded of `vm` (a scenario that broke the invariant on purpose). */
  forget(vm: string): void {
    for (const key of [...this.#open.keys()]) if (split(key)[1] === vm) this.#open.delete(key);
    for (let i = this.#closed.length - 1; i >= 0; i--) if (this.#closed[i]!.vm === vm) this.#closed.splice(i, 1);
  }

  get rounds(): number {
    return this.#rounds;
  }

  intervals(): Interval[] {
    const open = [...this.#open].map(([key, seen]) => {
      const [host, vm] = split(key);
      return { vm, host, firstSeenMs: seen.firstSeenMs, lastSeenMs: seen.lastSeenMs, open: true };
    });
    return [...this.#closed, ...open];
  }

  /** Hosts running `vm` as of the last poll. */
  runningOn(vm: string): string[] {
    return [...this.#open.keys()].map(split).filter(([, v]) => v === vm).map(([host]) => host);
  }

  /** Every pair of intervals of one VM on two hosts that share a moment. */
  overlaps(): Overlap[] {
    const byVm = new Map<string, Interval[]>();
    for (const interval of this.intervals()) byVm.set(interval.vm, [...(byVm.get(interval.vm) ?? []), interval]);
    const found: Overlap[] = [];
    for (const [vm, intervals] of byVm) {
      for (let i = 0; i < intervals.length; i++) {
        for (let j = i + 1; j < intervals.length; j++) {
          const [a, b] = [intervals[i]!, intervals[j]!];
          if (a.host === b.host) continue;
          const fromMs = Math.max(a.firstSeenMs, b.firstSeenMs);
          const toMs = Math.min(a.lastSeenMs, b.lastSeenMs);
          if (fromMs <= toMs) found.push({ vm, hosts: [a.host, b.host], fromMs, toMs });
        }
      }
    }
    return found;
  }
}

function split(key: string): [string, string] {
  const at = key.indexOf("\n");
  return [key.slice(0, at), key.slice(at + 1)];
}
