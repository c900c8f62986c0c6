/** Talking to a lockd: over its unix socket (one request, one reply, with a deadline), or in process. */
import { ExitCode, FithaError } from "../errors.ts";
import type { Answer, Reply, Request } from "./protocol.ts";

export const defaultSocketPath = "/run/fitha/lockd.sock";

/** A request to lockd, without the id the wire protocol adds. */
export type LockdRequest =
  | { op: "acquire" | "release"; vm: string; slot: number }
  | { op: "inquire"; slot: number }
  | { op: "status" }
  | { op: "answer"; question: number; answer: Answer };

/**
 * No answer from lockd at all (not running, not answering in time, broken reply), as opposed to
 * lockd refusing a request: callers that gate a VM start say that refusing was the safe side.
 */
export class LockdUnavailableError extends FithaError {
  constructor(message: string) {
    super(message);
    this.name = "LockdUnavailableError";
  }
}

export async function requestLockd(socketPath: string, body: LockdRequest, timeoutMs: number): Promise<Reply> {
  const id = 1;
  return await new Promise<Reply>((resolve, reject) => {
    let buffered = "";
    let settled = false;
    const finish = (outcome: () => void) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      outcome();
    };
    const timer = setTimeout(() => finish(() => reject(new LockdUnavailableError(`lockd at ${socketPath} did not answer within ${timeoutMs} ms`))), timeoutMs);
    Bun.connect({
      unix: socketPath,
      socket: {
        open(socket) {
          socket.write(`${JSON.stringify({ id, ...body })}\n`);
        },
        data(socket, chunk) {
          buffered += chunk.toString();
          const newline = buffered.indexOf("\n");
          if (newline < 0) return;
          finish(() => {
            try {
              resolve(JSON.parse(buffered.slice(0, newline)) as Reply);
            } catch {
              reject(new LockdUnavailableError(`lockd at ${socketPath} sent a malformed reply`));
            }
          });
          // After settling: ending the connection runs close() at once.
          socket.end();
        },
        close() {
          finish(() => reject(new LockdUnavailableError(`lockd at ${socketPath} closed the connection without an answer`)));
        },
        error(_socket, error) {
          finish(() => reject(new LockdUnavailableError(`lockd at ${socketPath}: ${error.message}`)));
        },
      },
    }).catch((error: Error & { code?: string }) =>
      finish(() => reject(new LockdUnavailableError(`cannot reach lockd at ${socketPath} (${error.code === "ENOENT" || error.code === "ECONNREFUSED" ? "is it running?" : error.message})`))),
    );
  });
}

/**
 * How a client reaches a lockd: one request, one reply. Over its unix socket in the daemons; in
 * process (a LockDaemon in memory, on virtual time) in tests and the simulator.
 */
export type LockdTransport = (body: LockdRequest) => Promise<Reply>;

export function socketTransport(socketPath: string, timeoutMs: number): LockdTransport {
  return (body) => requestLockd(socketPath, body, timeoutMs);
}

/** A LockDaemon in this process: its protocol entry point, with the ids the socket server would add. */
export function inProcessTransport(daemon: { handle(request: Request): Promise<Reply> }): LockdTransport {
  let lastId = 0;
  return (body) => daemon.handle({ id: ++lastId, ...body });
}

/** lockd's answer to a request it granted; a refusal is thrown as a FithaError (exit 3 when held elsewhere). */
export async function askLockd(socketPath: string, body: LockdRequest, timeoutMs: number): Promise<Extract<Reply, { ok: true }>> {
  const reply = await requestLockd(socketPath, body, timeoutMs);
  if (reply.ok) return reply;
  throw new FithaError(reply.message, reply.error === "held" ? ExitCode.heldElsewhere : reply.error === "bad-request" ? ExitCode.usage : ExitCode.failed);
}

export interface AcquiredLease {
  /** The lease version this host holds. */
  readonly lver: number;
  /** Whether this host already held it (a repeated acquire is idempotent). */
  readonly already: boolean;
}

export async function acquireVmLease(socketPath: string, vm: string, slot: number, timeoutMs: number): Promise<AcquiredLease> {
  const reply = await askLockd(socketPath, { op: "acquire", vm, slot }, timeoutMs);
  return { lver: reply["lver"] as number, already: reply["already"] === true };
}

/** Whether this host held the lease and released it (false: it was not this host's to release). */
export async function releaseVmLease(socketPath: string, vm: string, slot: number, timeoutMs: number): Promise<boolean> {
  const reply = await askLockd(socketPath, { op: "release", vm, slot }, timeoutMs);
  return reply["released"] === true;
}
