/** What every part of a leader's term (recovery, alarms) works with. */
import type { Clock } from "../core/clock.ts";
import type { Keys } from "../store/keys.ts";
import type { Kv } from "../store/kv.ts";

export interface LeaderContext {
  /** The management cluster. */
  readonly kv: Kv;
  readonly keys: Keys;
  readonly clock: Clock;
  /** Wall clock, for times written into records: they must mean the same to the next leader. */
  readonly now: () => Date;
  /** This controller, for the records' `by`. */
  readonly name: string;
  /** Checked before every write: false once this controller's leadership is in doubt. */
  readonly leading: () => boolean;
}
