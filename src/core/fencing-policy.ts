/**
 * The controller's answer to a fencing event: a host's lockd cannot renew its lease on shared
 * storage and asks (through its agent) whether to stop its HA VMs. `fence` is always safe.
 * `no-fence` keeps the VMs running on a grace, and lockd then relies on the answer's promise
 * (src/lockd/README.md): at the moment of the question, no other host could read the lockspace,
 * so none of them can take the host's leases before the grace runs out. The controller can only
 * vouch for that when every other registered host reports storage trouble of its own right now —
 * a global storage fault, where stopping every VM in the cluster would be the bigger harm. One
 * host that may still read the lockspace means the fault is local, and the answer is `fence`.
 *
 * Agents send each event over all three planes; the same question arriving several times is one.
 */

export interface FencingEvent {
  readonly host: string;
  /** lockd's question number (unique per lockd process and lease incarnation). */
  readonly question: number;
  /** When the controller first received it (its clock). */
  readonly receivedMs: number;
}

export type FencingAnswer = { readonly answer: "fence" | "no-fence"; readonly reason: string };

/**
 * Keeps the first arrival of each (host, question): the copies from the other planes change
 * nothing. Bounded by the caller's window (events older than the window are dropped).
 */
export function collapseDuplicates(events: readonly FencingEvent[]): FencingEvent[] {
  const first = new Map<string, FencingEvent>();
  for (const event of events) {
    const key = `${event.host}#${event.question}`;
    const seen = first.get(key);
    if (seen === undefined || event.receivedMs < seen.receivedMs) first.set(key, event);
  }
  return [...first.values()].sort((a, b) => a.receivedMs - b.receivedMs || (a.host < b.host ? -1 : 1));
}

/**
 * The answer to `event`, given every registered host and which of them have an open fencing
 * event (storage trouble now). Every other host counts, dead-looking or in maintenance too: a
 * host whose agent is silent may still run lockd and read the lockspace, and only its own
 * fencing event says it cannot. The controller's knowledge of those events must be fresher than
 * the kill budget K (agents report a resolved event at once; seconds against K = 60 s).
 */
export function answerFencing(event: FencingEvent, hosts: readonly string[], openHosts: ReadonlySet<string>): FencingAnswer {
  const others = hosts.filter((host) => host !== event.host);
  if (others.length === 0) {
    // A lone host's storage fault cannot be told from a local one: fencing is the safe side.
    return { answer: "fence", reason: "no other host to tell a global storage fault from a local one" };
  }
  const reading = others.filter((host) => !openHosts.has(host));
  if (reading.length > 0) {
    const names = reading.slice(0, 3).join(", ");
    return { answer: "fence", reason: `${reading.length} other host(s) may still read the shared storage (${names}${reading.length > 3 ? ", …" : ""}): the fault is local` };
  }
  return { answer: "no-fence", reason: `every other host (${others.length}) has storage trouble too: a global storage fault, the VMs stay` };
}
