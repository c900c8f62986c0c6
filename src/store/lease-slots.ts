/**
 * VM lease slots: each HA VM needs a slot of the lockspace's VM lease area (src/lease/layout.ts)
 * that no other VM has, for its Disk-Paxos lease. A VM claims one by creating P/lease-slots/SLOT
 * in a transaction that fails if the key exists (records.ts: LeaseSlotClaim), so two VMs racing
 * for one slot cannot both win, whatever their timing; the loser moves on to the next free one.
 * (numbered-claims.ts, as for host ids).
 *
 * A claim is never released by fitha. A lease may still be held in the slot on disk after a
 * VM's HA is switched off or the VM is removed (it goes on running under it until it stops), and
 * a slot handed to another VM meanwhile would put two VMs' leases in one place. Reusing a slot
 * needs proof that its lease on disk is free; that is left out for now, so slots are not reused.
 */
import { maxSlots as layoutMaxSlots } from "../lease/layout.ts";
import type { Keys } from "./keys.ts";
import type { Kv } from "./kv.ts";
import { claimNumber, type ClaimOptions } from "./numbered-claims.ts";
import { leaseSlotClaim } from "./records.ts";

export type AllocateSlotOptions = ClaimOptions;

/** The slot `vm` (a lower-case UUID) holds, or the lowest free one of 0..maxSlots-1, claimed now. */
export async function allocateLeaseSlot(kv: Kv, keys: Keys, vm: string, maxSlots: number, options: AllocateSlotOptions = {}): Promise<number> {
  if (!(Number.isSafeInteger(maxSlots) && maxSlots >= 1 && maxSlots <= layoutMaxSlots)) throw new RangeError(`max slots ${maxSlots}: 1 to ${layoutMaxSlots}`);
  keys.vm(vm); // checks the UUID's form
  return claimNumber(
    kv,
    {
      what: "lease slot",
      prefix: keys.leaseSlotsPrefix,
      keyOf: (slot) => keys.leaseSlot(slot),
      first: 0,
      last: maxSlots - 1,
      codec: leaseSlotClaim,
      ownerOf: (claim) => claim.vm,
      describeOwner: (uuid) => `VM ${uuid}`,
      claimFor: (owner, now) => ({ vm: owner, claimedAt: now.toISOString() }),
    },
    vm,
    options,
  );
}
