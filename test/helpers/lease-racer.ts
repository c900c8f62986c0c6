/**
 * A lease user in its own process, for tests with several real processes on one real lease file:
 *   bun test/helpers/lease-racer.ts MODE PATH HOST_ID IO_TIMEOUT_MS [ARG]
 * MODE race ROUNDS: acquire/release slot 0 ROUNDS times, checking a marker file while owner.
 * MODE hold: acquire slot 0 and keep acting as owner (marker writes) until the host lease fails.
 * MODE take: try to acquire slot 0 until it succeeds.
 * MODE join: join with a hand-configured id and keep renewing.
 * Every event is one JSON line on stdout with a CLOCK_BOOTTIME time in ns (one clock for all
 * processes on the machine; Bun's process.hrtime counts from each process's own start), so the
 * test can check the histories against each other.
 */
import { appendFileSync, readFileSync, writeFileSync } from "node:fs";
import { monotonicClock } from "../../src/core/clock.ts";
import { machineClockNs } from "./machine-clock.ts";
import { DeltaLease } from "../../src/lease/delta-lease.ts";
import { DirectDevice } from "../../src/lease/direct-device.ts";
import { acquireLease, releaseLease } from "../../src/lease/paxos-lease.ts";

const [mode, path, hostIdText, ioTimeoutText, extra] = process.argv.slice(2);
const hostId = Number(hostIdText);
const ioTimeoutMs = Number(ioTimeoutText);
const vm = "racer-vm";
const now = () => machineClockNs().toString();
const emit = (event: Record<string, unknown>) => process.stdout.write(`${JSON.stringify({ host: hostId, at_ns: now(), ...event })}\n`);

const device = await DirectDevice.open(path!);
let lease: DeltaLease;
try {
  lease = await DeltaLease.join(device, monotonicClock, {
    hostId,
    hostName: `racer-${hostId}-${process.pid}`,
    installId: process.pid.toString(16).padStart(32, "0"),
    ioTimeoutMs,
    idAllocation: mode === "join" ? "configured" : "unique",
  });
} catch (error) {
  emit({ event: "join-failed", error: (error as Error).message });
  await device.close();
  process.exit(0);
}
emit({ event: "joined", generation: lease.generation });

// The renewal loop of a lockd in miniature.
let renewing = true;
const renewals = (async () => {
  while (renewing && lease.phase() !== "failed") {
    await monotonicClock.sleep(lease.timeline.renewalIntervalMs);
    const started = now();
    const outcome = await lease.renew();
    if (outcome.ok) emit({ event: "renewed", started_ns: started });
    else emit({ event: "renew-failed", reason: outcome.reason });
  }
})();

const marker = `${path}.marker`;
const randomSleep = (maxMs: number) => monotonicClock.sleep(Math.random() * maxMs);

if (mode === "race") {
  let acquired = 0;
  for (let round = 0; round < Number(extra); round++) {
    const result = await acquireLease(lease, 0, vm).catch((error: Error) => ({ status: "error" as const, message: error.message }));
    if (result.status === "acquired") {
      acquired++;
      const start = now();
      writeFileSync(marker, String(hostId));
      await randomSleep(3);
      const seen = readFileSync(marker, "utf8");
      const end = now();
      const released = await releaseLease(lease, 0, vm);
      emit({ event: "owned", start_ns: start, end_ns: end, marker_ok: seen === String(hostId), lver: result.lver, already: result.already, released });
    }
    await randomSleep(2);
  }
  emit({ event: "done", acquired });
} else if (mode === "hold") {
  const result = await acquireLease(lease, 0, vm);
  emit({ event: result.status });
  // Acting as owner: always check the host lease first, then act, with no await in between.
  for (;;) {
    // The time of the act is taken before the check: if the lease was valid at the check, it
    // was valid at that time too (a pause between check and write cannot make it look later).
    const at = now();
    if (lease.phase() === "failed") {
      emit({ event: "lost", reason: lease.lostReason });
      break;
    }
    appendFileSync(marker, `${hostId} ${at}\n`);
    await monotonicClock.sleep(5);
  }
} else if (mode === "take") {
  for (;;) {
    const result = await acquireLease(lease, 0, vm).catch((error: Error) => ({ status: "error" as const, message: error.message }));
    if (result.status === "acquired") {
      emit({ event: "acquired" });
      break;
    }
    await monotonicClock.sleep(10);
  }
} else if (mode === "join") {
  await monotonicClock.sleep(60_000);
}
renewing = false;
await renewals;
await device.close();
