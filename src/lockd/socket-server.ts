/**
 * lockd's unix socket: JSON lines (src/lockd/protocol.ts). Two locks on the door: the file
 * system (socket mode 0600 in a 0700 directory, or 0660/0750 with the configured group), and the
 * kernel's record of who connected (SO_PEERCRED), checked on every connection — so a socket
 * whose mode someone loosened still refuses strangers.
 */
import { readFileSync } from "node:fs";
import { chmod, chown, mkdir, rm } from "node:fs/promises";
import { dirname } from "node:path";
import type { Socket, UnixSocketListener } from "bun";
import { peerCredentials, type PeerCredentials } from "../../ffi/libc.ts";
import { maxConnections, maxRequestBytes, parseRequest, type LockdEvent, type Reply, type Request } from "./protocol.ts";

/** Output a client has not read yet, at most; a client further behind is disconnected. */
const maxUnsentBytes = 256 * 1024;

interface Connection {
  buffered: string;
  /** Replies are written in request order even when requests finish out of order. */
  tail: Promise<void>;
  /** What the kernel did not take yet (a slow reader); flushed on drain. */
  unsent: Buffer;
  /** Sends an event line on this connection (for subscriptions). */
  readonly push: (event: LockdEvent) => void;
}

export interface SocketServer {
  close(): Promise<void>;
}

export interface SocketHandler {
  /** `push` sends events on the request's connection. */
  handle(request: Request, push: (event: LockdEvent) => void): Promise<Reply>;
  /** The connection whose `push` this is closed. */
  disconnected(push: (event: LockdEvent) => void): void;
}

export interface SocketAccess {
  /** Members of this group (primary or supplementary) may connect too; otherwise root and lockd's own user only. */
  readonly groupId?: number;
}

/** Why a peer may not use the socket, or undefined if it may. */
export function refusal(peer: PeerCredentials, access: SocketAccess, ownUid: number): string | undefined {
  if (peer.uid === 0 || peer.uid === ownUid) return undefined;
  if (access.groupId !== undefined && (peer.gid === access.groupId || supplementaryGroups(peer.pid).includes(access.groupId))) return undefined;
  return `uid ${peer.uid} (pid ${peer.pid}) may not use lockd's socket: only root${access.groupId === undefined ? "" : ` and group ${access.groupId}`}`;
}

/** The peer's supplementary groups (/proc/PID/status "Groups:"); none if it is gone already. */
function supplementaryGroups(pid: number): number[] {
  try {
    const line = readFileSync(`/proc/${pid}/status`, "utf8").split("\n").find((l) => l.startsWith("Groups:"));
    return line === undefined ? [] : line.slice("Groups:".length).trim().split(/\s+/).filter((g) => g !== "").map(Number);
  } catch {
    return [];
  }
}

export async function serveSocket(path: string, handler: SocketHandler, access: SocketAccess = {}): Promise<SocketServer> {
  const ownUid = process.geteuid?.() ?? 0;
  await mkdir(dirname(path), { recursive: true, mode: access.groupId === undefined ? 0o700 : 0o750 });
  // A socket file left by a crashed lockd would make listen fail; the caller has made sure no
  // other lockd runs for this state (see LockDaemon.start).
  await rm(path, { force: true });
  let open = 0;
  // Until its mode and group are set, the socket answers nobody: a client served before then
  // could see (and an operator could change) modes that lockd is about to overwrite.
  let ready = false;
  const listener: UnixSocketListener<Connection> = Bun.listen<Connection>({
    unix: path,
    socket: {
      open(socket) {
        if (!ready) {
          open++;
          socket.end();
          return;
        }
        if (++open > maxConnections) {
          refuse(socket, { id: null, ok: false, error: "io", message: `busy: more than ${maxConnections} connections` });
          return;
        }
        let refused: string | undefined;
        try {
          refused = refusal(peerCredentials(socketFd(socket)), access, ownUid);
        } catch (error) {
          refused = `cannot tell who connected: ${error instanceof Error ? error.message : String(error)}`;
        }
        if (refused !== undefined) {
          refuse(socket, { id: null, ok: false, error: "forbidden", message: refused });
          return;
        }
        socket.data = { buffered: "", tail: Promise.resolve(), unsent: Buffer.alloc(0), push: (event) => send(socket, `${JSON.stringify(event)}\n`) };
      },
      drain(socket) {
        const connection = socket.data;
        if (connection === undefined || connection.unsent.length === 0) return;
        const bytes = connection.unsent;
        connection.unsent = Buffer.alloc(0);
        send(socket, bytes);
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
          respond(socket, connection, text.length > maxRequestBytes ? tooLong() : reply(text, (request) => handler.handle(request, connection.push)));
        }
        if (connection.buffered.length > maxRequestBytes) {
          respond(socket, connection, tooLong());
          connection.tail = connection.tail.then(() => void socket.end());
          connection.buffered = "";
        }
      },
      close(socket) {
        open--;
        if (socket.data !== undefined) handler.disconnected(socket.data.push);
      },
      error() {
        // A broken client connection affects that client only.
      },
    },
  });
  if (access.groupId === undefined) {
    await chmod(path, 0o600);
  } else {
    await chown(path, ownUid, access.groupId);
    await chmod(path, 0o660);
    await chown(dirname(path), ownUid, access.groupId);
    await chmod(dirname(path), 0o750);
  }
  ready = true;
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

/** How long a refused client gets to read why before its connection is closed. */
const refusalLingerMs = 1_000;

/**
 * Tells a client why it is not served, then closes. Not at once: a connection closed while the
 * client is still connecting reaches it as a bare connect failure, without the reason.
 */
function refuse(socket: Socket<Connection>, reply: Reply): void {
  try {
    socket.write(line(reply));
  } catch {
    return;
  }
  setTimeout(() => socket.end(), refusalLingerMs).unref();
}

function respond(socket: Socket<Connection>, connection: Connection, answer: Promise<Reply>): void {
  connection.tail = connection.tail.then(async () => send(socket, line(await answer)));
}

/** Writes `text`, keeping what the kernel does not take for the drain event, within a bound. */
function send(socket: Socket<Connection>, text: string | Buffer): void {
  const connection = socket.data;
  if (connection === undefined) return;
  const bytes = typeof text === "string" ? Buffer.from(text) : text;
  if (connection.unsent.length > 0) {
    connection.unsent = Buffer.concat([connection.unsent, bytes]);
  } else {
    let written: number;
    try {
      written = socket.write(bytes);
    } catch {
      // A client that went away cannot be answered; that is its loss, not lockd's.
      return;
    }
    if (written < bytes.length) connection.unsent = bytes.subarray(Math.max(0, written));
  }
  if (connection.unsent.length > maxUnsentBytes) {
    connection.unsent = Buffer.alloc(0);
    socket.end();
  }
}

function line(answer: Reply): string {
  return `${JSON.stringify(answer)}\n`;
}

/** The connection's file descriptor: Bun has it (`fd`) but does not declare it in its types. */
function socketFd(socket: Socket<Connection>): number {
  const fd = (socket as unknown as { readonly fd: unknown }).fd;
  if (!(typeof fd === "number" && Number.isInteger(fd) && fd >= 0)) throw new Error(`no file descriptor on the connection (${String(fd)})`);
  return fd;
}
