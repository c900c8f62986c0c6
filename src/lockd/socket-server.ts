/**
 * lockd's unix socket: JSON lines (src/lockd/protocol.ts). Access control is the file system's:
 * the socket is created mode 0600 in a directory of mode 0700 (root only); a site that wants a
 * group to use it sets the directory's group and mode itself.
 */
import { chmod, mkdir, rm } from "node:fs/promises";
import { dirname } from "node:path";
import type { Socket, UnixSocketListener } from "bun";
import { maxConnections, maxRequestBytes, parseRequest, type Reply, type Request } from "./protocol.ts";

interface Connection {
  buffered: string;
  /** Replies are written in request order even when requests finish out of order. */
  tail: Promise<void>;
}

export interface SocketServer {
  close(): Promise<void>;
}

export async function serveSocket(path: string, handle: (request: Request) => Promise<Reply>): Promise<SocketServer> {
  await mkdir(dirname(path), { recursive: true, mode: 0o700 });
  // A socket file left by a crashed lockd would make listen fail; the caller has made sure no
  // other lockd runs for this state (see LockDaemon.start).
  await rm(path, { force: true });
  let open = 0;
  const listener: UnixSocketListener<Connection> = Bun.listen<Connection>({
    unix: path,
    socket: {
      open(socket) {
        if (++open > maxConnections) {
          socket.end(line({ id: null, ok: false, error: "io", message: `busy: more than ${maxConnections} connections` }));
          return;
        }
        socket.data = { buffered: "", tail: Promise.resolve() };
      },
      data(socket, chunk) {
        const connection = socket.data;
        if (connection === undefined) return;
        connection.buffered += chunk.toString();
        for (;;) {
          const newline = connection.buffered.indexOf("\n");
          if (newline < 0) break;
          const text = connection.buffered.slice(0, newline);
          connection.buffered = connection.buffered.slice(newline + 1);
          if (text.trim() === "") continue;
          respond(socket, connection, text.length > maxRequestBytes ? tooLong() : reply(text, handle));
        }
        if (connection.buffered.length > maxRequestBytes) {
          respond(socket, connection, tooLong());
          connection.tail = connection.tail.then(() => void socket.end());
          connection.buffered = "";
        }
      },
      close() {
        open--;
      },
      error() {
        // A broken client connection affects that client only.
      },
    },
  });
  await chmod(path, 0o600);
  return {
    async close() {
      listener.stop(true);
      await rm(path, { force: true });
    },
  };
}

function reply(text: string, handle: (request: Request) => Promise<Reply>): Promise<Reply> {
  const request = parseRequest(text);
  if ("malformed" in request) return Promise.resolve({ id: request.id, ok: false, error: "bad-request", message: request.malformed });
  return handle(request);
}

function tooLong(): Promise<Reply> {
  return Promise.resolve({ id: null, ok: false, error: "bad-request", message: `request longer than ${maxRequestBytes} bytes` });
}

function respond(socket: Socket<Connection>, connection: Connection, answer: Promise<Reply>): void {
  connection.tail = connection.tail.then(async () => {
    const text = line(await answer);
    try {
      socket.write(text);
    } catch {
      // A client that went away cannot be answered; that is its loss, not lockd's.
    }
  });
}

function line(answer: Reply): string {
  return `${JSON.stringify(answer)}\n`;
}
