#!/usr/bin/env python3
"""Failover: time from `kill -9` of the leader to the first write that succeeds after it.

For a 3-member etcd cluster and then a 3-node raftkv cluster (default
settings of each, on loopback, one after the other as in compare.py), repeats
N trials of:

  1. find the leader (the member all three agree leads);
  2. start writers: a few threads putting small values through the two
     *surviving* members in a tight loop, each request with a short timeout
     (raftkv: PUT /v1/kv/<key>; etcd: the JSON gateway's POST /v3/kv/put);
  3. SIGKILL the leader by PID; the failover time is from just before the
     kill to the end of the first successful write that was *sent* after the
     kill returned (so a write the old leader committed does not count);
  4. restart the killed member with the same arguments and data dir, and wait
     until all three are ready, agree on a leader and have caught up.

Several writers run at once so that a request stuck until its timeout on a
member without a leader does not hide the moment writes work again: the
resolution is about the per-request timeout divided by the writer count.

    tests/bench/failover.py --raftkv target/release/raftkv
    tests/bench/failover.py --raftkv target/release/raftkv --trials 3 --only raftkv --json f.json

Prints one table: trials, median, p90, max, min per system and raftkv/etcd.
Exit status 1 if any trial's write never succeeded within --deadline seconds,
or a cluster failed to start or heal.
"""

import argparse
import json
import os
import signal
import statistics
import sys
import threading
import time

import compare
import members

VALUE = b"failover-probe-value"


class Writers:
    """Threads putting through the given members until stopped; they note
    the first success of a request sent after `armed_at`."""

    def __init__(self, probes, threads, timeout):
        self.probes = probes
        self.timeout = timeout
        self.lock = threading.Lock()
        self.stop_flag = threading.Event()
        self.recovered = threading.Event()
        self.armed_at = None
        self.recovered_at = None
        self.recovered_via = None
        self.attempts = 0
        self.successes = 0
        self.threads = [threading.Thread(target=self._run, args=(k,), daemon=True)
                        for k in range(threads)]
        for t in self.threads:
            t.start()

    def _run(self, k):
        n = 0
        while not self.stop_flag.is_set():
            i = (k + n) % len(self.probes)
            key = f"failover/{k}/{n % 1000}"
            n += 1
            t0 = time.monotonic()
            ok = self.probes[i].put(key, VALUE, self.timeout)
            t1 = time.monotonic()
            with self.lock:
                self.attempts += 1
                if ok:
                    self.successes += 1
                    if (self.armed_at is not None and t0 >= self.armed_at
                            and self.recovered_at is None):
                        self.recovered_at = t1
                        self.recovered_via = i
                        self.recovered.set()
            if not ok and t1 - t0 < 0.005:
                # A fast refusal (no leader yet): do not spin the CPU the
                # cluster needs to elect one, but retry within a millisecond.
                time.sleep(0.001)

    def wait_for_successes(self, n, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if self.successes >= n:
                    return
            time.sleep(0.005)
        raise RuntimeError(f"writes did not succeed before the kill ({self.successes} in {timeout}s)")

    def arm(self):
        with self.lock:
            self.armed_at = time.monotonic()

    def stop(self):
        self.stop_flag.set()
        for t in self.threads:
            t.join(timeout=5)


def trial(cluster, probes, n, opts):
    """One kill/recover cycle; returns its record (recovery_s None if writes never came back)."""
    leader = members.leader_index(probes, 30)
    killed_status = probes[leader].status()
    survivors = [i for i in range(len(probes)) if i != leader]
    writers = Writers([probes[i] for i in survivors], opts.writers, opts.request_timeout_ms / 1000)
    try:
        writers.wait_for_successes(opts.writers, 10)
        proc = cluster.procs[leader]
        t_kill = time.monotonic()
        os.kill(proc.pid, signal.SIGKILL)
        writers.arm()
        recovered = writers.recovered.wait(opts.deadline)
        recovery = writers.recovered_at - t_kill if recovered else None
    finally:
        writers.stop()
    proc.wait(timeout=10)
    rec = {
        "trial": n,
        "killed_member": killed_status.member if killed_status else str(leader),
        "recovery_s": recovery,
        "first_write_via_member": (probes[survivors[writers.recovered_via]].url
                                   if recovery is not None else None),
        "write_attempts": writers.attempts,
    }
    cluster.restart(leader)
    rec["heal_s"] = members.wait_healed(probes, opts.heal_timeout)
    new_leader = probes[members.leader_index(probes, 30)].status()
    rec["leader_after"] = new_leader.member if new_leader else None
    return rec


def run(name, start, tool, opts, workdir, records):
    """Starts one cluster, appends one record per trial to records, stops it."""
    cluster = start(os.path.join(workdir, name))
    probes = members.members(cluster)
    try:
        compare.wait_ready(tool, cluster, 60)
        members.wait_healed(probes, 60)
        for n in range(opts.trials):
            rec = trial(cluster, probes, n, opts)
            records.append(rec)
            took = ("NEVER" if rec["recovery_s"] is None else f"{rec['recovery_s'] * 1000:.0f} ms")
            print(f"{name}: trial {n + 1}/{opts.trials}: killed leader, first write after {took} "
                  f"({rec['write_attempts']} attempts); healed in {rec['heal_s']:.1f}s",
                  file=sys.stderr)
    finally:
        cluster.stop()


def percentile(values, p):
    """Nearest-rank percentile of a non-empty list."""
    s = sorted(values)
    return s[max(0, min(len(s) - 1, -(-len(s) * p // 100) - 1))]


def summary(records):
    ok = [r["recovery_s"] * 1000 for r in records if r["recovery_s"] is not None]
    if not ok:
        return None
    return {"trials": len(records), "recovered": len(ok), "median_ms": statistics.median(ok),
            "p90_ms": percentile(ok, 90), "max_ms": max(ok), "min_ms": min(ok)}


def table(results):
    sums = {name: summary(recs) for name, recs in results.items()}
    head = (f"{'system':<15} {'trials':>6} {'ok':>4} {'median ms':>10} {'p90 ms':>8} "
            f"{'max ms':>8} {'min ms':>8}")
    lines = [head, "-" * len(head)]
    for name in ("etcd", "raftkv"):
        if name not in results:
            continue
        s = sums[name]
        if s is None:
            lines.append(f"{name:<15} {len(results[name]):>6} {0:>4} {'n/a':>10}")
            continue
        lines.append(f"{name:<15} {s['trials']:>6} {s['recovered']:>4} {s['median_ms']:>10.0f} "
                     f"{s['p90_ms']:>8.0f} {s['max_ms']:>8.0f} {s['min_ms']:>8.0f}")
    e, k = sums.get("etcd"), sums.get("raftkv")
    if e and k:
        cols = [compare.ratio(k[f], e[f]) for f in ("median_ms", "p90_ms", "max_ms", "min_ms")]
        lines.append(f"{'raftkv / etcd':<15} {'':>6} {'':>4} {cols[0]:>10} {cols[1]:>8} "
                     f"{cols[2]:>8} {cols[3]:>8}")
    lines.append("")
    lines.append("Time from SIGKILL of the leader to the first successful put sent afterwards "
                 "through a surviving member (lower is better; ratio < 1 favours raftkv).")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--raftkv", required=True, help="the raftkv binary (server, and bench for readiness)")
    p.add_argument("--etcd", default="etcd", help="the etcd server binary")
    p.add_argument("--only", choices=["etcd", "raftkv"], help="measure one system only")
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--writers", type=int, default=8, help="concurrent writer threads")
    p.add_argument("--request-timeout-ms", type=int, default=200, help="per write request")
    p.add_argument("--deadline", type=float, default=30,
                   help="seconds after the kill within which a write must succeed")
    p.add_argument("--heal-timeout", type=float, default=60,
                   help="seconds for the restarted member to rejoin and catch up")
    p.add_argument("--json", help="also write every trial's record to this file")
    opts = p.parse_args()

    tool = os.path.abspath(opts.raftkv)
    results = {}

    def one(name, start, workdir):
        results[name] = []
        run(name, start, tool, opts, workdir, results[name])
        if any(r["recovery_s"] is None for r in results[name]):
            print(f"{name}: a trial did not recover within {opts.deadline}s", file=sys.stderr)
            return False
        return True

    failed = compare.each_system(tool, opts.etcd, opts.only, "raftkv-failover-", one)
    print(table(results))
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump({name: {"trials": recs, "summary": summary(recs)}
                       for name, recs in results.items()}, f, indent=2)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
