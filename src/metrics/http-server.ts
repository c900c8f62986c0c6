/**
 * Serves a registry at GET /metrics (text format 0.0.4) over plain HTTP, for Prometheus to scrape.
 * Observability never costs availability: an address that cannot be bound (in use, not on this
 * machine) is an error in the log that names the setting to change, and the daemon runs on
 * without metrics.
 */
import { logger } from "../log.ts";
import { parseListenAddress } from "./listen-address.ts";
import type { MetricsRegistry } from "./registry.ts";

const log = logger("metrics");

export const exposition = "text/plain; version=0.0.4; charset=utf-8";

export interface MetricsServer {
  /** Where it listens, with the port actually bound: "http://127.0.0.1:9733/metrics". */
  readonly url: string;
  stop(): Promise<void>;
}

/**
 * Serves `registry` on `address` ("" : not at all). `setting` names where the address came from
 * (a flag or a config key), for the operator who reads why metrics are missing.
 */
export function serveMetrics(registry: MetricsRegistry, address: string, setting: string): MetricsServer | undefined {
  const listen = parseListenAddress(address);
  if (listen === undefined) {
    log.info(`metrics not served (${setting} is "")`);
    return undefined;
  }
  let server: ReturnType<typeof Bun.serve>;
  try {
    server = Bun.serve({
      hostname: listen.hostname,
      port: listen.port,
      // A scrape is a GET without a body: anything larger is not one.
      maxRequestBodySize: 16 * 1024,
      fetch(request) {
        const path = new URL(request.url).pathname;
        if (path !== "/metrics") return new Response("not found: metrics are at /metrics\n", { status: 404 });
        if (request.method !== "GET" && request.method !== "HEAD") return new Response("method not allowed\n", { status: 405, headers: { allow: "GET, HEAD" } });
        try {
          return new Response(registry.render(), { headers: { "content-type": exposition } });
        } catch (error) {
          log.error("could not render the metrics", { error });
          return new Response("internal error rendering the metrics\n", { status: 500 });
        }
      },
      error(error) {
        log.error("metrics request failed", { error });
        return new Response("internal error\n", { status: 500 });
      },
    });
  } catch (error) {
    log.error(`cannot serve metrics on ${address}; running on without metrics (change ${setting}, or "" to turn them off)`, { address, setting, error });
    return undefined;
  }
  const host = listen.hostname.includes(":") ? `[${listen.hostname}]` : listen.hostname;
  const url = `http://${host}:${server.port}/metrics`;
  log.info("serving metrics", { url, setting });
  return { url, stop: () => server.stop(true) };
}
