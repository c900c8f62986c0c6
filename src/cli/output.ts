/** How commands print results on stdout (logs go to stderr, see src/log.ts). */

export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

export function printLines(...lines: readonly string[]): void {
  process.stdout.write(lines.map((line) => `${line}\n`).join(""));
}

/** Left-aligned columns separated by two spaces; the last column is not padded. No header if empty. */
export function formatTable(header: readonly string[], rows: readonly (readonly string[])[]): string[] {
  const all = header.length > 0 ? [header, ...rows] : rows;
  if (all.length === 0) return [];
  const widths = (all[0] ?? []).map((_, column) => Math.max(...all.map((row) => (row[column] ?? "").length)));
  return all.map((row) =>
    row
      .map((cell, column) => (column === row.length - 1 ? cell : cell.padEnd(widths[column] ?? 0)))
      .join("  ")
      .trimEnd(),
  );
}
