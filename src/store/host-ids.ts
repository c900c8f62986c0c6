/**
 * Lockspace host ids: each compute host needs a number from 1 to max_hosts that no other host
 * has, for its delta lease slot. A host claims one by creating P/host-ids/ID in a transaction
 * that fails if the key exists (records.ts: HostIdClaim), so two hosts racing for the same id
 * cannot both win, whatever their timing. A claim is never released: a host keeps its id across
 * restarts and re-installs under the same name.
 */
import { FithaError } from "../errors.ts";
import type { DecodeError } from "./codec.ts";
import { checkHostName, type Keys } from "./keys.ts";
import type { Kv } from "./kv.ts";
import { hostIdClaim } from "./records.ts";
import { listRecords } from "./typed.ts";

/** HostRecord.hostId's bound (records.ts). */
export const maxHostIds = 2000;

export interface AllocateOptions {
  /** The wall clock for HostIdClaim.claimedAt (an injected one in the simulator). */
  readonly now?: () => Date;
  /** A claim whose value does not decode: its id counts as taken; the caller reports it. */
  readonly onBadValue?: (error: DecodeError) => void;
}

/**
 * The id `hostName` holds, or the lowest free one, claimed now. Each lost race means one more
 * id was taken, so at most maxHosts claims are tried.
 */
export async function allocateHostId(kv: Kv, keys: Keys, hostName: string, maxHosts: number, options: AllocateOptions = {}): Promise<number> {
  if (!(Number.isSafeInteger(maxHosts) && maxHosts >= 1 && maxHosts <= maxHostIds)) throw new RangeError(`max hosts ${maxHosts}: 1 to ${maxHostIds}`);
  checkHostName(hostName);
  const { now = () => new Date(), onBadValue } = options;
  for (let round = 0; round <= maxHosts; round++) {
    const claims = await listRecords(kv, keys.hostIdsPrefix, hostIdClaim);
    for (const bad of claims.bad) onBadValue?.(bad);
    const taken = new Set<number>();
    for (const key of [...claims.records.map((c) => c.key), ...claims.bad.map((b) => b.source)]) {
      const id = idOf(keys, key);
      if (id !== undefined) taken.add(id);
    }
    // Its own claim wins over a new one, even after a create whose answer was lost. Of two
    // claims of one name (two agents of that name racing), the lowest is its id from then on.
    const own = Math.min(...claims.records.filter((c) => c.record.host === hostName).map((c) => idOf(keys, c.key) ?? Infinity));
    if (Number.isFinite(own)) {
      if (own > maxHosts) throw new FithaError(`host ${hostName} holds lockspace host id ${own} (${keys.hostId(own)}), beyond max hosts ${maxHosts}`);
      return own;
    }
    let free = 1;
    while (taken.has(free)) free++;
    if (free > maxHosts) throw new FithaError(`no lockspace host id left for ${hostName}: all ${maxHosts} are claimed under ${keys.hostIdsPrefix}`);
    const claim = JSON.stringify({ host: hostName, claimedAt: now().toISOString() });
    if (await kv.createIfAbsent(keys.hostId(free), claim)) return free;
  }
  throw new FithaError(`${kv.name}: could not claim a lockspace host id for ${hostName} in ${maxHosts + 1} rounds`);
}

/** The id a claim key names, if it is one (keys.hostId's zero-padded form). */
function idOf(keys: Keys, key: string): number | undefined {
  const suffix = key.slice(keys.hostIdsPrefix.length);
  if (!/^[0-9]{5}$/.test(suffix)) return undefined;
  const id = Number(suffix);
  return id >= 1 && keys.hostId(id) === key ? id : undefined;
}
