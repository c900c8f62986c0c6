/**
 * Lockspace host ids: each compute host needs a number from 1 to max_hosts that no other host
 * has, for its delta lease slot. A host claims one by creating P/host-ids/ID in a transaction
 * that fails if the key exists (records.ts: HostIdClaim), so two hosts racing for the same id
 * cannot both win, whatever their timing. A claim is never released: a host keeps its id across
 * restarts and re-installs under the same name.
 */
import { checkHostName, type Keys } from "./keys.ts";
import type { Kv } from "./kv.ts";
import { claimNumber, type ClaimOptions } from "./numbered-claims.ts";
import { hostIdClaim } from "./records.ts";

/** HostRecord.hostId's bound (records.ts). */
export const maxHostIds = 2000;

export type AllocateOptions = ClaimOptions;

/** The id `hostName` holds, or the lowest free one of 1..maxHosts, claimed now. */
export async function allocateHostId(kv: Kv, keys: Keys, hostName: string, maxHosts: number, options: AllocateOptions = {}): Promise<number> {
  if (!(Number.isSafeInteger(maxHosts) && maxHosts >= 1 && maxHosts <= maxHostIds)) throw new RangeError(`max hosts ${maxHosts}: 1 to ${maxHostIds}`);
  checkHostName(hostName);
  return claimNumber(
    kv,
    {
      what: "lockspace host id",
      prefix: keys.hostIdsPrefix,
      keyOf: (id) => keys.hostId(id),
      first: 1,
      last: maxHosts,
      codec: hostIdClaim,
      ownerOf: (claim) => claim.host,
      describeOwner: (host) => `host ${host}`,
      claimFor: (host, now) => ({ host, claimedAt: now.toISOString() }),
    },
    hostName,
    options,
  );
}
