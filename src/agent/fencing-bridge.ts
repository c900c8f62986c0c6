/**
 * The agent's side of ask & wait (src/lockd/README.md): lockd's fencing question becomes a
 * fencing event in etcd — written to every plane's cluster, since the host's trouble may cut some
 * of them off — and the controller's answer, found on any plane, goes back to lockd before its
 * deadline. When the question is over (answered and applied, or moot because a renewal
 * succeeded), the event is removed from every plane: an open event is how the controller knows
 * this host has storage trouble *now*.
 *
 * lockd needs no help to be safe: without an answer it fences at its deadline.
 *
 * lockd's other notices (it fenced, it found leases taken, it met a corrupt record) become events
 * in the log, where operators and the alarm relay see them: lockd itself has no etcd.
 */
import { planes, type Plane } from "../config/fitha-config.ts";
import type { Clock } from "../core/clock.ts";
import { errorMessage } from "../errors.ts";
import { logger } from "../log.ts";
import type { Keys } from "../store/keys.ts";
import type { Kv } from "../store/kv.ts";
import type { LockdEvent } from "../lockd/protocol.ts";
import { appendEvent } from "../store/events.ts";
import { fencingAnswerRecord, type EventKind, type FencingEventRecord } from "../store/records.ts";
import { decodeEntry } from "../store/typed.ts";

const log = logger("agent");

/** How often an outstanding question is looked after: answers fetched, lockd asked whether it is still open. */
export const fencingPollMs = 250;

export interface LockdQuestion {
  readonly question: number;
  readonly vms: readonly string[];
  readonly reason: string;
  readonly answerWithinMs: number;
}

/** lockd's events other than questions: what it did or found on its own. */
export type LockdNotice = Exclude<LockdEvent, { readonly event: "question" }>;

/** What the bridge needs of lockd (over its socket in production, in memory in tests). */
export interface LockdQuestions {
  /** Calls `onQuestion` for every question lockd asks and `onNotice` for its other events, until close(). */
  subscribe(onQuestion: (question: LockdQuestion) => void, onNotice: (notice: LockdNotice) => void): { close(): void };
  /** The number of lockd's open question, or null. */
  openQuestion(): Promise<number | null>;
  answer(question: number, answer: "fence" | "no-fence"): Promise<void>;
}

export interface FencingBridgeOptions {
  readonly host: string;
  readonly kv: Readonly<Record<Plane, Kv>>;
  readonly keys: Keys;
  readonly clock: Clock;
  readonly now: () => Date;
  readonly lockd: LockdQuestions;
}

export class FencingBridge {
  #outstanding: { question: LockdQuestion; answered: boolean } | undefined;
  #stopping = false;
  /** Wakes the loop idling for a question (set only while it idles). */
  #wake: (() => void) | undefined;
  readonly #subscription: { close(): void };
  readonly done: Promise<void>;

  constructor(readonly options: FencingBridgeOptions) {
    this.#subscription = options.lockd.subscribe(
      (question) => void this.#asked(question),
      (notice) => void this.#noticed(notice),
    );
    this.done = this.#run();
  }

  async stop(): Promise<void> {
    this.#stopping = true;
    this.#subscription.close();
    this.#wake?.();
    await this.done;
  }

  async #asked(question: LockdQuestion): Promise<void> {
    if (this.#outstanding?.question.question === question.question) return;
    this.#outstanding = { question, answered: false };
    this.#wake?.();
    const { host, keys, now } = this.options;
    const record: FencingEventRecord = { host, question: question.question, vms: question.vms, reason: question.reason, answerWithinMs: question.answerWithinMs, at: now().toISOString() };
    log.warn("lockd asks whether to fence: fencing event sent on every plane", { question: question.question, reason: question.reason, vms: question.vms.length });
    await this.#everyPlane("send the fencing event", (kv) => kv.put(keys.fencing(host, question.question), JSON.stringify(record)));
  }

  /** One event per notice, on the management plane (best effort: lockd logged it too). */
  async #noticed(notice: LockdNotice): Promise<void> {
    const { kind, reason } = noticeEvent(notice);
    const { host, kv, keys, now } = this.options;
    await appendEvent(kv.management, keys, { time: now().toISOString(), kind, host, reason, by: `agent@${host}` }).catch((error: unknown) =>
      log.error("could not record lockd's notice as an event", { kind, reason, error: errorMessage(error) }),
    );
  }

  /**
   * Bounded by stop(): one look every fencingPollMs while a question is outstanding; idle (no
   * timer) until lockd asks one — most hosts never have one, and the simulator runs thousands.
   */
  async #run(): Promise<void> {
    while (!this.#stopping) {
      if (this.#outstanding === undefined) {
        await new Promise<void>((wake) => (this.#wake = wake));
        this.#wake = undefined;
        continue;
      }
      await this.options.clock.sleep(fencingPollMs);
      const outstanding = this.#outstanding;
      if (outstanding === undefined || this.#stopping) continue;
      const { host, keys, lockd } = this.options;
      const number = outstanding.question.question;
      if (!outstanding.answered) {
        const answer = await this.#findAnswer(number);
        if (answer !== undefined) {
          try {
            await lockd.answer(number, answer.answer);
            outstanding.answered = true;
            log.warn("fencing answer passed to lockd", { question: number, answer: answer.answer, reason: answer.reason });
          } catch (error) {
            log.error("could not pass the fencing answer to lockd", { question: number, error: errorMessage(error) });
          }
        }
      }
      const open = await lockd.openQuestion().catch(() => number);
      if (open === number) continue;
      // Over: answered and carried out, or moot. The event must not linger as "trouble now".
      this.#outstanding = undefined;
      await this.#everyPlane("remove the fencing event", async (kv) => {
        await kv.delete(keys.fencing(host, number));
        await kv.delete(keys.fencingAnswer(host, number));
      });
    }
  }

  /** The controller's answer from whichever plane has it. */
  async #findAnswer(question: number): Promise<{ answer: "fence" | "no-fence"; reason: string } | undefined> {
    const { host, keys, kv } = this.options;
    for (const plane of planes) {
      const entry = await kv[plane].get(keys.fencingAnswer(host, question)).catch(() => undefined);
      if (entry === undefined) continue;
      const decoded = decodeEntry(entry, fencingAnswerRecord);
      if ("record" in decoded && decoded.record.question === question) return decoded.record;
    }
    return undefined;
  }

  /** `write` on every plane's cluster; each may fail alone (that plane may be what is cut). */
  async #everyPlane(what: string, write: (kv: Kv) => Promise<unknown>): Promise<void> {
    // Planes sharing one cluster share one client only if the caller passed the same Kv; writing twice is harmless.
    await Promise.all(
      planes.map((plane) => write(this.options.kv[plane]).catch((error: unknown) => log.warn(`could not ${what} on the ${plane} plane`, { error: errorMessage(error) }))),
    );
  }
}

function noticeEvent(notice: LockdNotice): { kind: EventKind; reason: string } {
  const vmList = (vms: readonly string[]) => (vms.length === 0 ? "none" : vms.join(", "));
  switch (notice.event) {
    case "fenced":
      return { kind: "lockd-fenced", reason: `lockd stopped the VMs under its leases: ${notice.reason}; stopped: ${vmList(notice.vms)}; would not stop: ${vmList(notice.failed)}` };
    case "leases-taken":
      return { kind: "leases-taken", reason: `leases held by another host found at re-validation: ${vmList(notice.vms)}; stopped: ${vmList(notice.stopped)}; would not stop: ${vmList(notice.failed)}` };
    case "corrupt":
      return { kind: "lease-corrupt", reason: `lockd met a damaged lease record (${notice.op}): ${notice.message}` };
  }
}
