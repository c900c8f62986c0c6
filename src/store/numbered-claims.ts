/**
 * Claiming a number no one else has (a lockspace host id, a VM lease slot): the claimant creates
 * PREFIX/NNNNN in a transaction that fails if the key exists, so two claimants racing for one
 * number cannot both win, whatever their timing; the loser moves on to the next free one. A
 * claimant's own claim wins over a new one, also after a create whose answer was lost (the claim
 * is there, the caller never heard); of two claims of one owner (two of its commands racing),
 * the lowest is its number from then on. Claims are never released here.
 */
import { FithaError } from "../errors.ts";
import type { Codec, DecodeError } from "./codec.ts";
import type { Kv } from "./kv.ts";
import { listRecords } from "./typed.ts";

export interface NumberSpace<C> {
  /** "lockspace host id", "lease slot": for messages. */
  readonly what: string;
  readonly prefix: string;
  /** The key of number n (zero-padded under `prefix`). */
  keyOf(n: number): string;
  /** Numbers go from `first` to `last` (both included). */
  readonly first: number;
  readonly last: number;
  readonly codec: Codec<C>;
  /** Who a claim belongs to. */
  ownerOf(claim: C): string;
  /** The owner in messages: "host compute-1", "VM 6c1a…". */
  describeOwner(owner: string): string;
  /** The claim `owner` writes at `now`. */
  claimFor(owner: string, now: Date): C;
}

export interface ClaimOptions {
  /** The wall clock for the claim's time (an injected one in the simulator). */
  readonly now?: () => Date;
  /** A claim whose value does not decode: its number counts as taken; the caller reports it. */
  readonly onBadValue?: (error: DecodeError) => void;
}

/** The number `owner` holds, or the lowest free one, claimed now. Each lost race takes one more number, so the rounds are bounded. */
export async function claimNumber<C>(kv: Kv, space: NumberSpace<C>, owner: string, options: ClaimOptions = {}): Promise<number> {
  const { now = () => new Date(), onBadValue } = options;
  const rounds = space.last - space.first + 2;
  for (let round = 0; round < rounds; round++) {
    const claims = await listRecords(kv, space.prefix, space.codec);
    for (const bad of claims.bad) onBadValue?.(bad);
    const taken = new Set<number>();
    for (const key of [...claims.records.map((c) => c.key), ...claims.bad.map((b) => b.source)]) {
      const n = numberOf(space, key);
      if (n !== undefined) taken.add(n);
    }
    const own = Math.min(...claims.records.filter((c) => space.ownerOf(c.record) === owner).map((c) => numberOf(space, c.key) ?? Infinity));
    if (Number.isFinite(own)) {
      if (own > space.last) throw new FithaError(`${space.describeOwner(owner)} holds ${space.what} ${own} (${space.keyOf(own)}), beyond ${space.what}s ${space.first}..${space.last}`);
      return own;
    }
    let free = space.first;
    while (taken.has(free)) free++;
    if (free > space.last) throw new FithaError(`no ${space.what} left for ${space.describeOwner(owner)}: all ${space.last - space.first + 1} are claimed under ${space.prefix}`);
    if (await kv.createIfAbsent(space.keyOf(free), JSON.stringify(space.claimFor(owner, now())))) return free;
  }
  throw new FithaError(`${kv.name}: could not claim a ${space.what} for ${space.describeOwner(owner)} in ${rounds} rounds`);
}

/** The number a claim key names, if it is one (keyOf's form). */
function numberOf(space: NumberSpace<unknown>, key: string): number | undefined {
  const suffix = key.slice(space.prefix.length);
  if (!/^[0-9]{5}$/.test(suffix)) return undefined;
  const n = Number(suffix);
  return n >= space.first && space.keyOf(n) === key ? n : undefined;
}
