import { clockBoottimeMs } from "../../ffi/libc.ts";

/** CLOCK_BOOTTIME in ns: comparable across processes on this machine (process.hrtime is not, in Bun). */
export function machineClockNs(): bigint {
  return BigInt(Math.round(clockBoottimeMs() * 1e6));
}
