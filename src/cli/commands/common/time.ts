/** Times as operators read them: ISO 8601 UTC as stored, and how long ago. */

/** Milliseconds from `iso` to `nowMs` (ms since the epoch), never negative: another host's clock may run ahead. */
export function ageMs(iso: string, nowMs: number): number {
  return Math.max(0, Math.round(nowMs - Date.parse(iso)));
}

/** A duration in its two largest units: "42s", "5m07s", "3h05m", "2d03h". */
export function formatDuration(ms: number): string {
  const seconds = Math.floor(ms / 1000);
  if (seconds < 60) return `${seconds}s`;
  const two = (n: number) => String(n).padStart(2, "0");
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m${two(seconds % 60)}s`;
  if (seconds < 86_400) return `${Math.floor(seconds / 3600)}h${two(Math.floor(seconds / 60) % 60)}m`;
  return `${Math.floor(seconds / 86_400)}d${two(Math.floor(seconds / 3600) % 24)}h`;
}

/** "2026-01-31T12:00:00.000Z (5m07s ago)" */
export function formatSince(iso: string, nowMs: number): string {
  return `${iso} (${formatDuration(ageMs(iso, nowMs))} ago)`;
}
