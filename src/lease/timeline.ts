/**
 * Every lease deadline, derived from two numbers: the I/O timeout T (per host, in its delta
 * record) and the lockspace's kill budget K (in the lockspace header). The table with numbers is
 * in src/lease/README.md; the relations are what the safety argument rests on:
 *
 *   renewal every 2T; a renewal is one batch with deadline T, so a slow one cannot hide a failure
 *   warn at 4T without a successful renewal: time to ask whether to fence (ask & wait)
 *   fail at 8T: the host's VM leases are lost; it must have stopped its HA VMs by now
 *   host dead at 8T + K, counted by every other host from its own observation of silence:
 *     K covers killing the VMs when the owner's own fencing failed (watchdog/supervisor)
 *
 * As in sanlock (2T / 8T / 8T + 60 s); at T = 10 s and K = 60 s the numbers are the same.
 */

export interface Timeline {
  readonly ioTimeoutMs: number;
  readonly renewalIntervalMs: number;
  readonly renewalWarnMs: number;
  readonly renewalFailMs: number;
  readonly killBudgetMs: number;
  readonly hostDeadMs: number;
  /** How long a joiner waits between writing a contested host-id sector and re-reading it. */
  readonly joinCollisionDelayMs: number;
}

export const defaultIoTimeoutMs = 10_000;
export const defaultKillBudgetMs = 60_000;
/** Bounds that keep every derived number meaningful: tests go down to 10 ms, production up to minutes. */
export const ioTimeoutRangeMs = { min: 10, max: 120_000 } as const;
export const killBudgetRangeMs = { min: 10, max: 600_000 } as const;

export function timeline(ioTimeoutMs: number, killBudgetMs: number): Timeline {
  if (!(Number.isInteger(ioTimeoutMs) && ioTimeoutMs >= ioTimeoutRangeMs.min && ioTimeoutMs <= ioTimeoutRangeMs.max)) {
    throw new RangeError(`io timeout ${ioTimeoutMs} ms is outside ${ioTimeoutRangeMs.min}..${ioTimeoutRangeMs.max}`);
  }
  if (!(Number.isInteger(killBudgetMs) && killBudgetMs >= killBudgetRangeMs.min && killBudgetMs <= killBudgetRangeMs.max)) {
    throw new RangeError(`kill budget ${killBudgetMs} ms is outside ${killBudgetRangeMs.min}..${killBudgetRangeMs.max}`);
  }
  const renewalFailMs = 8 * ioTimeoutMs;
  return Object.freeze({
    ioTimeoutMs,
    renewalIntervalMs: 2 * ioTimeoutMs,
    renewalWarnMs: 4 * ioTimeoutMs,
    renewalFailMs,
    killBudgetMs,
    hostDeadMs: renewalFailMs + killBudgetMs,
    // A racer read the sector as free before our write and writes within one read and one write
    // deadline of that read; after 2T its write has landed or failed.
    joinCollisionDelayMs: 2 * ioTimeoutMs,
  });
}
