#!/usr/bin/python3
"""sanlock's side of scripts/bench/lease: the same measurements as fitha's, on the same file
system, through python3-sanlock against real `sanlock daemon` processes (no watchdog, as an
unprivileged daemon: see ../shared/TESTING-NOTES.md). Prints one JSON document on stdout.

usage: sanlock-lease.py DIR IO_TIMEOUT_S ROUNDS HELD_LIST TAKEOVER(0|1)
"""
import json, os, signal, statistics, subprocess, sys, time

import sanlock

MIB = 1024 * 1024


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def proc_io(pid):
    fields = {}
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            key, value = line.split(":")
            fields[key] = int(value)
    return fields


class Daemon:
    """One sanlock daemon = one host, with its own run directory (socket)."""

    def __init__(self, workdir, name):
        self.run_dir = os.path.join(workdir, f"run-{name}")
        os.makedirs(self.run_dir, exist_ok=True)
        env = dict(os.environ, SANLOCK_RUN_DIR=self.run_dir, SANLOCK_PRIVILEGED="0")
        self.log = open(os.path.join(workdir, f"daemon-{name}.log"), "w")
        self.proc = subprocess.Popen(["sanlock", "daemon", "-D", "-w", "0", "-l", "0", "-U", "root", "-G", "root"],
                                     env=env, stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 10
        while not os.path.exists(os.path.join(self.run_dir, "sanlock.sock")):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"sanlock daemon {name} did not start")
            time.sleep(0.05)

    def use(self):
        os.environ["SANLOCK_RUN_DIR"] = self.run_dir

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.log.close()


def io_delta(pid, action):
    before = proc_io(pid)
    action()
    after = proc_io(pid)
    return {k: after[k] - before[k] for k in ("syscr", "syscw", "read_bytes", "write_bytes")}


def median_io(deltas):
    return {k: statistics.median(d[k] for d in deltas) for k in deltas[0]}


def run_second_host(path, io_timeout):
    """The second host: joins, then (told the first host died) asks for vm0 until it gets it."""
    ls = b"bench"
    sanlock.add_lockspace(ls, 2, path, iotimeout=io_timeout)
    print("joined", flush=True)
    sys.stdin.readline()
    killed = time.monotonic()
    fd = sanlock.register()
    while True:
        try:
            sanlock.acquire(ls, b"vm0", [(path, MIB)], slkfd=fd)
            break
        except sanlock.SanlockException:
            if time.monotonic() - killed > 600:
                raise
            time.sleep(0.1)
    print((time.monotonic() - killed) * 1000, flush=True)


def main():
    if sys.argv[1] == "--host2":
        run_second_host(sys.argv[2], int(sys.argv[3]))
        return
    workdir, io_timeout, rounds, held_list, takeover = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), [int(x) for x in sys.argv[4].split(",")], sys.argv[5] == "1"
    result = {"version": "3.8.5"}
    daemons = []
    try:
        # --- join, acquire/release latency and I/O (io_timeout as given) ---
        path = os.path.join(workdir, "sanlock-leases")
        with open(path, "wb") as f:
            f.truncate((2 + max(held_list)) * MIB)
        d1 = Daemon(workdir, "h1")
        daemons.append(d1)
        d1.use()
        ls = b"bench"
        sanlock.write_lockspace(ls, path, offset=0, iotimeout=io_timeout)
        started = time.monotonic()
        sanlock.add_lockspace(ls, 1, path, iotimeout=io_timeout)
        result["join_ms"] = (time.monotonic() - started) * 1000
        disk = [(path, MIB)]
        sanlock.write_resource(ls, b"vm0", disk)
        fd = sanlock.register()
        # Timing and I/O accounting are separate passes, so reading /proc is never timed.
        acquire_ms, release_ms, acquire_io, release_io = [], [], [], []
        for _ in range(rounds):
            t0 = time.monotonic()
            sanlock.acquire(ls, b"vm0", disk, slkfd=fd)
            t1 = time.monotonic()
            sanlock.release(ls, b"vm0", disk, slkfd=fd)
            t2 = time.monotonic()
            acquire_ms.append((t1 - t0) * 1000)
            release_ms.append((t2 - t1) * 1000)
        for _ in range(min(rounds, 50)):
            acquire_io.append(io_delta(d1.proc.pid, lambda: sanlock.acquire(ls, b"vm0", disk, slkfd=fd)))
            release_io.append(io_delta(d1.proc.pid, lambda: sanlock.release(ls, b"vm0", disk, slkfd=fd)))
        cycle = [a + r for a, r in zip(acquire_ms, release_ms)]
        result["acquire_ms"] = {"p50": percentile(acquire_ms, 0.5), "p99": percentile(acquire_ms, 0.99)}
        result["release_ms"] = {"p50": percentile(release_ms, 0.5), "p99": percentile(release_ms, 0.99)}
        result["cycle_ms"] = {"p50": percentile(cycle, 0.5), "p99": percentile(cycle, 0.99)}
        result["io_per_acquire"] = median_io(acquire_io)
        result["io_per_release"] = median_io(release_io)

        # --- renewal I/O with 1, 100, 1000 held leases ---
        renewal = {}
        held = 1  # vm0 is re-acquired below and counts as one
        sanlock.acquire(ls, b"vm0", disk, slkfd=fd)
        for target in held_list:
            while held < target:
                res_disk = [(path, (1 + held) * MIB)]
                name = f"vm{held}".encode()
                sanlock.write_resource(ls, name, res_disk)
                sanlock.acquire(ls, name, res_disk, slkfd=fd)
                held += 1
            # sanlock renews every 2 x io_timeout; syscall counts also include its socket and log
            # traffic, so only the storage byte counters are divided into renewals.
            renewals = 5
            delta = io_delta(d1.proc.pid, lambda: time.sleep(renewals * 2 * io_timeout))
            renewal[str(target)] = {"read_bytes": delta["read_bytes"] / renewals, "write_bytes": delta["write_bytes"] / renewals}
        result["renewal_io"] = renewal

        # --- takeover of a dead host's lease (two daemons = two hosts) ---
        # python3-sanlock picks its daemon's socket once per process, so host 2 is a child
        # process with its own SANLOCK_RUN_DIR.
        if takeover:
            d2 = Daemon(workdir, "h2")
            daemons.append(d2)
            second = subprocess.Popen([sys.executable, __file__, "--host2", path, str(io_timeout)],
                                     env=dict(os.environ, SANLOCK_RUN_DIR=d2.run_dir),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            if second.stdout.readline().strip() != "joined":
                raise RuntimeError("host 2 did not join")
            # host 1 holds vm0 (acquired above); kill its daemon: it stops renewing at once
            d1.proc.send_signal(signal.SIGKILL)
            d1.proc.wait(10)
            second.stdin.write("go\n")
            second.stdin.flush()
            result["takeover_ms_after_kill"] = float(second.stdout.readline())
            second.wait(10)
    finally:
        for d in daemons:
            d.stop()
    print(json.dumps(result))


main()
