/**
 * lockd's fencing questions over its unix socket (src/lockd/protocol.ts): a subscription that
 * receives `question` events — re-established after a dropped connection, with a bounded
 * backoff, since lockd may restart — and plain requests for its status and for answers.
 */
import type { Clock } from "../core/clock.ts";
import { errorMessage } from "../errors.ts";
import { logger } from "../log.ts";
import { requestLockd } from "../lockd/client.ts";
import type { LockdEvent } from "../lockd/protocol.ts";
import type { LockdQuestion, LockdQuestions } from "./fencing-bridge.ts";
import type { HeldLeases } from "./self-fence.ts";

const log = logger("agent");

/** Waits between attempts to (re)subscribe: from 200 ms, doubling, at most 5 s. */
const firstRetryMs = 200;
const maxRetryMs = 5_000;
/** Each request's deadline: lockd answers status and answers from memory, at once. */
const requestTimeoutMs = 5_000;
/** A line longer than this from lockd is not one of its events: the connection is dropped. */
const maxLineBytes = 1024 * 1024;

export class LockdSocketQuestions implements LockdQuestions, HeldLeases {
  constructor(
    readonly socketPath: string,
    readonly clock: Clock,
  ) {}

  subscribe(onQuestion: (question: LockdQuestion) => void): { close(): void } {
    let closed = false;
    let current: { end(): void } | undefined;
    const loop = async () => {
      let retryMs = firstRetryMs;
      while (!closed) {
        const ended = Promise.withResolvers<void>();
        try {
          let buffered = "";
          const socket = await Bun.connect({
            unix: this.socketPath,
            socket: {
              data(_socket, chunk) {
                buffered += chunk.toString();
                if (buffered.length > maxLineBytes) return void _socket.end();
                for (let newline = buffered.indexOf("\n"); newline >= 0; newline = buffered.indexOf("\n")) {
                  const line = buffered.slice(0, newline);
                  buffered = buffered.slice(newline + 1);
                  let message: LockdEvent | { id: number };
                  try {
                    message = JSON.parse(line) as LockdEvent | { id: number };
                  } catch {
                    continue;
                  }
                  if ("event" in message && message.event === "question") {
                    onQuestion({ question: message.question, vms: message.vms, reason: message.reason, answerWithinMs: message.answer_within_ms });
                  }
                }
              },
              close: () => ended.resolve(),
              error: () => ended.resolve(),
            },
          });
          current = socket;
          socket.write(`${JSON.stringify({ id: 1, op: "subscribe" })}\n`);
          retryMs = firstRetryMs;
          await ended.promise;
        } catch (error) {
          log.debug("cannot subscribe to lockd's questions yet", { socket: this.socketPath, error: errorMessage(error) });
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
    const reply = await requestLockd(this.socketPath, { op: "status" }, requestTimeoutMs);
    if (!reply.ok) throw new Error(reply.message);
    return reply["status"] as { question: { id: number } | null; leases: Array<{ vm: string; slot: number }> };
  }

  async answer(question: number, answer: "fence" | "no-fence"): Promise<void> {
    const reply = await requestLockd(this.socketPath, { op: "answer", question, answer }, requestTimeoutMs);
    if (!reply.ok) throw new Error(reply.message);
  }
}
