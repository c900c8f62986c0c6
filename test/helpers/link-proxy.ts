/**
 * A TCP proxy on loopback in front of a server (etcd), to cut one client's network link while
 * the others keep theirs: `cut("reset")` closes its connections and refuses new ones, as a
 * stopped server would; `cut("drop")` keeps them open and forwards nothing, as a pulled cable
 * does (only deadlines and keepalives notice). `restore()` lets new connections through again;
 * connections that lived through a drop are closed then, since bytes were lost in the middle.
 */
import { createServer, connect, type Server, type Socket } from "node:net";

export interface LinkProxy extends AsyncDisposable {
  /** "http://127.0.0.1:PORT", for a client's endpoints. */
  readonly endpoint: string;
  cut(mode: "reset" | "drop"): void;
  restore(): void;
  close(): Promise<void>;
}

/** Proxies to `target` ("http://host:port"). */
export async function startLinkProxy(target: string): Promise<LinkProxy> {
  const { hostname, port } = new URL(target);
  const pairs = new Set<[Socket, Socket]>();
  let mode: "open" | "reset" | "drop" = "open";

  const server: Server = createServer((client) => {
    if (mode === "reset") {
      client.destroy();
      return;
    }
    const upstream = connect(Number(port), hostname);
    const pair: [Socket, Socket] = [client, upstream];
    pairs.add(pair);
    const end = () => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    for (const socket of pair) {
      socket.on("error", end);
      socket.on("close", end);
    }
    // Dropping is not forwarding: data is read and thrown away, so nothing is acknowledged
    // at the application level and no RST tells the client.
    client.on("data", (data) => mode === "open" && upstream.write(data));
    upstream.on("data", (data) => mode === "open" && client.write(data));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address();
  if (address === null || typeof address === "string") throw new Error("link proxy: no port");

  const destroyAll = () => {
    for (const [client, upstream] of [...pairs]) {
      client.destroy();
      upstream.destroy();
    }
    pairs.clear();
  };
  const close = async () => {
    destroyAll();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  };
  return {
    endpoint: `http://127.0.0.1:${address.port}`,
    cut(how) {
      mode = how;
      if (how === "reset") destroyAll();
    },
    restore() {
      if (mode === "drop") destroyAll();
      mode = "open";
    },
    close,
    [Symbol.asyncDispose]: close,
  };
}
