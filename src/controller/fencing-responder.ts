/**
 * The leader's answers to fencing events (src/agent/fencing-bridge.ts): it follows P/fencing/ on
 * every plane's cluster — one question arriving on three planes is one event
 * (src/core/fencing-policy.ts) — and answers each with the policy: `no-fence` only when every
 * other registered host has an open event of its own (a global storage fault), else `fence`.
 *
 * In a global fault the hosts' lockds ask within a few seconds of each other, so an answer given
 * the instant the first question arrives would always be `fence`. The leader waits for the others
 * up to half of the question's answer window (lockd fences at its deadline regardless), and
 * answers at once when every other host has asked. The answer goes to every plane.
 */
import { planes, type Plane } from "../config/fitha-config.ts";
import type { Clock } from "../core/clock.ts";
import { answerFencing, collapseDuplicates, type FencingEvent } from "../core/fencing-policy.ts";
import { errorMessage } from "../errors.ts";
import { logger } from "../log.ts";
import { appendEvent } from "../store/events.ts";
import type { Keys } from "../store/keys.ts";
import type { Kv } from "../store/kv.ts";
import { fencingEventRecord, type FencingAnswerRecord, type RecoveryRequest } from "../store/records.ts";
import { decodeEntry } from "../store/typed.ts";
import { PrefixWatcher } from "../store/watcher.ts";
import type { ControllerMetrics } from "./controller-metrics.ts";

const log = logger("fencing");

export interface FencingResponderEnvironment {
  readonly kv: Readonly<Record<Plane, Kv>>;
  readonly keys: Keys;
  readonly clock: Clock;
  readonly now: () => Date;
  readonly name: string;
  readonly leading: () => boolean;
  readonly registeredHosts: () => ReadonlySet<string>;
  readonly changed: () => void;
  /** Where answers are counted; none: not counted. */
  readonly metrics?: ControllerMetrics;
}

interface Seen {
  readonly event: FencingEvent;
  readonly answerWithinMs: number;
  /** The planes whose cluster holds it now: open while any does. */
  readonly planes: Set<Plane>;
}

export class FencingResponder {
  /** Per host#question. */
  readonly #seen = new Map<string, Seen>();
  readonly #answered = new Set<string>();
  readonly #watchers: PrefixWatcher[] = [];
  /**
   * A global storage fault is under way (a no-fence was given and questions are still open): one
   * storage-global-fault event per episode, not one per host's question.
   */
  #globalFault = false;

  constructor(readonly env: FencingResponderEnvironment) {
    for (const plane of planes) this.#follow(plane);
  }

  async stop(): Promise<void> {
    await Promise.all(this.#watchers.map((w) => w.stop()));
  }

  /** Hosts with an open fencing event: storage trouble now, so no place to start VMs. */
  openHosts(): Set<string> {
    return new Set([...this.#seen.values()].map((s) => s.event.host));
  }

  /** Answers what is due; returns in how many ms the next unanswered event falls due, if any. */
  async step(): Promise<number | undefined> {
    const nowMs = this.env.clock.nowMs();
    const open = collapseDuplicates([...this.#seen.values()].map((s) => s.event));
    if (open.length === 0) this.#globalFault = false;
    const openHosts = new Set(open.map((e) => e.host));
    const hosts = [...new Set([...this.env.registeredHosts(), ...openHosts])];
    let nextMs: number | undefined;
    for (const event of open) {
      const key = `${event.host}#${event.question}`;
      if (this.#answered.has(key)) continue;
      const waitMs = Math.floor(this.#seen.get(key)!.answerWithinMs / 2);
      const everyoneAsked = hosts.every((host) => openHosts.has(host));
      if (!everyoneAsked && nowMs - event.receivedMs < waitMs) {
        const dueMs = event.receivedMs + waitMs - nowMs;
        nextMs = nextMs === undefined ? dueMs : Math.min(nextMs, dueMs);
        continue;
      }
      if (!this.env.leading()) return undefined;
      const decision = answerFencing(event, hosts, openHosts);
      const record: FencingAnswerRecord = { host: event.host, question: event.question, answer: decision.answer, reason: decision.reason, at: this.env.now().toISOString(), by: `controller@${this.env.name}` };
      const written = await Promise.all(planes.map((plane) => this.env.kv[plane].put(this.env.keys.fencingAnswer(event.host, event.question), JSON.stringify(record)).then(() => true, () => false)));
      if (!written.some(Boolean)) continue; // retried at the next step
      this.#answered.add(key);
      this.env.metrics?.fencingAnswered(decision.answer);
      log.warn("fencing event answered", { host: event.host, question: event.question, answer: decision.answer, reason: decision.reason });
      // Fenced for lost storage, the host's VMs stop while its planes stay up: nothing else would
      // recover them. One request per episode (create-only); the recovery executor closes it.
      if (decision.answer === "fence") {
        const request: RecoveryRequest = { host: event.host, requestedAt: record.at, reason: `lease storage lost (fencing question ${event.question} answered fence)`, planes: { management: "up", storage: "up", service: "up" }, cause: "storage" };
        await this.env.kv.management.createIfAbsent(this.env.keys.recoveryRequest(event.host), JSON.stringify(request)).catch((error: unknown) => log.error("could not request the recovery of a fenced host", { host: event.host, error: errorMessage(error) }));
      }
      const record$ = (kind: "fencing-answered" | "storage-global-fault", host: string | null, reason: string) =>
        appendEvent(this.env.kv.management, this.env.keys, { time: record.at, kind, host, reason, by: record.by }).catch((error: unknown) => log.warn("could not record an event", { error: errorMessage(error) }));
      if (decision.answer === "no-fence" && !this.#globalFault) {
        this.#globalFault = true;
        await record$("storage-global-fault", null, `every registered host (${hosts.length}) reports trouble with the shared lease storage: no host is fenced, the VMs stay; check the storage`);
      }
      await record$("fencing-answered", event.host, `question ${event.question}: ${decision.answer}: ${decision.reason}`);
    }
    return nextMs;
  }

  #follow(plane: Plane): void {
    const { kv, keys, clock } = this.env;
    const apply = (key: string, value: string | undefined, modRevision: bigint) => {
      const name = key.slice(keys.fencingPrefix.length);
      const existing = this.#seen.get(name.replace("/", "#"));
      if (value === undefined) {
        existing?.planes.delete(plane);
        if (existing !== undefined && existing.planes.size === 0) {
          this.#seen.delete(name.replace("/", "#"));
          this.#answered.delete(name.replace("/", "#"));
        }
        return;
      }
      const decoded = decodeEntry({ key, value, modRevision }, fencingEventRecord);
      if ("bad" in decoded) {
        log.error("bad fencing event ignored", { reason: decoded.bad.message });
        return;
      }
      const { host, question, answerWithinMs } = decoded.record;
      const id = `${host}#${question}`;
      if (existing !== undefined) existing.planes.add(plane);
      else this.#seen.set(id, { event: { host, question, receivedMs: clock.nowMs() }, answerWithinMs, planes: new Set([plane]) });
    };
    this.#watchers.push(
      new PrefixWatcher(
        kv[plane],
        keys.fencingPrefix,
        {
          onSnapshot: (entries) => {
            for (const seen of this.#seen.values()) seen.planes.delete(plane);
            for (const entry of entries) apply(entry.key, entry.value, entry.modRevision);
            for (const [id, seen] of [...this.#seen]) if (seen.planes.size === 0) this.#seen.delete(id);
            this.env.changed();
          },
          onRevision: (_revision, changes) => {
            for (const change of changes) apply(change.key, change.type === "put" ? change.value : undefined, change.modRevision);
            this.env.changed();
          },
          onFailed: (error) => log.error("stopped following fencing events", { plane, error: errorMessage(error) }),
        },
        clock,
      ),
    );
  }
}
