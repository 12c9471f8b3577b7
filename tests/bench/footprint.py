#!/usr/bin/env python3
"""Footprint: memory and disk of each member as keys are loaded, and the restart time of a full member.

For a 3-member etcd cluster and then a 3-node raftkv cluster (default settings
of each, on loopback, one after the other as in compare.py):

  1. at each checkpoint of --keys (e.g. 100000,1000000) load the store with
     `raftkv bench fill` (256-byte values; fill writes keys 0..N-1, so a later
     checkpoint rewrites the earlier keys once more), wait until every member
     has applied everything, then record each member's resident size (VmRSS,
     and its anonymous/file parts, from /proc/<pid>/status) and the size of
     its data dir (allocated blocks, as `du` counts them);
  2. after the last checkpoint, stop one follower (SIGTERM; then, in a second
     trial, SIGKILL), restart it with the same arguments and data dir, and
     time from the restart until it serves a serializable read of the last
     loaded key from its own state (raftkv: GET /v1/kv/<key>?consistency=
     serializable; etcd: POST /v3/kv/range with serializable) and until it
     says it is ready (raftkv: /readyz; etcd: /health).

    tests/bench/footprint.py --raftkv target/release/raftkv
    tests/bench/footprint.py --raftkv target/release/raftkv --keys 2000,5000 --only etcd --json f.json

Prints one table for both systems with raftkv/etcd ratios. Exit status 1 if a
cluster failed to start, load, heal or restart within the deadlines.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time

import compare
import members

# `raftkv bench` keys are `k` and the zero-padded key number, --key-size
# bytes long; the default key size (8) is what compare.bench uses.
KEY_SIZE = 8


def bench_key(i):
    return f"k{i:0{KEY_SIZE - 1}d}"


def memory(pid):
    """VmRSS, RssAnon and RssFile of a live process, in bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "RssAnon", "RssFile"):
                out[name] = int(rest.split()[0]) * 1024
    return out


def disk(path):
    """(allocated bytes, apparent bytes) of every file under path."""
    allocated = apparent = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue  # removed while we walk (a compacted segment)
            allocated += st.st_blocks * 512
            apparent += st.st_size
    return allocated, apparent


def data_dir(cluster, i):
    args = cluster.commands[i][0]
    return args[args.index("--data-dir") + 1]


def sample(cluster):
    out = []
    for i, p in enumerate(cluster.procs):
        allocated, apparent = disk(data_dir(cluster, i))
        out.append({**memory(p.pid), "disk_bytes": allocated, "disk_apparent_bytes": apparent})
    return out


def restart_trial(cluster, probes, sig, key, value_size, opts):
    """Stops one follower with sig, restarts it, and times it to serving and ready."""
    members.wait_healed(probes, opts.deadline)
    leader = members.leader_index(probes, 30)
    i = (leader + 1) % len(probes)
    proc = cluster.procs[i]
    t_stop = time.monotonic()
    proc.send_signal(sig)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"member {i} did not exit within 60s of {sig.name}")
    stopped = time.monotonic() - t_stop
    t0 = time.monotonic()
    cluster.restart(i)
    proc = cluster.procs[i]
    serve = ready = None
    deadline = t0 + opts.deadline
    while (serve is None or ready is None) and time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"restarted member {i} exited with {proc.returncode}")
        if serve is None:
            v = probes[i].get_local(key)
            if v is not None:
                if len(v) != value_size:
                    raise RuntimeError(f"{key} read back {len(v)} bytes, "
                                       f"not {value_size}")
                serve = time.monotonic() - t0
        if ready is None and probes[i].ready(timeout=0.2):
            ready = time.monotonic() - t0
        time.sleep(0.002)
    rec = {"signal": sig.name, "member": i, "exit_s": stopped, "serve_s": serve, "ready_s": ready,
           "rss_after_ready": memory(proc.pid) if ready is not None else None}
    if serve is None or ready is None:
        raise RuntimeError(f"restarted member not serving/ready within "
                           f"{opts.deadline}s: {rec}")
    return rec


def run(name, start, tool, opts, workdir, result):
    """Starts one cluster, fills result with its checkpoints and restarts, stops it."""
    cluster = start(os.path.join(workdir, name))
    probes = members.members(cluster)
    result.update(checkpoints=[], restarts=[])
    try:
        compare.wait_ready(tool, cluster, 60)
        for keys in opts.keys:
            cpu0 = cluster.cpu()
            t0 = time.monotonic()
            fill = compare.bench(tool, cluster.endpoints, ["fill"], opts.fill_clients, None, None,
                                 keys, opts.value_size, timeout=opts.load_timeout)
            load_s = time.monotonic() - t0
            cluster.check_alive()
            members.wait_healed(probes, opts.deadline)
            cp = {"keys": keys, "load_s": load_s, "load_cpu_s": cluster.cpu() - cpu0,
                  "fill_requests": fill["requests"], "fill_errors": fill["errors"],
                  "members": sample(cluster)}
            result["checkpoints"].append(cp)
            rss = [m["VmRSS"] / 2**20 for m in cp["members"]]
            dsk = [m["disk_bytes"] / 2**20 for m in cp["members"]]
            print(f"{name}: {keys} keys loaded in {load_s:.1f}s ({fill['errors']} errors); "
                  f"RSS {min(rss):.1f}-{max(rss):.1f} MiB, disk {min(dsk):.1f}-{max(dsk):.1f} MiB",
                  file=sys.stderr)
            if fill["errors"]:
                raise RuntimeError(f"{fill['errors']} errors while loading")
        key = bench_key(opts.keys[-1] - 1)
        for sig in opts.signals:
            rec = restart_trial(cluster, probes, sig, key, opts.value_size, opts)
            result["restarts"].append(rec)
            print(f"{name}: after {sig.name}, restarted member serves {key} in "
                  f"{rec['serve_s'] * 1000:.0f} ms, ready in {rec['ready_s'] * 1000:.0f} ms",
                  file=sys.stderr)
    finally:
        cluster.stop()


def table(results):
    e, k = results.get("etcd"), results.get("raftkv")
    head = f"{'':<36} {'etcd':>17} {'raftkv':>17} {'raftkv/etcd':>12}"
    lines = [head, "-" * len(head)]

    def row(label, ev, kv, fmt, cmp):
        def cell(v):
            return "n/a" if v is None else fmt(v)
        ratio = compare.ratio(cmp(kv), cmp(ev)) if ev is not None and kv is not None else "-"
        lines.append(f"{label:<36} {cell(ev):>17} {cell(kv):>17} {ratio:>12}")

    def checkpoint(res, keys):
        for cp in (res or {}).get("checkpoints", []):
            if cp["keys"] == keys:
                return cp
        return None

    def minmax(cp, field):
        if cp is None:
            return None
        v = [m[field] / 2**20 for m in cp["members"]]
        return (min(v), max(v))

    def mm(v):
        return f"{v[0]:.1f} / {v[1]:.1f}"

    all_keys = sorted({cp["keys"] for r in (e, k) if r for cp in r.get("checkpoints", [])})
    for keys in all_keys:
        ce, ck = checkpoint(e, keys), checkpoint(k, keys)
        row(f"RSS MiB min / max @ {keys} keys", minmax(ce, "VmRSS"), minmax(ck, "VmRSS"), mm,
            lambda v: v[1])
        row(f"  anon RSS MiB min / max", minmax(ce, "RssAnon"), minmax(ck, "RssAnon"), mm,
            lambda v: v[1])
        row(f"disk MiB min / max @ {keys} keys", minmax(ce, "disk_bytes"),
            minmax(ck, "disk_bytes"), mm, lambda v: v[1])
        row(f"load s (fill to {keys})", ce and ce["load_s"], ck and ck["load_s"],
            lambda v: f"{v:.1f}", lambda v: v)

    def restart(res, sig):
        for r in (res or {}).get("restarts", []):
            if r["signal"] == sig:
                return r
        return None

    for sig in ("SIGTERM", "SIGKILL"):
        re, rk = restart(e, sig), restart(k, sig)
        if re is None and rk is None:
            continue
        for field, what in (("serve_s", "serve"), ("ready_s", "ready")):
            row(f"restart to {what} ms ({sig})", re and re[field] * 1000, rk and rk[field] * 1000,
                lambda v: f"{v:.0f}", lambda v: v)
        row(f"RSS MiB of it once ready ({sig})", re and re["rss_after_ready"]["VmRSS"] / 2**20,
            rk and rk["rss_after_ready"]["VmRSS"] / 2**20, lambda v: f"{v:.1f}", lambda v: v)
    lines.append("")
    lines.append("RSS: VmRSS of each of the 3 members (anon: its anonymous part, without mapped "
                 "files). disk: allocated size of each data dir. restart: from starting the "
                 "process again on its data dir to a serializable read of the last loaded key "
                 "(serve) and to /readyz or /health (ready); the RSS after a restart has no "
                 "load-burst buffers in it, unlike the RSS after loading. Ratios compare the max or "
                 "the time; < 1 favours raftkv.")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--raftkv", required=True, help="the raftkv binary (bench tool and server)")
    p.add_argument("--etcd", default="etcd", help="the etcd server binary")
    p.add_argument("--only", choices=["etcd", "raftkv"], help="measure one system only")
    p.add_argument("--keys", default="100000,1000000", help="comma-separated checkpoints")
    p.add_argument("--value-size", type=int, default=256)
    p.add_argument("--fill-clients", type=int, default=1000, help="bench clients while loading")
    p.add_argument("--signals", default="TERM,KILL",
                   help="how to stop the follower before each restart trial")
    p.add_argument("--deadline", type=float, default=300,
                   help="seconds to heal after a load, or to serve and be ready after a restart")
    p.add_argument("--load-timeout", type=float, default=7200, help="seconds for one fill")
    p.add_argument("--json", help="also write all measurements to this file")
    opts = p.parse_args()
    opts.keys = [int(k) for k in opts.keys.split(",")]
    if any(k < 1 or k > 10 ** (KEY_SIZE - 1) for k in opts.keys):
        p.error(f"--keys: each checkpoint must be in 1..{10 ** (KEY_SIZE - 1)}")
    try:
        opts.signals = [signal.Signals["SIG" + s.strip().upper().removeprefix("SIG")]
                        for s in opts.signals.split(",")]
    except KeyError as e:
        p.error(f"--signals: unknown signal {e}")

    tool = os.path.abspath(opts.raftkv)
    results = {}

    def one(name, start, workdir):
        results[name] = {}
        try:
            run(name, start, tool, opts, workdir, results[name])
        except Exception as e:
            # Keep what was measured before the failure, and say why it stopped.
            results[name]["error"] = str(e)
            raise
        return True

    failed = compare.each_system(tool, opts.etcd, opts.only, "raftkv-footprint-", one)
    print(table(results))
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(results, f, indent=2)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
