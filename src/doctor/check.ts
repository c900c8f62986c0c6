/** What `fitha doctor` reports: one verdict per check, and how they print. */
import { formatTable } from "../cli/output.ts";

/** ok; warn: works, but not as it should in production; fail: the host must not join; skipped: could not be checked (why in detail). */
export type CheckStatus = "ok" | "warn" | "fail" | "skipped";

export type CheckValue = string | number | boolean | null;

export interface Check {
  /** Stable id: config, etcd-management, lease-file, … */
  readonly name: string;
  readonly status: CheckStatus;
  /** What was found, with its numbers; for a problem, the problem. */
  readonly detail: string;
  /** For warn and fail: what to do, in words an operator acts on (the command to run); else null. */
  readonly fix: string | null;
  /** The numbers and names of `detail` for scripts (latency_ms, sector_size, …); keys vary by check. */
  readonly values: Readonly<Record<string, CheckValue>>;
}

export function check(name: string, status: CheckStatus, detail: string, fix: string | null = null, values: Record<string, CheckValue> = {}): Check {
  return { name, status, detail, fix, values };
}

/**
 * JSON shape (`fitha doctor --json`):
 * { "ok": bool (no check failed; warnings allowed),
 *   "checks": [ { "name", "status": "ok"|"warn"|"fail"|"skipped", "detail", "fix": string|null, "values": { ... } } ] }
 */
export interface DoctorReport {
  ok: boolean;
  checks: readonly Check[];
}

export function doctorReport(checks: readonly Check[]): DoctorReport {
  return { ok: checks.every((c) => c.status !== "fail"), checks };
}

const statusWords: Record<CheckStatus, string> = { ok: "ok", warn: "warn", fail: "FAIL", skipped: "skip" };

/** One aligned line per check, each problem's fix under it, and a summary line. */
export function renderReport(report: DoctorReport): string[] {
  const rows = formatTable([], report.checks.map((c) => [statusWords[c.status], c.name, c.detail]));
  const indent = " ".repeat(Math.max(...report.checks.map((c) => statusWords[c.status].length)) + 2);
  const lines = report.checks.flatMap((c, i) => [rows[i]!, ...(c.fix === null ? [] : [`${indent}fix: ${c.fix}`])]);
  const count = (status: CheckStatus) => report.checks.filter((c) => c.status === status).length;
  const [failed, warned, skipped] = [count("fail"), count("warn"), count("skipped")];
  const warnings = `${warned} warning${warned === 1 ? "" : "s"}`;
  const summary = failed > 0 ? `${failed} failed, ${warnings}: this host is not ready to join` : warned > 0 ? `no failures, ${warnings}` : "all checks passed";
  return [...lines, "", `${summary}${skipped > 0 ? ` (${skipped} skipped)` : ""}`];
}
