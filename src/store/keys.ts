/**
 * The etcd key schema: every key fitha reads or writes is built here and nowhere else, under the
 * configured prefix (`etcd.prefix`, "/fitha" by default).
 *
 * | key                      | cluster    | value                                  |
 * |--------------------------|------------|----------------------------------------|
 * | PREFIX/hosts/NAME        | management | registration of compute host NAME      |
 */
export interface Keys {
  /** Prefix of the host registry: one key per registered compute host. */
  readonly hostsPrefix: string;
}

export function keys(prefix: string): Keys {
  if (!prefix.startsWith("/") || prefix.endsWith("/")) throw new RangeError(`etcd key prefix ${JSON.stringify(prefix)}`);
  return Object.freeze({ hostsPrefix: `${prefix}/hosts/` });
}
