#!/usr/bin/env python3
"""The Grafana dashboard against a real cluster and a real Prometheus.

Starts a 3-node raftkv cluster (`raftkv serve`, loopback only) and a real
Prometheus (Debian's) scraping it every second, drives writes over HTTP and
over etcd gRPC (etcdctl) and one leader change, then evaluates every query of
every panel of deploy/grafana/raftkv.json through Prometheus's HTTP API, with
the dashboard's variables resolved the way Grafana would (the namespace and
cluster values come from the variables' own label_values queries). Fails if a
variable or a query returns no data: the etcd mixin's copy-pasted "proposals"
panel is the mistake this catches.

Usage:
    tests/dashboard/check_panels.py --raftkv target/debug/raftkv
        [--dashboard deploy/grafana/raftkv.json] [--prometheus prometheus]
        [--etcdctl etcdctl] [--keep]

The same Prometheus also loads deploy/prometheus/alerts.yaml: every rule
must evaluate without error against the real series, and none may fire on
the healthy cluster (checked before the leader change, when nothing may even
be pending).

Every process it starts is stopped by its handle on exit; data lives in a
temporary directory (kept with --keep, for reading the node logs).
"""

import argparse
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

NAMESPACE = "dashboard-test"
RATE_INTERVAL = "15s"
REPO = Path(__file__).resolve().parents[2]


class Failure(Exception):
    pass


_HANDED_OUT = set()


def free_port():
    """A free loopback port below the kernel's ephemeral range. A port from
    that range, once released, may be taken by any outgoing connection (a
    node dialing a peer) before the node meant to listen on it binds it; a
    CI run lost its third node that way."""
    low = 32768
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    while True:
        port = random.randrange(max(1024, low - 16384), low)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port


def http(method, url, body=None, timeout=5):
    data = body.encode() if isinstance(body, str) else body
    req = urllib.request.Request(url, data=data, method=method)
    if isinstance(body, str) and body.startswith("{"):
        req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, OSError) as e:
        return None, str(e).encode()


def wait_for(what, deadline_s, probe, interval=0.2):
    """Polls `probe` until it returns a truthy value or the deadline passes."""
    end = time.monotonic() + deadline_s
    last = None
    while time.monotonic() < end:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise Failure(f"timed out after {deadline_s}s waiting for {what}")


# The peers' shared secret, one per run.
PEER_SECRET = os.urandom(32).hex()


class Node:
    def __init__(self, binary, node_id, ports, initial_cluster, workdir):
        self.id = node_id
        self.name = f"n{node_id}"
        self.client, self.peer, self.http_port = ports
        self.data = workdir / self.name
        self.log = workdir / f"{self.name}.log"
        self.args = [
            binary, "serve",
            "--id", str(node_id),
            "--data-dir", str(self.data),
            "--listen-client", f"127.0.0.1:{self.client}",
            "--listen-peer", f"127.0.0.1:{self.peer}",
            "--listen-http", f"127.0.0.1:{self.http_port}",
            "--advertise-peer", f"http://127.0.0.1:{self.peer}",
            "--advertise-client", f"http://127.0.0.1:{self.client}",
            "--initial-cluster", initial_cluster,
        ]
        self.proc = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.http_port}"

    def start(self):
        # The name goes by environment (RAFTKV_NAME): it labels the metrics
        # but is not among the flags every version must have.
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAFTKV_")}
        env["RAFTKV_NAME"] = self.name
        # raftkv serve refuses an unauthenticated peer port.
        env["RAFTKV_PEER_SECRET"] = PEER_SECRET
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, env=env)

    def status(self):
        code, body = http("GET", f"{self.url}/v1/status", timeout=2)
        if code != 200:
            return None
        try:
            return json.loads(body)
        except ValueError:
            return None

    def stop(self, sig=signal.SIGTERM):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def leader_id(nodes):
    """The leader id all running nodes that answer agree on, else None."""
    seen = set()
    for n in nodes:
        if n.proc and n.proc.poll() is None:
            st = n.status()
            if not st or not st.get("leader_id"):
                return None
            seen.add(st["leader_id"])
    return seen.pop() if len(seen) == 1 else None


def start_prometheus(binary, nodes, workdir, rules):
    port = free_port()
    cfg = workdir / "prometheus.yml"
    targets = ", ".join(f'"127.0.0.1:{n.http_port}"' for n in nodes)
    cfg.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files: [{json.dumps(str(rules))}]\n"
        "scrape_configs:\n  - job_name: raftkv\n    static_configs:\n"
        f"      - targets: [{targets}]\n        labels:\n          namespace: {NAMESPACE}\n"
    )
    log = open(workdir / "prometheus.log", "ab")
    proc = subprocess.Popen(
        [binary, f"--config.file={cfg}", f"--storage.tsdb.path={workdir / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_for("Prometheus to be ready", 30, lambda: http("GET", f"{url}/-/ready")[0] == 200)
    return proc, url


def prom_api(url, path, **params):
    code, body = http("GET", f"{url}/api/v1/{path}?{urllib.parse.urlencode(params, doseq=True)}", timeout=20)
    if code != 200:
        raise Failure(f"Prometheus {path} {params}: HTTP {code}: {body[:300]!r}")
    return json.loads(body)["data"]


def check_rules(prom_url, allow_pending):
    """Problems with the alert rules: evaluation errors, alerts active on a
    healthy cluster (pending ones too unless `allow_pending`)."""
    groups = prom_api(prom_url, "rules")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    if not rules:
        return ["Prometheus loaded no alert rules"]
    problems = [f"alert rule {r['name']} failed to evaluate: {r.get('lastError')}"
                for r in rules if r.get("health") != "ok"]
    problems += [f"alert {r['name']} is {r['state']} on a healthy cluster" for r in rules
                 if r.get("state") == "firing" or (r.get("state") == "pending" and not allow_pending)]
    print(f"{len(rules)} alert rules checked ({'firing' if allow_pending else 'firing or pending'}): "
          f"{len(problems)} problems")
    return problems


def drive_writes(nodes, seconds, etcdctl, counter):
    """Writes and reads through every node, over HTTP and etcd gRPC."""
    end = time.monotonic() + seconds
    ok = 0
    while time.monotonic() < end:
        for n in nodes:
            if not (n.proc and n.proc.poll() is None):
                continue
            counter[0] += 1
            k = f"dash-{counter[0]}"
            code, _ = http("PUT", f"{n.url}/v1/kv/{k}", f"v{counter[0]}")
            ok += code == 200
            http("GET", f"{n.url}/v1/kv/{k}")
            http("GET", f"{n.url}/v1/kv/{k}?consistency=serializable")
            http("GET", f"{n.url}/v1/kv/absent-key")
            if etcdctl:
                ep = f"127.0.0.1:{n.client}"
                subprocess.run([etcdctl, "--endpoints", ep, "--command-timeout=3s", "put", f"g{k}", "x"],
                               capture_output=True, timeout=10)
                subprocess.run([etcdctl, "--endpoints", ep, "--command-timeout=3s", "get", f"g{k}"],
                               capture_output=True, timeout=10)
        time.sleep(0.05)
    return ok


def change_leader(nodes):
    old = wait_for("a leader", 30, lambda: leader_id(nodes))
    target = next(n.id for n in nodes if n.id != old)
    leader = next(n for n in nodes if n.id == old)
    code, body = http("POST", f"{leader.url}/v1/leader/transfer", json.dumps({"to": target}), timeout=10)
    how = f"leader transfer {old} -> {target}"
    if code is None or code >= 300:
        # No transfer API: restart the leader, which forces an election.
        how = f"restart of leader {old} (transfer answered {code}: {body[:120]!r})"
        leader.stop()
        wait_for("a new leader after stopping the old one", 30,
                 lambda: (lambda l: l and l != old)(leader_id([n for n in nodes if n is not leader])))
        leader.start()
    new = wait_for("a different leader", 30, lambda: (lambda l: l if l and l != old else None)(leader_id(nodes)))
    return f"{how}; leader now {new}"


def dashboard_queries(dashboard):
    def walk(panels):
        for p in panels:
            yield p
            yield from walk(p.get("panels", []))
    for p in walk(dashboard.get("panels", [])):
        if p.get("type") != "row":
            for t in p.get("targets", []):
                yield p["title"], t.get("refId", "?"), t["expr"]


def resolve_variables(prom_url, dashboard):
    """Runs each label_values(metric{...}, label) variable query like Grafana."""
    values = {}
    for v in dashboard.get("templating", {}).get("list", []):
        if v.get("type") != "query":
            continue
        q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        inner = q[len("label_values("):-1]
        selector, label = (s.strip() for s in inner.rsplit(",", 1))
        for name, val in values.items():
            selector = selector.replace(f"${name}", val)
        got = prom_api(prom_url, f"label/{label}/values", **{"match[]": selector})
        if not got:
            raise Failure(f"variable {v['name']} ({q}) returned no values")
        values[v["name"]] = got[0]
        print(f"variable ${v['name']}: {got} (using {got[0]!r})")
    return values


def uses_only_operator_metrics(expr):
    names = re.findall(r"\b((?:raftkv|process)_[a-z0-9_]+)", expr)
    return bool(names) and all(n.startswith("raftkv_operator_") for n in names)


def has_data(result):
    return sum(1 for s in result if any(not math.isnan(float(val)) for _, val in s["values"]))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--raftkv", required=True, help="path of the raftkv binary")
    ap.add_argument("--dashboard", default=str(REPO / "deploy/grafana/raftkv.json"))
    ap.add_argument("--alerts", default=str(REPO / "deploy/prometheus/alerts.yaml"))
    ap.add_argument("--prometheus", default=shutil.which("prometheus") or "prometheus")
    ap.add_argument("--etcdctl", default=shutil.which("etcdctl"))
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()
    dashboard = json.loads(Path(args.dashboard).read_text(encoding="utf-8"))
    if not args.etcdctl:
        print("etcdctl not found: the gRPC panels will have no traffic", file=sys.stderr)

    workdir = Path(tempfile.mkdtemp(prefix="raftkv-dashboard-"))
    nodes, prom = [], None
    try:
        ports = [(free_port(), free_port(), free_port()) for _ in range(3)]
        initial = ",".join(f"{i + 1}=http://127.0.0.1:{p[1]}" for i, p in enumerate(ports))
        nodes = [Node(args.raftkv, i + 1, p, initial, workdir) for i, p in enumerate(ports)]
        for n in nodes:
            n.start()
        first = wait_for("the cluster to elect a leader", 60, lambda: leader_id(nodes))
        print(f"cluster up, leader {first}")
        prom, prom_url = start_prometheus(args.prometheus, nodes, workdir, Path(args.alerts).resolve())
        start = time.time()
        counter = [0]
        ok = drive_writes(nodes, 15, args.etcdctl, counter)
        print(f"phase 1: {ok} HTTP writes acknowledged")
        problems = check_rules(prom_url, allow_pending=False)
        print(change_leader(nodes))
        ok = drive_writes(nodes, 20, args.etcdctl, counter)
        print(f"phase 2: {ok} HTTP writes acknowledged")
        wait_for("every node to be scraped", 30, lambda: len(
            [r for r in prom_api(prom_url, "query", query='up{job="raftkv"} == 1')["result"]]) == 3)
        time.sleep(2)  # two more scrapes, so the last writes are in Prometheus
        end = time.time()

        problems += check_rules(prom_url, allow_pending=True)
        values = resolve_variables(prom_url, dashboard)
        skipped = 0
        for title, ref, expr in dashboard_queries(dashboard):
            if uses_only_operator_metrics(expr):
                # No operator (nor Kubernetes) here: the names are checked
                # against the operator's own metrics by its unit tests.
                print(f"skip  {title} [{ref}]: operator metrics")
                skipped += 1
                continue
            q = expr.replace("$__rate_interval", RATE_INTERVAL)
            for name, val in values.items():
                q = q.replace(f"${name}", val)
            result = prom_api(prom_url, "query_range", query=q, start=start, end=end, step="1s")["result"]
            n = has_data(result)
            print(f"{'ok  ' if n else 'EMPTY'} {title} [{ref}]: {n} series")
            if not n:
                problems.append(f"panel query without data: {title} [{ref}]: {q}")
        if problems:
            raise Failure(f"{len(problems)} problems:\n  " + "\n  ".join(problems))
        total = sum(1 for _ in dashboard_queries(dashboard))
        print(f"all {total - skipped} node dashboard queries returned data "
              f"({skipped} operator queries skipped); alert rules clean")
        return 0
    except Failure as e:
        print(f"FAIL: {e}\n(logs in {workdir})", file=sys.stderr)
        args.keep = True
        return 1
    finally:
        for n in nodes:
            n.stop()
        if prom is not None and prom.poll() is None:
            prom.terminate()
            try:
                prom.wait(timeout=15)
            except subprocess.TimeoutExpired:
                prom.kill()
                prom.wait()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
