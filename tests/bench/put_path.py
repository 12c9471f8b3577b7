#!/usr/bin/env python3
"""Where one put's time goes: the stages of a write through raftkv's members.

Starts a 3-member raftkv cluster with the put-path trace points on
(RAFTKV_LOG=info,raftkv::put_path=trace; see node/src/server/put_path.rs),
puts with one client to the leader, stops the cluster, and reads the
members' logs back. For every put it takes the time from the write's
arrival at the leader's handle to each stage: on the leader, and on the
follower whose acknowledgement came first (with three members, the one that
made the majority). It prints the median of each, and the median of each
step from the stage before.

The trace points cost time themselves (each writes a log line), so the
same client first runs on a cluster without them, and both client-side
p50s are printed: read the stages as shares, not as absolute figures.

    tests/bench/put_path.py --raftkv target/release/raftkv
    tests/bench/put_path.py --raftkv target/release/raftkv --duration 3s   # quicker

The members' clocks are one machine's, so the stages of all members line
up. Exit status: 0 when both runs completed puts and the logs held a path
for them, 1 otherwise.
"""

import argparse
import datetime
import os
import re
import shutil
import statistics
import sys
import tempfile

import compare
import members

# The critical path of a put on three members, in order: (member, stage).
CRITICAL = [
    ("leader", "write received"),
    ("leader", "proposed"),
    ("leader", "append sent"),
    ("follower", "append received"),
    ("follower", "append stepped"),
    ("follower", "log write started"),
    ("follower", "log written"),
    ("follower", "ack sent"),
    ("leader", "ack received"),
    ("leader", "ack stepped"),
    ("leader", "committed"),
    ("leader", "apply started"),
    ("leader", "applied"),
    ("leader", "answered"),
    ("leader", "write returned"),
]
# The leader's own write of the entry, in parallel with the followers'.
PARALLEL = [
    ("leader", "log write started"),
    ("leader", "log written"),
    ("leader", "persisted"),
]

LINE = re.compile(r"^(\S+)\s+TRACE\s.*?raftkv::put_path: (.+?) index=(\d+)")


def timestamp(text):
    """Seconds since the epoch of an RFC 3339 timestamp (any fraction)."""
    text = text.rstrip("Z")
    whole, _, fraction = text.partition(".")
    t = datetime.datetime.fromisoformat(whole).replace(tzinfo=datetime.timezone.utc)
    return t.timestamp() + (float("0." + fraction) if fraction else 0.0)


def read_events(path):
    """[(time, stage, index)] from one member's log, in file order."""
    events = []
    with open(path, errors="replace") as f:
        for line in f:
            m = LINE.match(line)
            if m:
                events.append((timestamp(m.group(1)), m.group(2), int(m.group(3))))
    return events


def first_times(events):
    """{(stage, index): the first time it was reached}."""
    out = {}
    for t, stage, index in events:
        out.setdefault((stage, index), t)
    return out


def unindexed(events, stage):
    """Sorted times of a stage that carries no index (arrival, return)."""
    return sorted(t for t, s, i in events if s == stage and i == 0)


def paths(logs, leader):
    """One {(member, stage): time} per put proposed on the leader."""
    by_member = {m: first_times(ev) for m, ev in logs.items()}
    lead = by_member[leader]
    followers = [m for m in logs if m != leader]
    received = unindexed(logs[leader], "write received")
    returned = unindexed(logs[leader], "write returned")
    out = []
    for t_prop, stage, index in logs[leader]:
        if stage != "proposed" or index == 0:
            continue
        # One client: the arrival is the last one before the proposal, the
        # return the first one after the answer.
        before = [t for t in received if t <= t_prop]
        answered = lead.get(("answered", index))
        after = [t for t in returned if answered is not None and t >= answered]
        acks = [(by_member[f][("ack sent", index)], f) for f in followers
                if ("ack sent", index) in by_member[f]]
        if not before or not after or not acks:
            continue
        follower = min(acks)[1]
        path = {("leader", "write received"): before[-1],
                ("leader", "write returned"): after[0]}
        for (member, stage) in CRITICAL + PARALLEL:
            if (member, stage) in path:
                continue
            times = lead if member == "leader" else by_member[follower]
            if (stage, index) in times:
                path[(member, stage)] = times[(stage, index)]
        if all(k in path for k in CRITICAL):
            out.append(path)
    return out


def report(puts, untraced, traced):
    start = ("leader", "write received")
    print(f"{len(puts)} puts traced; client p50 {untraced['latency']['p50_ms']:.3f} ms "
          f"without the trace points, {traced['latency']['p50_ms']:.3f} ms with them")
    print()
    print(f"| {'member':8} | {'stage':17} | since arrival µs (p50) | step µs (p50) |")
    print(f"|{'-' * 10}|{'-' * 19}|{'-' * 24}|{'-' * 15}|")

    def row(rows):
        prev = None
        for key in rows:
            since = statistics.median((p[key] - p[start]) * 1e6 for p in puts if key in p)
            step = "" if prev is None else f"{statistics.median((p[key] - p[prev]) * 1e6 for p in puts if key in p and prev in p):.0f}"
            print(f"| {key[0]:8} | {key[1]:17} | {since:22.0f} | {step:>13} |")
            prev = key

    row(CRITICAL)
    print()
    print("In parallel with the followers (from the append's sending):")
    print()
    print(f"| {'member':8} | {'stage':17} | since arrival µs (p50) | step µs (p50) |")
    print(f"|{'-' * 10}|{'-' * 19}|{'-' * 24}|{'-' * 15}|")
    row([("leader", "append sent")] + PARALLEL)


def run(tool, workdir, duration, trace):
    """Starts a cluster (traced or not), puts with one client to its leader
    for `duration`; returns (bench result, {member: log path}, leader)."""
    env_before = os.environ.get("RAFTKV_LOG")
    if trace:
        os.environ["RAFTKV_LOG"] = "info,raftkv::put_path=trace"
    try:
        cluster = compare.start_raftkv(tool, workdir)
    finally:
        if env_before is None:
            os.environ.pop("RAFTKV_LOG", None)
        else:
            os.environ["RAFTKV_LOG"] = env_before
    try:
        compare.wait_ready(tool, cluster, 30)
        leader = members.leader_index(members.members(cluster), 30)
        result = compare.bench(tool, [cluster.endpoints[leader]], ["put"], 1,
                               duration, "1s", 100000, 256)
    finally:
        cluster.stop()
    logs = {i: os.path.join(workdir, f"n{i + 1}.log") for i in range(len(cluster.endpoints))}
    return result, logs, leader


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--raftkv", required=True, help="the raftkv binary (bench tool and server)")
    ap.add_argument("--duration", default="6s", help="of each run (default 6s)")
    opts = ap.parse_args()
    tool = os.path.abspath(opts.raftkv)
    workdir = tempfile.mkdtemp(prefix="raftkv-put-path-")
    ok = False
    try:
        untraced, _, _ = run(tool, os.path.join(workdir, "plain"), opts.duration, False)
        traced, logs, leader = run(tool, os.path.join(workdir, "traced"), opts.duration, True)
        events = {m: read_events(p) for m, p in logs.items()}
        puts = paths(events, leader)
        if untraced["requests"] and traced["requests"] and puts:
            report(puts, untraced, traced)
            ok = True
        else:
            print(f"no put paths found (puts: {untraced['requests']} / {traced['requests']}, "
                  f"traced paths: {len(puts)}); logs in {workdir}", file=sys.stderr)
    finally:
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
