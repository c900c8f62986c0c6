/**
 * Where a daemon serves its metrics: "HOST:PORT" (an IPv4 address or a name), "[IPV6]:PORT", or
 * "" for not at all. Port 0 takes a free port (tests); the bound one is logged. A leaf module: the
 * configuration schema and the lockd flag check addresses with the same pattern.
 */

/** 0 to 65535, without leading zeros. */
const port = "(0|[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])";
const host = "(\\[[0-9A-Fa-f:.]+\\]|[0-9A-Za-z.-]+)";

export const listenAddressPattern = new RegExp(`^(|${host}:${port})$`);
export const listenAddressAccepts = 'HOST:PORT (an IP address or host name, "[IPv6]:PORT" in brackets; port 0 takes a free one), or "" for no metrics';

export interface ListenAddress {
  /** Without brackets, as Bun.serve takes it. */
  readonly hostname: string;
  readonly port: number;
}

/** The address to bind; undefined for "" (metrics off). Throws on anything listenAddressPattern refuses. */
export function parseListenAddress(address: string): ListenAddress | undefined {
  if (!listenAddressPattern.test(address)) throw new RangeError(`"${address}" is not ${listenAddressAccepts}`);
  if (address === "") return undefined;
  const colon = address.lastIndexOf(":");
  return { hostname: address.slice(0, colon).replace(/^\[(.*)\]$/, "$1"), port: Number(address.slice(colon + 1)) };
}
