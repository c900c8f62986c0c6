/**
 * The agent's watch over this host's domains: every vmPollIntervalMs it lists them and reports
 * each one's state under P/vm-states/HOST/UUID — written only when the state (or name) changed
 * since the last report, deleted when the domain is gone — so the steady state costs etcd
 * nothing. A failing hypervisor or etcd is logged and the round tried again at the next tick:
 * what was not written is still different next time.
 *
 * Restart in place: an HA VM of this host (registry: ha, host = this host) found crashed, or shut
 * off without fitha having stopped it, is started again here, under its lease (vm-actions.ts) —
 * unless another host holds that lease now, which means the VM is being recovered elsewhere.
 * This is level-triggered: a VM that is down is tried again (with a backoff from 10 s to 5 min),
 * also when it went down while this agent or lockd was not running (the watchdog stopped it,
 * lockd fenced it, the host rebooted): nobody else restarts a VM whose host is healthy.
 * The lease keeps it safe: a VM running elsewhere has its lease held there.
 */
import { errorMessage } from "../errors.ts";
import { logger } from "../log.ts";
import { appendEvent } from "../store/events.ts";
import { vmUuidPattern } from "../store/keys.ts";
import { vmRecord, vmStateRecord, type EventRecord, type VmStateRecord } from "../store/records.ts";
import { listRecords, readRecord } from "../store/typed.ts";
import { describeVm } from "../store/vm-registry.ts";
import type { DomainInfo, DomainState } from "../virt/hypervisor.ts";
import type { AgentVmContext } from "./vm-actions.ts";

const log = logger("agent");

/**
 * How often the domains are listed: a crash is restarted within this (plus the start), and a
 * state change reaches etcd within it. Listing is one cheap libvirt call; 2 s keeps both prompt.
 */
export const vmPollIntervalMs = 2_000;
/** Domains considered per round; more on one host is a misconfiguration, and the rest are skipped (logged). */
export const maxDomains = 10_000;
/** Restarts in place of one VM that is down: the first at once, then after 10 s, doubling up to 5 min. */
export const restartBackoffMs = { first: 10_000, max: 300_000 } as const;

export type VmWatchOptions = AgentVmContext;

/** What the last report of a domain says; "bad": the stored value did not decode (rewrite or delete it). */
type Reported = { readonly name: string; readonly state: DomainState } | "bad";

export class VmWatch {
  /** As written in etcd; undefined until read back at the first round. */
  #reported: Map<string, Reported> | undefined;
  /** Each domain's state at the previous successful listing; undefined before the first. */
  #seen: Map<string, DomainState> | undefined;
  /** Per VM down here and tried: when it may be tried again, and the wait after that. */
  readonly #retries = new Map<string, { readonly atMs: number; readonly nextDelayMs: number }>();
  /** Restarts under way, by VM: one at a time for each. */
  readonly #restarts = new Map<string, Promise<void>>();
  #stopping = false;
  #wake: (() => void) | undefined;
  readonly done: Promise<void>;

  constructor(readonly options: VmWatchOptions) {
    this.done = this.#run();
  }

  /** Stops listing; waits for restarts under way (each bounded by the hypervisor's and lockd's deadlines). */
  async stop(): Promise<void> {
    this.#stopping = true;
    this.#wake?.();
    await this.done;
    await Promise.all(this.#restarts.values());
  }

  async #run(): Promise<void> {
    while (!this.#stopping) {
      await this.#round();
      if (this.#stopping) return;
      await new Promise<void>((resolve) => {
        this.#wake = resolve;
        void this.options.clock.sleep(vmPollIntervalMs).then(resolve);
      });
      this.#wake = undefined;
    }
  }

  async #round(): Promise<void> {
    let listed: DomainInfo[];
    try {
      listed = await this.options.actions.hypervisor.listDomains();
    } catch (error) {
      log.warn("cannot list the domains; trying again next round", { error: errorMessage(error) });
      return;
    }
    if (listed.length > maxDomains) log.warn(`${listed.length} domains on this host; only the first ${maxDomains} are watched`);
    // Keys hold lower-case UUIDs; libvirt prints them so, a domain that does not is not reported.
    const domains = listed.slice(0, maxDomains).filter((d) => vmUuidPattern.test(d.uuid));
    this.#restartDown(domains);
    try {
      await this.#report(domains);
    } catch (error) {
      log.warn("cannot report the VM states; trying again next round", { error: errorMessage(error) });
    }
  }

  /** Starts the restarts in place the listing calls for (not awaited: the watch goes on). */
  #restartDown(domains: readonly DomainInfo[]): void {
    const { actions, clock } = this.options;
    const previous = this.#seen;
    this.#seen = new Map(domains.map((d) => [d.uuid, d.state]));
    for (const uuid of previous?.keys() ?? []) {
      if (this.#seen.has(uuid)) continue;
      actions.forget(uuid);
      this.#retries.delete(uuid);
    }
    const nowMs = clock.nowMs();
    for (const domain of domains) {
      if (domain.state === "running" || domain.state === "paused") {
        this.#retries.delete(domain.uuid);
        continue;
      }
      const why = domain.state === "crashed" ? "crashed" : domain.state === "shutoff" && !actions.stoppedByFitha(domain.uuid) ? "shut off without a stop order from fitha" : undefined;
      // An action under way on the VM (an order) decides its fate.
      if (why === undefined || actions.busy(domain.uuid) || this.#restarts.has(domain.uuid) || this.#stopping) continue;
      // Seen going down: at once. Found down: only once it stayed down for a whole round, so that
      // a start under way by someone else (a domain defined, then booting) is not raced.
      const before = previous?.get(domain.uuid);
      if (before !== "running" && before !== domain.state) continue;
      const retry = this.#retries.get(domain.uuid);
      if (retry !== undefined && nowMs < retry.atMs) continue;
      const delayMs = retry?.nextDelayMs ?? restartBackoffMs.first;
      this.#retries.set(domain.uuid, { atMs: nowMs + delayMs, nextDelayMs: Math.min(restartBackoffMs.max, delayMs * 2) });
      const restart = this.#restartInPlace(domain.uuid, why).finally(() => this.#restarts.delete(domain.uuid));
      this.#restarts.set(domain.uuid, restart);
    }
  }

  async #restartInPlace(uuid: string, why: string): Promise<void> {
    const { kv, keys, host, actions } = this.options;
    try {
      await actions.exclusive(uuid, async () => {
        // A stop order may have come first while this waited.
        if (actions.stoppedByFitha(uuid)) return;
        const stored = await readRecord(kv, keys.vm(uuid), vmRecord);
        if (stored === undefined || "bad" in stored || stored.record.uuid !== uuid) return;
        const record = stored.record;
        if (!record.ha || record.host !== host) return;
        const outcome = await actions.start(record, "in-place");
        if (outcome.kind === "lease-held") {
          this.options.metrics?.restart("lease-held");
          log.warn("HA VM not restarted here: its lease is held by another host (it is being recovered there)", { vm: uuid, holder: outcome.holder, free_in_ms: outcome.freeInMs });
        } else if (outcome.kind === "started") {
          this.options.metrics?.restart("started");
          log.info("HA VM restarted in place", { vm: uuid, why });
          await this.#event(`${describeVm(record)} ${why}; started again on ${host}`);
        }
      });
    } catch (error) {
      this.options.metrics?.restart("failed");
      log.error("HA VM could not be restarted in place", { vm: uuid, why, error: errorMessage(error) });
    }
  }

  /** Brings P/vm-states/HOST/ in line with `domains`; stops at the first etcd failure (the rest next round). */
  async #report(domains: readonly DomainInfo[]): Promise<void> {
    const { kv, keys, host, now } = this.options;
    const reported = this.#reported ?? (await this.#readReported());
    this.#reported = reported;
    const present = new Set<string>();
    for (const domain of domains) {
      present.add(domain.uuid);
      const last = reported.get(domain.uuid);
      if (last !== undefined && last !== "bad" && last.name === domain.name && last.state === domain.state) continue;
      const record: VmStateRecord = { vm: domain.uuid, host, name: domain.name, state: domain.state, at: now().toISOString() };
      const value = JSON.stringify(record);
      try {
        vmStateRecord(JSON.parse(value), "the VM state to write");
      } catch (error) {
        log.warn("domain not reported: its state does not fit a VM state record", { vm: domain.uuid, error: errorMessage(error) });
        continue;
      }
      await kv.put(keys.vmState(host, domain.uuid), value);
      reported.set(domain.uuid, { name: domain.name, state: domain.state });
    }
    for (const uuid of [...reported.keys()]) {
      if (present.has(uuid)) continue;
      await kv.delete(keys.vmState(host, uuid));
      reported.delete(uuid);
    }
  }

  /** What earlier runs of this agent reported, so a restart neither rewrites it all nor leaves stale keys. */
  async #readReported(): Promise<Map<string, Reported>> {
    const { kv, keys, host } = this.options;
    const prefix = keys.vmStatesPrefix(host);
    const list = await listRecords(kv, prefix, vmStateRecord);
    const reported = new Map<string, Reported>();
    const uuidOf = (key: string) => key.slice(prefix.length);
    // A key that is no UUID is not this watch's to manage (vmState() would refuse it).
    for (const { key, record } of list.records) {
      const uuid = uuidOf(key);
      if (vmUuidPattern.test(uuid)) reported.set(uuid, record.vm === uuid && record.host === host ? { name: record.name, state: record.state } : "bad");
    }
    for (const bad of list.bad) if (vmUuidPattern.test(uuidOf(bad.source))) reported.set(uuidOf(bad.source), "bad");
    return reported;
  }

  async #event(reason: string): Promise<void> {
    const { kv, keys, host, now } = this.options;
    const event: EventRecord = { time: now().toISOString(), kind: "vm-restarted", host, reason, by: `agent@${host}` };
    await appendEvent(kv, keys, event).catch((error: unknown) => log.warn("could not record an event", { kind: event.kind, error: errorMessage(error) }));
  }
}
