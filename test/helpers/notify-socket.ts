/**
 * A stand-in for systemd's notify socket: a real AF_UNIX datagram socket (bound by python3, as
 * Bun has none) at a path or an abstract address ("@name"), recording every datagram a daemon
 * sends. `await using` stops the receiver and removes a path socket.
 */
import { rm } from "node:fs/promises";
import { readJsonLines } from "./json-lines.ts";

const receiver = `
import json, socket, sys
address = sys.argv[1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind("\\0" + address[1:] if address.startswith("@") else address)
print(json.dumps("bound"), flush=True)
while True:
    print(json.dumps(s.recv(65536).decode()), flush=True)
`;
const bindTimeoutMs = 10_000;

export interface NotifySocket extends AsyncDisposable {
  /** What goes into NOTIFY_SOCKET. */
  readonly address: string;
  /** Every datagram received so far, in order. */
  readonly messages: readonly string[];
  /** Waits (bounded) for a datagram `match` accepts; returns its index in `messages`. */
  waitFor(what: string, match: (message: string) => boolean, timeoutMs?: number): Promise<number>;
}

export async function notifySocket(address: string): Promise<NotifySocket> {
  const child = Bun.spawn(["setpriv", "--pdeathsig", "KILL", "--", "python3", "-c", receiver, address], { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  const messages: string[] = [];
  let bound = false;
  const reading = readJsonLines<string>(child.stdout, (message) => {
    if (!bound && message === "bound") bound = true;
    else messages.push(message);
  });
  const stop = async () => {
    child.kill("SIGKILL");
    await child.exited;
    await reading.catch(() => undefined);
    if (!address.startsWith("@")) await rm(address, { force: true });
  };
  const waitFor = async (what: string, match: (message: string) => boolean, timeoutMs = 15_000) => {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const index = messages.findIndex(match);
      if (index >= 0) return index;
      if (Date.now() > deadline) throw new Error(`no ${what} on ${address} within ${timeoutMs} ms; received: ${JSON.stringify(messages)}`);
      await Bun.sleep(20);
    }
  };
  try {
    const deadline = Date.now() + bindTimeoutMs;
    while (!bound) {
      if (child.exitCode !== null) throw new Error(`the notify receiver exited ${child.exitCode}: ${await new Response(child.stderr).text()}`);
      if (Date.now() > deadline) throw new Error(`the notify receiver did not bind ${address} within ${bindTimeoutMs} ms`);
      await Bun.sleep(20);
    }
  } catch (error) {
    await stop();
    throw error;
  }
  return { address, messages, waitFor, [Symbol.asyncDispose]: stop };
}
