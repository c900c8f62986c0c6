/**
 * grpc-js puts the host it dials into TLS's server name indication (SNI) even when that host is an
 * IP address. RFC 6066 allows only DNS names there; Node warns, Bun refuses the connection
 * ("Setting the TLS ServerName to an IP address is not permitted"), so every endpoint like
 * https://10.0.0.1:2379 would fail. Dropped, the name is still checked: without a servername,
 * tls.connect checks the server's certificate against the host dialed (its IP subjectAltNames).
 * tls.connect is wrapped, process-wide, because grpc-js offers no hook before it calls it.
 */
import { isIP } from "node:net";
import tls from "node:tls";

let installed = false;

/** Idempotent: the first call wraps tls.connect; later ones do nothing. */
export function dropIpServerNames(): void {
  if (installed) return;
  installed = true;
  const connect = tls.connect;
  tls.connect = ((...args: unknown[]) => {
    const [options] = args;
    if (typeof options === "object" && options !== null && "servername" in options && typeof options.servername === "string" && isIP(options.servername) !== 0) {
      const { servername: _ip, ...rest } = options;
      args[0] = rest;
    }
    return (connect as (...a: unknown[]) => tls.TLSSocket)(...args);
  }) as typeof tls.connect;
}
