import { describe, expect, test } from "bun:test";
import { answerFencing, collapseDuplicates } from "../../src/core/fencing-policy.ts";

describe("fencing answers", () => {
  const event = { host: "h1", question: 3, receivedMs: 100 };

  test("storage lost by one host while the others may still read it: fence", () => {
    const answer = answerFencing(event, ["h1", "h2", "h3"], new Set(["h1"]));
    expect(answer).toEqual({ answer: "fence", reason: "2 other host(s) may still read the shared storage (h2, h3): the fault is local" });
  });

  test("storage lost by every host: no-fence (a global fault); one host back or silent: fence", () => {
    expect(answerFencing(event, ["h1", "h2", "h3"], new Set(["h1", "h2", "h3"]))).toEqual({ answer: "no-fence", reason: "every other host (2) has storage trouble too: a global storage fault, the VMs stay" });
    // h2's trouble resolved: it could take the leases now.
    expect(answerFencing(event, ["h1", "h2", "h3"], new Set(["h1", "h3"])).answer).toBe("fence");
    // h4 never reported: a silent agent may still have a lockd reading the lockspace.
    expect(answerFencing(event, ["h1", "h2", "h3", "h4"], new Set(["h1", "h2", "h3"])).answer).toBe("fence");
  });

  test("a lone host is fenced: its fault cannot be told from a local one", () => {
    expect(answerFencing(event, ["h1"], new Set(["h1"]))).toEqual({ answer: "fence", reason: "no other host to tell a global storage fault from a local one" });
  });

  test("the same question over three planes is one event, kept at its first arrival", () => {
    const events = [
      { host: "h1", question: 3, receivedMs: 120 },
      { host: "h2", question: 1, receivedMs: 110 },
      { host: "h1", question: 3, receivedMs: 100 },
      { host: "h1", question: 4, receivedMs: 130 },
      { host: "h1", question: 3, receivedMs: 105 },
    ];
    expect(collapseDuplicates(events)).toEqual([
      { host: "h1", question: 3, receivedMs: 100 },
      { host: "h2", question: 1, receivedMs: 110 },
      { host: "h1", question: 4, receivedMs: 130 },
    ]);
  });
});
