/**
 * lockd's socket protocol: one JSON object per line each way. Requests carry an `id` echoed in
 * the reply. Every request is validated here; anything malformed gets an error reply, never a
 * crash, and a line longer than `maxRequestBytes` ends the connection.
 *
 *   {"id":1,"op":"acquire","vm":"<uuid>","slot":12}  → {"id":1,"ok":true,"lver":3,"already":false}
 *                                                    | {"id":1,"ok":false,"error":"held","owner":{...}}
 *   {"id":2,"op":"release","vm":"<uuid>","slot":12}  → {"id":2,"ok":true,"released":true|false}
 *   {"id":3,"op":"inquire","slot":12}                → {"id":3,"ok":true,"lease":{...}}
 *   {"id":4,"op":"status"}                           → {"id":4,"ok":true,"status":{...}}
 *   {"id":5,"op":"subscribe"}                        → {"id":5,"ok":true,"subscribed":true}, then events
 *   {"id":6,"op":"answer","question":3,"answer":"fence"|"no-fence"} → {"id":6,"ok":true,"question":3,"answer":…}
 *
 * Events, on subscribed connections only, are lines without an `id`:
 *   {"event":"question","question":3,"reason":…,"vms":[…],"answer_within_ms":…,"grace_ms":…}
 *       the host lease is late: answer fence or no-fence within answer_within_ms, or lockd fences.
 *       A no-fence keeps the VMs for grace_ms from the question (see src/lockd/README.md for
 *       what the answerer vouches for).
 *   {"event":"fenced","reason":…,"vms":[…],"failed":[…]}   the VMs were stopped (failed: would not)
 *   {"event":"leases-taken","vms":[…],"stopped":[…],"failed":[…]}  re-validation found leases
 *       held by another host; their VMs were stopped
 *   {"event":"corrupt","op":…,"message":…}   a request met a damaged lease record (checksum, magic)
 */

export const maxRequestBytes = 4096;
/** Connections served at once; more are refused at accept. */
export const maxConnections = 64;

export type Request =
  | { readonly id: number; readonly op: "acquire"; readonly vm: string; readonly slot: number }
  | { readonly id: number; readonly op: "release"; readonly vm: string; readonly slot: number }
  | { readonly id: number; readonly op: "inquire"; readonly slot: number }
  | { readonly id: number; readonly op: "status" }
  | { readonly id: number; readonly op: "subscribe" }
  | { readonly id: number; readonly op: "answer"; readonly question: number; readonly answer: Answer };

export type Answer = "fence" | "no-fence";

export type LockdEvent =
  | { readonly event: "question"; readonly question: number; readonly reason: string; readonly vms: readonly string[]; readonly answer_within_ms: number; readonly grace_ms: number }
  | { readonly event: "fenced"; readonly reason: string; readonly vms: readonly string[]; readonly failed: readonly string[] }
  | { readonly event: "leases-taken"; readonly vms: readonly string[]; readonly stopped: readonly string[]; readonly failed: readonly string[] }
  | { readonly event: "corrupt"; readonly op: Request["op"]; readonly message: string };

export type ErrorKind = "bad-request" | "forbidden" | "held" | "not-owner" | "io" | "corrupt" | "internal";

export type Reply = { readonly id: number | null; readonly ok: true; readonly [key: string]: unknown } | { readonly id: number | null; readonly ok: false; readonly error: ErrorKind; readonly message: string; readonly [key: string]: unknown };

/** Parses one request line; a string is the reason it is malformed. */
export function parseRequest(line: string): Request | { readonly malformed: string; readonly id: number | null } {
  let raw: unknown;
  try {
    raw = JSON.parse(line);
  } catch {
    return { malformed: "not JSON", id: null };
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) return { malformed: "not a JSON object", id: null };
  const request = raw as Record<string, unknown>;
  const id = Number.isSafeInteger(request["id"]) ? (request["id"] as number) : null;
  if (id === null) return { malformed: "id must be an integer", id: null };
  const vm = request["vm"];
  const slot = request["slot"];
  const validVm = typeof vm === "string" && vm.length > 0 && new TextEncoder().encode(vm).length <= 64;
  const validSlot = Number.isSafeInteger(slot) && (slot as number) >= 0;
  switch (request["op"]) {
    case "acquire":
    case "release":
      if (!validVm) return { malformed: "vm must be a string of 1 to 64 bytes", id };
      if (!validSlot) return { malformed: "slot must be a non-negative integer", id };
      return { id, op: request["op"], vm: vm as string, slot: slot as number };
    case "inquire":
      if (!validSlot) return { malformed: "slot must be a non-negative integer", id };
      return { id, op: "inquire", slot: slot as number };
    case "status":
    case "subscribe":
      return { id, op: request["op"] };
    case "answer": {
      const question = request["question"];
      const answer = request["answer"];
      if (!(Number.isSafeInteger(question) && (question as number) > 0)) return { malformed: "question must be a positive integer", id };
      if (answer !== "fence" && answer !== "no-fence") return { malformed: 'answer must be "fence" or "no-fence"', id };
      return { id, op: "answer", question: question as number, answer };
    }
    default:
      return { malformed: `unknown op ${JSON.stringify(request["op"])}`, id };
  }
}
