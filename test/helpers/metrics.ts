/** Scraping a real daemon's /metrics: where it serves them (from its JSON log) and what it serves (strictly parsed). */
import { eventually } from "./eventually.ts";
import { parsePrometheusText, sampleOf, type MetricFamily } from "./prometheus-text.ts";

export type Scrape = Map<string, MetricFamily>;

/** The JSON log lines of a daemon so far (a line being written may be cut: skipped). */
export async function logLines(logFile: string): Promise<Array<Record<string, unknown>>> {
  const text = await Bun.file(logFile).text().catch(() => "");
  return text.split("\n").flatMap((line) => {
    try {
      return [JSON.parse(line) as Record<string, unknown>];
    } catch {
      return [];
    }
  });
}

/** The URL a daemon logged it serves its metrics at (it binds port 0: only it knows which), waiting for it (bounded). */
export async function metricsUrl(logFile: string): Promise<string> {
  let url: string | undefined;
  await eventually(`"serving metrics" in ${logFile}`, async () => {
    url = (await logLines(logFile)).find((line) => line["msg"] === "serving metrics")?.["url"] as string | undefined;
    return url !== undefined;
  }, 20_000, 50);
  return url!;
}

/** GET /metrics: must be 200 in text format 0.0.4, and parse strictly. */
export async function scrape(url: string): Promise<Scrape> {
  const response = await fetch(url, { signal: AbortSignal.timeout(5_000) });
  const body = await response.text();
  if (response.status !== 200) throw new Error(`${url}: HTTP ${response.status}: ${body}`);
  const type = response.headers.get("content-type");
  if (type !== "text/plain; version=0.0.4; charset=utf-8") throw new Error(`${url}: content type ${type}`);
  return parsePrometheusText(body);
}

/** The value of the one sample `name` with (at least) `labels`. */
export function valueOf(scraped: Scrape, name: string, labels: Readonly<Record<string, string>> = {}): number {
  return sampleOf(scraped, name, labels).value;
}
