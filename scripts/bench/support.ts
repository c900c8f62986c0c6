/**
 * What the benches share: a log line with the time since start, a bounded poll, and /proc
 * sampling of processes' CPU and memory.
 */

const startedAtMs = performance.now();

export const log = (message: string) => console.error(`[${((performance.now() - startedAtMs) / 1000).toFixed(1).padStart(6)} s] ${message}`);
export const sleep = (ms: number) => Bun.sleep(ms);
export const round = (value: number, digits = 1) => Number(value.toFixed(digits));

/** Polls `condition` every `everyMs` until it holds; throws after `timeoutMs`. */
export async function until(what: string, timeoutMs: number, everyMs: number, condition: () => Promise<boolean> | boolean): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!(await condition())) {
    if (performance.now() > deadline) throw new Error(`not within ${Math.round(timeoutMs / 1000)} s: ${what}`);
    await sleep(everyMs);
  }
}

// ---------------------------------------------------------------------------------------------
// /proc sampling

const clockTicks = Number(Bun.spawnSync(["getconf", "CLK_TCK"]).stdout.toString().trim()) || 100;

interface ProcSample {
  readonly atMs: number;
  /** utime + stime, seconds. */
  readonly cpuS: number;
  readonly rssKiB: number;
  readonly hwmKiB: number;
}

async function procSample(pid: number | "self" | "machine"): Promise<ProcSample> {
  if (pid === "machine") {
    // /proc/stat's cpu line: user nice system idle iowait irq softirq steal …; busy = all but idle and iowait.
    const ticks = (await Bun.file("/proc/stat").text()).split("\n")[0]!.trim().split(/\s+/).slice(1, 9).map(Number);
    return { atMs: performance.now(), cpuS: (ticks.reduce((a, b) => a + b, 0) - ticks[3]! - ticks[4]!) / clockTicks, rssKiB: 0, hwmKiB: 0 };
  }
  const [stat, status] = await Promise.all([Bun.file(`/proc/${pid}/stat`).text(), Bun.file(`/proc/${pid}/status`).text()]);
  // Fields after "(comm)": state is field 3, utime 14, stime 15.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  const kib = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, "m").exec(status)?.[1] ?? NaN);
  return { atMs: performance.now(), cpuS: (Number(fields[11]) + Number(fields[12])) / clockTicks, rssKiB: kib("VmRSS"), hwmKiB: kib("VmHWM") };
}

export interface ProcStats {
  /** Average over the window, % of one core. */
  readonly cpuAvgPercent: number;
  /** The busiest 1 s sample. */
  readonly cpuMaxPercent: number;
  readonly rssPeakMiB: number;
  readonly rssAvgMiB: number;
  /** VmHWM: the process's peak RSS since it started (includes start-up and registration). */
  readonly hwmMiB: number;
}

/** Samples processes every second until stop(). */
export function sampler(pids: Record<string, number | "self" | "machine">) {
  const samples = new Map<string, ProcSample[]>(Object.keys(pids).map((name) => [name, []]));
  let running = true;
  const take = () => Promise.all(Object.entries(pids).map(async ([name, pid]) => samples.get(name)!.push(await procSample(pid))));
  const loop = (async () => {
    await take();
    while (running) {
      await sleep(1_000);
      await take();
    }
  })();
  return {
    async stop(): Promise<Record<string, ProcStats>> {
      running = false;
      await loop;
      const mib = (kib: number) => round(kib / 1024);
      return Object.fromEntries(
        [...samples].map(([name, list]) => {
          const first = list[0]!;
          const last = list.at(-1)!;
          const steps = list.slice(1).map((s, i) => (100 * (s.cpuS - list[i]!.cpuS)) / ((s.atMs - list[i]!.atMs) / 1000));
          return [
            name,
            {
              cpuAvgPercent: round((100 * (last.cpuS - first.cpuS)) / ((last.atMs - first.atMs) / 1000), 2),
              cpuMaxPercent: round(Math.max(0, ...steps)),
              rssPeakMiB: mib(Math.max(...list.map((s) => s.rssKiB))),
              rssAvgMiB: mib(list.reduce((sum, s) => sum + s.rssKiB, 0) / list.length),
              hwmMiB: mib(last.hwmKiB),
            },
          ];
        }),
      );
    },
  };
}

/** Waits for `work` at most `ms`; logs its failure, or that it was given up on. */
export async function bounded(what: string, work: Promise<unknown>, ms: number): Promise<void> {
  let timer: Timer | undefined;
  await Promise.race([
    work.catch((error: unknown) => log(`${what}: ${String(error)}`)),
    new Promise<void>((resolve) => {
      timer = setTimeout(() => {
        log(`${what}: gave up after ${ms} ms`);
        resolve();
      }, ms);
    }),
  ]);
  clearTimeout(timer);
}
