/**
 * The webhook: each alarm notice as one JSON POST (the AlarmNotice's fields plus `cluster`, the
 * etcd key prefix, which tells several fitha clusters apart at one receiver). Any 2xx answer is
 * delivery; anything else, a timeout or a connection error is a failed attempt that the delivery
 * queue retries. Redirects are not followed: an alarm must not wander to an address nobody configured.
 */
import { UsageError } from "../errors.ts";
import type { AlarmNotice } from "./catalogue.ts";
import type { AlarmTransport } from "./delivery-queue.ts";

/** A receiver's error text is kept this short in logs (it may be a whole HTML page). */
const maxErrorBodyChars = 200;

export function webhookTransport(url: string, options: { timeoutMs: number; cluster: string }): AlarmTransport {
  const target = URL.parse(url);
  if (target === null || (target.protocol !== "http:" && target.protocol !== "https:")) throw new UsageError(`alarms.webhook_url: ${redactedUrl(url)} is not an http:// or https:// URL`);
  return {
    name: redactedUrl(url),
    async send(notice: AlarmNotice): Promise<void> {
      const response = await fetch(target, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ ...notice, cluster: options.cluster }),
        redirect: "manual",
        signal: AbortSignal.timeout(options.timeoutMs),
      });
      if (response.status >= 200 && response.status < 300) {
        await response.body?.cancel();
        return;
      }
      const text = (await response.text().catch(() => "")).slice(0, maxErrorBodyChars);
      throw new Error(`HTTP ${response.status}${text === "" ? "" : `: ${text}`}`);
    },
  };
}

/**
 * The URL without what may be a secret (user:password@, a token in the query or fragment), for
 * logs and errors.
 */
export function redactedUrl(url: string): string {
  const parsed = URL.parse(url);
  if (parsed === null) return "(not a URL)";
  const secrets = parsed.username !== "" || parsed.password !== "" || parsed.search !== "" || parsed.hash !== "";
  return `${parsed.protocol}//${parsed.host}${parsed.pathname}${secrets ? " (credentials and query hidden)" : ""}`;
}
