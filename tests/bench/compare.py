#!/usr/bin/env python3
"""Races raftkv against etcd on one machine, in one run, with one client.

Starts a 3-member etcd cluster on loopback (default settings, fsync on), runs
the workloads with `raftkv bench`, stops it; then does the same with a 3-node
raftkv cluster (`--members 5` for five of each). The clusters never run at
the same time, so neither steals CPU from the other's measurement. Prints
one table: throughput and p50/p99 for both, the raftkv/etcd ratios, and the
CPU seconds each cluster's processes used during each row (from
/proc/<pid>/stat). The client's connections start at the leader's endpoint
and go round the members from there, so a 1-client row always measures a
client of the leader, in both systems.

    tests/bench/compare.py --raftkv target/release/raftkv            # full race
    tests/bench/compare.py --raftkv target/release/raftkv --smoke    # CI smoke
    tests/bench/compare.py --raftkv target/release/raftkv --only etcd

The bench tool is the `raftkv` binary itself (`raftkv bench`), so the etcd
half runs even before raftkv's server does. Exit status: 0 when every row of
every cluster that ran completed requests, 1 otherwise.
"""

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import members as member_probes

CLK_TCK = os.sysconf("SC_CLK_TCK")

# (row name, bench workload arguments)
WORKLOADS = [
    ("put", ["put"]),
    ("get linearizable", ["get", "--consistency", "linearizable"]),
    ("get serializable", ["get", "--consistency", "serializable"]),
]


_HANDED_OUT = set()


def free_ports(n):
    """n distinct loopback ports that are free right now, below the
    kernel's ephemeral range: a port from that range, once released, may be
    taken by an outgoing connection (a member dialing its peers) before the
    member meant to listen on it binds it. Never the same port twice in one
    run."""
    low = 32768
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    ports = []
    while len(ports) < n:
        port = random.randrange(max(1024, low - 16384), low)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        ports.append(port)
    return ports


def cpu_seconds(pid):
    """User + system CPU seconds of a live process (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            # The command name (field 2) may hold spaces: split after it.
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


class Cluster:
    """A set of server processes started by this script and stopped by PID."""

    def __init__(self, name, workdir):
        self.name = name
        self.workdir = workdir
        os.makedirs(workdir, exist_ok=True)
        self.procs = []
        self.endpoints = []
        # Per member, in spawn order: the base URL of its HTTP API (raftkv's
        # --listen-http; etcd's client URL, which serves the JSON gateway).
        self.http_urls = []
        self.commands = []

    def _popen(self, args, log_name, mode):
        with open(os.path.join(self.workdir, log_name), mode) as log:
            return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)

    def spawn(self, args, log_name):
        self.commands.append((args, log_name))
        self.procs.append(self._popen(args, log_name, "wb"))

    def restart(self, i):
        """Starts member i again with its first arguments, so on its own data
        dir; its log is appended to. The old process must have exited."""
        if self.procs[i].poll() is None:
            raise RuntimeError(f"{self.name}: member {i} is still running")
        args, log_name = self.commands[i]
        self.procs[i] = self._popen(args, log_name, "ab")

    def cpu(self):
        return sum(cpu_seconds(p.pid) for p in self.procs)

    def check_alive(self):
        for p in self.procs:
            if p.poll() is not None:
                raise RuntimeError(
                    f"{self.name}: a server exited with status {p.returncode}; logs in {self.workdir}"
                )

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def start_etcd(etcd, workdir, members=3):
    c = Cluster("etcd", workdir)
    ports = free_ports(2 * members)
    peers = [f"http://127.0.0.1:{p}" for p in ports[:members]]
    clients = [f"http://127.0.0.1:{p}" for p in ports[members:]]
    initial = ",".join(f"m{i}={peers[i]}" for i in range(members))
    for i in range(members):
        c.spawn(
            [
                etcd,
                "--name", f"m{i}",
                "--data-dir", os.path.join(workdir, f"m{i}"),
                "--listen-peer-urls", peers[i],
                "--initial-advertise-peer-urls", peers[i],
                "--listen-client-urls", clients[i],
                "--advertise-client-urls", clients[i],
                "--initial-cluster", initial,
                "--initial-cluster-state", "new",
                "--initial-cluster-token", "raftkv-compare",
            ],
            f"m{i}.log",
        )
    c.endpoints = [u.removeprefix("http://") for u in clients]
    c.http_urls = clients
    return c


def start_raftkv(raftkv, workdir, members=3):
    c = Cluster("raftkv", workdir)
    ports = free_ports(3 * members)
    peer, client, http = ports[:members], ports[members:2 * members], ports[2 * members:]
    initial = ",".join(f"{i + 1}=127.0.0.1:{peer[i]}" for i in range(members))
    # raftkv serve refuses an unauthenticated peer port: a secret per run.
    secret = os.path.join(workdir, "peer-secret")
    with open(secret, "w") as f:
        f.write(os.urandom(32).hex())
    for i in range(members):
        c.spawn(
            [
                raftkv, "serve",
                "--id", str(i + 1),
                "--data-dir", os.path.join(workdir, f"n{i + 1}"),
                "--listen-client", f"127.0.0.1:{client[i]}",
                "--listen-peer", f"127.0.0.1:{peer[i]}",
                "--listen-http", f"127.0.0.1:{http[i]}",
                "--initial-cluster", initial,
                "--peer-secret-file", secret,
            ],
            f"n{i + 1}.log",
        )
    c.endpoints = [f"127.0.0.1:{p}" for p in client]
    c.http_urls = [f"http://127.0.0.1:{p}" for p in http]
    return c


def bench(tool, endpoints, args, clients, duration, warmup, keys, value_size, timeout=600):
    conns = max(1, min(clients // 10, 100))
    cmd = [
        tool, "bench", *args,
        "--endpoints", ",".join(endpoints),
        "--clients", str(clients),
        "--conns", str(conns),
        "--keys", str(keys),
        "--value-size", str(value_size),
        "--output", "json",
        "--no-progress",
    ]
    if duration is not None:
        cmd += ["--duration", duration, "--warmup", warmup]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {out.stderr.strip()}")
    return json.loads(out.stdout)


def wait_ready(tool, cluster, timeout):
    """Polls with single puts through every endpoint until each succeeds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        cluster.check_alive()
        try:
            for ep in cluster.endpoints:
                r = bench(tool, [ep], ["put", "--requests", "1"], 1, None, None, 1, 8)
                if r["requests"] != 1:
                    raise RuntimeError(f"{ep}: {r['errors_by_code']}")
            return
        except (RuntimeError, json.JSONDecodeError, subprocess.TimeoutExpired) as e:
            last = e
            time.sleep(0.2)
    raise RuntimeError(f"{cluster.name} did not become ready in {timeout}s: {last}")


def race(name, start, tool, opts, workdir):
    """Starts one cluster, runs every row against it, stops it."""
    cluster = start(os.path.join(workdir, name))
    rows = {}
    try:
        wait_ready(tool, cluster, 60)
        # The leader's endpoint first: one client (one connection) then
        # talks to the leader in every run and in both systems, instead of
        # to whichever member was spawned first; more connections spread
        # over the members alike.
        leader = member_probes.leader_index(member_probes.members(cluster), 30)
        endpoints = [cluster.endpoints[leader]] + [
            e for i, e in enumerate(cluster.endpoints) if i != leader]
        cpu0 = cluster.cpu()
        t0 = time.monotonic()
        fill = bench(tool, endpoints, ["fill"], min(1000, max(opts.clients)), None, None,
                     opts.keys, opts.value_size)
        print(f"{name}: loaded {fill['requests']} keys in {time.monotonic() - t0:.1f}s "
              f"({fill['errors']} errors)", file=sys.stderr)
        for wname, wargs in WORKLOADS:
            for clients in opts.clients:
                cluster.check_alive()
                before = cluster.cpu()
                r = bench(tool, endpoints, wargs, clients, opts.duration, opts.warmup,
                          opts.keys, opts.value_size)
                r["cluster_cpu_s"] = cluster.cpu() - before
                rows[(wname, clients)] = r
                print(f"{name}: {wname:<17} {clients:>5} clients: {r['throughput']:9.1f} req/s "
                      f"p99 {r['latency']['p99_ms']:.1f} ms, {r['errors']} errors",
                      file=sys.stderr)
        total_cpu = cluster.cpu() - cpu0
    finally:
        cluster.stop()
    return rows, total_cpu


def cpu_per_request(r):
    """Cluster CPU microseconds per measured request (the row's warm-up
    requests are not counted, so this slightly overstates it, equally for
    both clusters)."""
    return 1e6 * r["cluster_cpu_s"] / r["requests"] if r["requests"] else 0.0


def each_system(tool, etcd, only, prefix, run, members=3):
    """Calls `run(name, start, workdir)` for etcd (`etcd`: a path, or a name
    on the PATH), then raftkv (or only the one `only` names), where
    `start(dir)` starts that system's cluster of `members`; one cluster at a
    time. `run` returns whether its measurements are complete; an exception
    it raises is printed and counts as a failure.
    Returns whether anything failed. The work directory (the members' data
    and logs) is removed, unless something failed: then its path is printed."""
    etcd = shutil.which(etcd) or etcd
    plan = [("etcd", lambda d: start_etcd(etcd, d, members)),
            ("raftkv", lambda d: start_raftkv(tool, d, members))]
    failed = False
    workdir = tempfile.mkdtemp(prefix=prefix)
    try:
        for name, start in plan:
            if only and only != name:
                continue
            try:
                if not run(name, start, workdir):
                    failed = True
            except (RuntimeError, OSError, ValueError, KeyError, subprocess.TimeoutExpired) as e:
                print(f"{name}: {e}", file=sys.stderr)
                failed = True
    finally:
        if failed:
            print(f"logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return failed


def ratio(a, b):
    return f"{a / b:.2f}" if b else "-"


def table(opts, results):
    etcd, raftkv = results.get("etcd"), results.get("raftkv")
    head = (f"{'workload':<17} {'clients':>7} | {'etcd req/s':>10} {'p50 ms':>7} {'p99 ms':>8} "
            f"{'cpu s':>6} {'us/req':>6} | {'raftkv req/s':>12} {'p50 ms':>7} {'p99 ms':>8} "
            f"{'cpu s':>6} {'us/req':>6} | {'thr x':>6} {'p99 /':>6} {'cpu /':>6}")
    lines = [head, "-" * len(head)]

    def cols(r, width):
        if r is None:
            return f"{'n/a':>{width}} {'':>7} {'':>8} {'':>6} {'':>6}"
        return (f"{r['throughput']:>{width}.1f} {r['latency']['p50_ms']:>7.2f} "
                f"{r['latency']['p99_ms']:>8.2f} {r['cluster_cpu_s']:>6.1f} {cpu_per_request(r):>6.0f}")

    for wname, _ in WORKLOADS:
        for clients in opts.clients:
            e = etcd[0].get((wname, clients)) if etcd else None
            k = raftkv[0].get((wname, clients)) if raftkv else None
            thr = ratio(k["throughput"], e["throughput"]) if e and k else "-"
            p99 = ratio(e["latency"]["p99_ms"], k["latency"]["p99_ms"]) if e and k else "-"
            cpu = ratio(cpu_per_request(e), cpu_per_request(k)) if e and k else "-"
            lines.append(f"{wname:<17} {clients:>7} | {cols(e, 10)} | {cols(k, 12)} | "
                         f"{thr:>6} {p99:>6} {cpu:>6}")
    lines.append("")
    lines.append("thr x: raftkv throughput / etcd's.  p99 /: etcd p99 / raftkv p99 (higher is better "
                 "for raftkv).  cpu s: CPU seconds the cluster's processes used during the row "
                 "(warm-up included).  us/req: those CPU microseconds per measured request.  "
                 "cpu /: etcd us/req / raftkv us/req.")
    for name in ("etcd", "raftkv"):
        if name in results:
            rows = results[name][0].values()
            per = [r["cpu_us_per_request"] for r in rows if r.get("cpu_us_per_request")]
            bench_cpu = f"{sum(per) / len(per):.0f}" if per else "?"
            lines.append(f"{name}: {results[name][1]:.1f} CPU seconds over the whole race "
                         f"(loading included); the bench itself used {bench_cpu} µs of CPU "
                         "per request on average")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--raftkv", required=True, help="the raftkv binary (bench tool and server)")
    p.add_argument("--etcd", default="etcd", help="the etcd server binary")
    p.add_argument("--only", choices=["etcd", "raftkv"], help="race one cluster only")
    p.add_argument("--smoke", action="store_true", help="a few seconds per row (CI)")
    p.add_argument("--clients", default="1,100,1000")
    p.add_argument("--duration", help="per row (default 10s; smoke 2s)")
    p.add_argument("--warmup", help="per row (default 2s; smoke 0.5s)")
    p.add_argument("--keys", type=int, help="key space (default 100000; smoke 1000)")
    p.add_argument("--value-size", type=int, default=256)
    p.add_argument("--members", type=int, default=3, help="members of each cluster (default 3)")
    p.add_argument("--json", help="also write all results to this file")
    opts = p.parse_args()
    opts.clients = [int(c) for c in opts.clients.split(",")]
    opts.duration = opts.duration or ("2s" if opts.smoke else "10s")
    opts.warmup = opts.warmup or ("500ms" if opts.smoke else "2s")
    opts.keys = opts.keys or (1000 if opts.smoke else 100_000)

    tool = os.path.abspath(opts.raftkv)
    results = {}

    def one(name, start, workdir):
        results[name] = race(name, start, tool, opts, workdir)
        if any(r["requests"] == 0 for r in results[name][0].values()):
            print(f"{name}: a row completed no request", file=sys.stderr)
            return False
        return True

    failed = each_system(tool, opts.etcd, opts.only, "raftkv-compare-", one, opts.members)
    print(table(opts, results))
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump({name: {"rows": [{"workload": w, "clients": c, **r}
                                       for (w, c), r in rows.items()],
                              "cpu_s": cpu}
                       for name, (rows, cpu) in results.items()}, f, indent=2)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
