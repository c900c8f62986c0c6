/** Talking to a running lockd over its unix socket: one request, one reply, with a deadline. */
import { FithaError } from "../errors.ts";
import type { Reply } from "./protocol.ts";

export const defaultSocketPath = "/run/fitha/lockd.sock";

type RequestBody = { op: "acquire" | "release"; vm: string; slot: number } | { op: "inquire"; slot: number } | { op: "status" };

export async function requestLockd(socketPath: string, body: RequestBody, timeoutMs: number): Promise<Reply> {
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
    const timer = setTimeout(() => finish(() => reject(new FithaError(`lockd at ${socketPath} did not answer within ${timeoutMs} ms`))), timeoutMs);
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
              reject(new FithaError(`lockd at ${socketPath} sent a malformed reply`));
            }
          });
          // After settling: ending the connection runs close() at once.
          socket.end();
        },
        close() {
          finish(() => reject(new FithaError(`lockd at ${socketPath} closed the connection without an answer`)));
        },
        error(_socket, error) {
          finish(() => reject(new FithaError(`lockd at ${socketPath}: ${error.message}`)));
        },
      },
    }).catch((error: Error & { code?: string }) =>
      finish(() => reject(new FithaError(`cannot reach lockd at ${socketPath} (${error.code === "ENOENT" || error.code === "ECONNREFUSED" ? "is it running?" : error.message})`))),
    );
  });
}
