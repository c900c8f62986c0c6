/**
 * lockd's fencing questions (src/lockd/protocol.ts): a subscription that receives `question`
 * events — re-established after a dropped connection, with a bounded backoff, since lockd may
 * restart — and plain requests for its status and for answers. Over lockd's unix socket in the
 * agent; in process (a LockDaemon in memory, on virtual time) in the simulator.
 */
import type { Clock } from "../core/clock.ts";
import { errorMessage } from "../errors.ts";
import { logger } from "../log.ts";
import { socketTransport, type LockdTransport } from "../lockd/client.ts";
import type { LockdEvent } from "../lockd/protocol.ts";
import type { LockdNotice, LockdQuestion, LockdQuestions } from "./fencing-bridge.ts";
import type { HeldLeases } from "./self-fence.ts";

const log = logger("agent");

/** Waits between attempts to (re)subscribe: from 200 ms, doubling, at most 5 s. */
const firstRetryMs = 200;
const maxRetryMs = 5_000;
/** Each request's deadline: lockd answers status and answers from memory, at once. */
const requestTimeoutMs = 5_000;
/** A line longer than this from lockd is not one of its events: the connection is dropped. */
const maxLineBytes = 1024 * 1024;

/** One open subscription: `ended` resolves when the connection drops (lockd gone or restarted). */
export interface LockdConnection {
  readonly ended: Promise<void>;
  end(): void;
}

/** Opens a subscription whose events go to `onEvent`; rejects when lockd cannot be reached. */
export type LockdSubscribe = (onEvent: (event: LockdEvent) => void) => Promise<LockdConnection>;

export class LockdQuestionsClient implements LockdQuestions, HeldLeases {
  constructor(
    readonly where: string,
    readonly transport: LockdTransport,
    readonly connect: LockdSubscribe,
    readonly clock: Clock,
  ) {}

  static overSocket(socketPath: string, clock: Clock): LockdQuestionsClient {
    return new LockdQuestionsClient(socketPath, socketTransport(socketPath, requestTimeoutMs), socketSubscribe(socketPath), clock);
  }

  subscribe(onQuestion: (question: LockdQuestion) => void, onNotice: (notice: LockdNotice) => void): { close(): void } {
    let closed = false;
    let current: LockdConnection | undefined;
    const onEvent = (event: LockdEvent) => {
      if (event.event === "question") onQuestion({ question: event.question, vms: event.vms, reason: event.reason, answerWithinMs: event.answer_within_ms });
      else onNotice(event);
    };
    const loop = async () => {
      let retryMs = firstRetryMs;
      while (!closed) {
        try {
          current = await this.connect(onEvent);
          retryMs = firstRetryMs;
          if (closed) current.end();
          await current.ended;
        } catch (error) {
          log.debug("cannot subscribe to lockd's questions yet", { lockd: this.where, error: errorMessage(error) });
        }
        current = undefined;
        if (closed) return;
        await this.clock.sleep(retryMs);
        retryMs = Math.min(maxRetryMs, retryMs * 2);
      }
    };
    void loop();
    return {
      close: () => {
        closed = true;
        current?.end();
      },
    };
  }

  async openQuestion(): Promise<number | null> {
    const question = (await this.#status()).question;
    return question === null ? null : question.id;
  }

  async heldLeases(): Promise<Array<{ vm: string; slot: number }>> {
    return (await this.#status()).leases.map((lease) => ({ vm: lease.vm, slot: lease.slot }));
  }

  async #status(): Promise<{ question: { id: number } | null; leases: Array<{ vm: string; slot: number }> }> {
    const reply = await this.transport({ op: "status" });
    if (!reply.ok) throw new Error(reply.message);
    return reply["status"] as { question: { id: number } | null; leases: Array<{ vm: string; slot: number }> };
  }

  async answer(question: number, answer: "fence" | "no-fence"): Promise<void> {
    const reply = await this.transport({ op: "answer", question, answer });
    if (!reply.ok) throw new Error(reply.message);
  }
}

/** Subscriptions over lockd's unix socket: one line of JSON per event. */
function socketSubscribe(socketPath: string): LockdSubscribe {
  return async (onEvent) => {
    const ended = Promise.withResolvers<void>();
    let buffered = "";
    const socket = await Bun.connect({
      unix: socketPath,
      socket: {
        data(connection, chunk) {
          buffered += chunk.toString();
          if (buffered.length > maxLineBytes) return void connection.end();
          for (let newline = buffered.indexOf("\n"); newline >= 0; newline = buffered.indexOf("\n")) {
            const line = buffered.slice(0, newline);
            buffered = buffered.slice(newline + 1);
            let message: LockdEvent | { id: number };
            try {
              message = JSON.parse(line) as LockdEvent | { id: number };
            } catch {
              continue;
            }
            if ("event" in message) onEvent(message);
          }
        },
        close: () => ended.resolve(),
        error: () => ended.resolve(),
      },
    });
    socket.write(`${JSON.stringify({ id: 1, op: "subscribe" })}\n`);
    return { ended: ended.promise, end: () => socket.end() };
  };
}
