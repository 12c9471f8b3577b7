#!/usr/bin/env python3
"""Static checks of a Grafana dashboard JSON (deploy/grafana/raftkv.json).

- valid JSON, unique panel ids, every non-row panel has at least one query;
- every query (with the dashboard variables substituted) parses as PromQL
  (`promtool check rules` on a generated rules file);
- every metric a query names is one the raftkv node (or operator) exports.
Whether each query returns data is tests/dashboard/check_panels.py's job
(it needs a running cluster).

Usage: check_dashboard.py DASHBOARD.json
"""

import json
import re
import subprocess
import sys
import tempfile

import yaml

# Metric names the raftkv node exports (see the node's metrics module and
# ARCHITECTURE.md). Histograms are listed by base name.
NODE_METRICS = {
    "raftkv_node_info",
    "raftkv_raft_term", "raftkv_raft_commit_index", "raftkv_raft_applied_index",
    "raftkv_raft_last_log_index", "raftkv_raft_is_leader", "raftkv_raft_has_leader",
    "raftkv_raft_leader_changes_total", "raftkv_raft_proposals_committed_total",
    "raftkv_raft_proposals_failed_total", "raftkv_raft_proposals_pending",
    "raftkv_disk_log_fsync_seconds", "raftkv_raft_peer_match_index",
    "raftkv_network_peer_rtt_seconds", "raftkv_http_requests_total",
    "raftkv_http_request_duration_seconds", "raftkv_grpc_requests_total",
    "raftkv_grpc_request_duration_seconds", "raftkv_db_size_bytes",
    "process_resident_memory_bytes", "raftkv_raft_members",
}
# Metric names the raftkv operator exports (operator/src/metrics.rs; a unit
# test there checks that the dashboard names only exported ones).
OPERATOR_METRICS = {
    "raftkv_operator_backup_last_success_timestamp_seconds",
    "raftkv_operator_backup_schedule_interval_seconds",
}
METRIC_RE = re.compile(r"\b((?:raftkv|process)_[a-z0-9_]+)")
SUBST = {"$__rate_interval": "1m", "$namespace": ".*", "$cluster": ".*"}


def substitute(expr):
    for k, v in SUBST.items():
        expr = expr.replace(k, v)
    return expr


def base_metric(name):
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name[: -len(suffix)] in NODE_METRICS:
            return name[: -len(suffix)]
    return name


def queries(dashboard):
    """(panel title, expr) for every target of every panel, rows included."""
    def walk(panels):
        for p in panels:
            yield p
            yield from walk(p.get("panels", []))
    for p in walk(dashboard.get("panels", [])):
        if p.get("type") == "row":
            continue
        for t in p.get("targets", []):
            yield p.get("title"), t.get("expr")


def main():
    path = sys.argv[1]
    with open(path, encoding="utf-8") as f:
        dash = json.load(f)
    errors = []
    ids = [p.get("id") for p in dash.get("panels", [])]
    if len(ids) != len(set(ids)):
        errors.append("duplicate panel ids")
    panels = [p for p in dash.get("panels", []) if p.get("type") != "row"]
    for p in panels:
        if not [t for t in p.get("targets", []) if t.get("expr")]:
            errors.append(f"panel {p.get('title')!r} has no query")
    rules = []
    for i, (title, expr) in enumerate(queries(dash)):
        for m in METRIC_RE.findall(expr):
            if base_metric(m) not in NODE_METRICS | OPERATOR_METRICS:
                errors.append(f"panel {title!r} uses {m}, which neither the node nor the operator exports")
        rules.append({"record": f"dashboard:query_{i}", "expr": substitute(expr)})
    for v in dash.get("templating", {}).get("list", []):
        q = v.get("query")
        if isinstance(q, dict):
            q = q.get("query")
        if v.get("type") == "query" and not (q or "").startswith("label_values("):
            errors.append(f"variable {v.get('name')} is not a label_values() query")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, f)
    res = subprocess.run(["promtool", "check", "rules", f.name], capture_output=True, text=True)
    if res.returncode != 0:
        errors.append("a query does not parse:\n" + res.stdout + res.stderr)
    for e in errors:
        print(f"FAIL {path}: {e}", file=sys.stderr)
    print(f"{path}: {len(panels)} panels, {len(rules)} queries checked, {len(errors)} problems")
    return 1 if errors or not rules else 0


if __name__ == "__main__":
    sys.exit(main())
