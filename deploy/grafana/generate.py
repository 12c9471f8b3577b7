#!/usr/bin/env python3
"""Generates the raftkv Grafana dashboard (raftkv.json beside this file).

The dashboard is code so that every panel is built the same way: one row per
concern, one series per node, and every query filtered by the `namespace` and
`cluster` variables through one join with `raftkv_node_info` (which carries
the node's `name` and `cluster` labels). Every query may use only metric names
the node exports; tests/dashboard/check_panels.py evaluates each of them
against a real cluster scraped by a real Prometheus.

Usage:
    generate.py            write raftkv.json
    generate.py --stdout   print the dashboard instead of writing it

(`deploy/generate.sh --check` checks this file and its chart copy for drift.)
"""

import json
import sys
from pathlib import Path

OUT = Path(__file__).with_name("raftkv.json")
DS = {"type": "prometheus", "uid": "${datasource}"}

# Multiplying by this keeps a series' value, adds the node's `name` label and
# drops every node not in the selected namespace/cluster. `group` yields 1 per
# node whatever the info metric's value is.
NODE = (
    'on (instance) group_left (name) group by (instance, name) '
    '(raftkv_node_info{namespace=~"$namespace", cluster=~"$cluster"})'
)
RATE = "$__rate_interval"


def per_node(expr):
    """`expr` (one series per node) labelled with the node's name."""
    return f"({expr}) * {NODE}"


def rate_by(metric, by, selector=""):
    return f"sum by ({by}) (rate({metric}{selector}[{RATE}]) * {NODE})"


def p99_by(metric, by):
    return (
        f"histogram_quantile(0.99, sum by ({by}, le) "
        f"(rate({metric}_bucket[{RATE}]) * {NODE}))"
    )


def errors_by(metric, by, selector):
    # `or ... * 0` keeps the panel at 0 instead of "No data" while there are
    # no errors: an empty error panel cannot be told apart from a broken one.
    return f"({rate_by(metric, by, selector)}) or ({rate_by(metric, by)} * 0)"


def target(expr, legend, ref):
    return {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref, "range": True}


class Layout:
    """Places panels left to right on a 24-column grid, a row header per concern."""

    def __init__(self):
        self.panels = []
        self.next_id = 1
        self.y = 0
        self.x = 0

    def row(self, title):
        if self.x:
            self.y += 8
            self.x = 0
        self.panels.append(
            {"type": "row", "title": title, "id": self._id(), "collapsed": False,
             "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}, "panels": []}
        )
        self.y += 1

    def panel(self, title, description, targets, unit="short", width=8, kind="timeseries",
              decimals=None):
        if self.x + width > 24:
            self.y += 8
            self.x = 0
        refs = "ABCDEFGH"
        panel = {
            "type": kind,
            "title": title,
            "description": description,
            "id": self._id(),
            "datasource": DS,
            "gridPos": {"h": 8, "w": width, "x": self.x, "y": self.y},
            "targets": [target(e, l, refs[i]) for i, (e, l) in enumerate(targets)],
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": {"legend": {"displayMode": "table", "placement": "bottom",
                                   "calcs": ["lastNotNull", "max"]},
                        "tooltip": {"mode": "multi", "sort": "desc"}},
        }
        if decimals is not None:
            panel["fieldConfig"]["defaults"]["decimals"] = decimals
        if kind == "stat":
            panel["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "",
                                                  "values": False},
                                "textMode": "name", "colorMode": "background",
                                "graphMode": "none"}
        self.panels.append(panel)
        self.x += width

    def _id(self):
        self.next_id += 1
        return self.next_id - 1


def panels():
    p = Layout()

    p.row("Leadership")
    p.panel("Current leader", "The node that is leader now (none shown: no leader).",
            [(f"max by (name) ({per_node('raftkv_raft_is_leader')}) == 1", "{{name}}")],
            kind="stat", width=4)
    p.panel("Leader per node", "1 while the node is leader. Exactly one line should be up.",
            [(per_node("raftkv_raft_is_leader"), "{{name}}"),
             (f"1 - ({per_node('raftkv_raft_has_leader')})", "{{name}} sees no leader")],
            width=8, decimals=0)
    p.panel("Leader changes", "Leader changes each node saw per interval; more than a few an hour "
            "means elections are being provoked (see fsync and peer RTT).",
            [(f"sum by (name) (increase(raftkv_raft_leader_changes_total[{RATE}]) * {NODE})",
              "{{name}}")], width=6, decimals=0)
    p.panel("Members by role", "Raft configuration as each node sees it (voters, learners).",
            [(per_node("raftkv_raft_members"), "{{name}} {{role}}")], width=6, decimals=0)

    p.row("Term")
    p.panel("Term", "Raft term per node. Steps up at each election; a node whose term climbs "
            "alone is partitioned and campaigning.",
            [(per_node("raftkv_raft_term"), "{{name}}")], width=24, decimals=0)

    p.row("Commit and apply")
    p.panel("Commit index", "Highest log index known committed, per node.",
            [(per_node("raftkv_raft_commit_index"), "{{name}}")], decimals=0)
    p.panel("Applied index", "Highest log index applied to the KV state machine, per node.",
            [(per_node("raftkv_raft_applied_index"), "{{name}}")], decimals=0)
    p.panel("Commit − applied", "Committed but not yet applied entries. Should stay near 0; "
            "growth means the state machine cannot keep up or is stuck.",
            [(per_node("raftkv_raft_commit_index - raftkv_raft_applied_index"), "{{name}}")],
            decimals=0)

    p.row("Replication")
    p.panel("Replication backlog (last log − commit)", "Entries in a node's log not yet "
            "committed. On the leader: writes waiting for a quorum.",
            [(per_node("raftkv_raft_last_log_index - raftkv_raft_commit_index"), "{{name}}")],
            decimals=0)
    p.panel("Match index per follower", "The leader's view of each follower's replicated index.",
            [(per_node("raftkv_raft_peer_match_index and on (instance) "
                       "raftkv_raft_is_leader == 1"), "{{name}} → peer {{peer}}")],
            decimals=0)
    p.panel("Peer round trip p99", "99th percentile round trip to each peer. Heartbeats slower "
            "than the election timeout cause elections.",
            [(p99_by("raftkv_network_peer_rtt_seconds", "name, peer"), "{{name}} → peer {{peer}}")],
            unit="s")

    p.row("Proposals")
    p.panel("Proposals committed / failed", "Proposals per second that committed or failed.",
            [(rate_by("raftkv_raft_proposals_committed_total", "name"), "{{name}} committed"),
             (rate_by("raftkv_raft_proposals_failed_total", "name"), "{{name}} failed")],
            unit="ops", width=12)
    p.panel("Proposals pending", "Proposals waiting to commit; grows when the leader is slow "
            "or lacks a quorum.",
            [(per_node("raftkv_raft_proposals_pending"), "{{name}}")], width=12, decimals=0)

    p.row("Disk")
    p.panel("Log fsync p99", "99th percentile of Raft log fsyncs (one per group commit). "
            "Every write waits for it.",
            [(p99_by("raftkv_disk_log_fsync_seconds", "name"), "{{name}}")], unit="s", width=12)
    p.panel("Database size", "Size of each node's Raft log and KV databases.",
            [(per_node("raftkv_db_size_bytes"), "{{name}} {{db}}")], unit="bytes", width=12)

    p.row("Client requests")
    p.panel("HTTP requests / s", "HTTP API requests per node and route.",
            [(rate_by("raftkv_http_requests_total", "name, route"), "{{name}} {{route}}")],
            unit="reqps")
    p.panel("HTTP errors / s", "HTTP answers with a 5xx status per node and route.",
            [(errors_by("raftkv_http_requests_total", "name, route", '{status=~"5.."}'),
              "{{name}} {{route}}")], unit="reqps")
    p.panel("HTTP latency p99", "99th percentile HTTP latency per node and route.",
            [(p99_by("raftkv_http_request_duration_seconds", "name, route"),
              "{{name}} {{route}}")], unit="s")
    p.panel("gRPC requests / s", "etcd-compatible gRPC requests per node and method.",
            [(rate_by("raftkv_grpc_requests_total", "name, method"), "{{name}} {{method}}")],
            unit="reqps")
    p.panel("gRPC errors / s", "gRPC answers with a code other than OK per node and method.",
            [(errors_by("raftkv_grpc_requests_total", "name, method", '{code!="OK"}'),
              "{{name}} {{method}}")], unit="reqps")
    p.panel("gRPC latency p99", "99th percentile gRPC latency per node and method.",
            [(p99_by("raftkv_grpc_request_duration_seconds", "name, method"),
              "{{name}} {{method}}")], unit="s")

    p.row("Process")
    p.panel("Resident memory", "Resident set size of each raftkv process.",
            [(per_node("process_resident_memory_bytes"), "{{name}}")], unit="bytes", width=24)

    # From the operator's /metrics, labelled by the RaftCluster's namespace
    # and name (the operator's ServiceMonitor honours its labels), which are
    # what the ServiceMonitor of the members puts into `namespace` and
    # `cluster` too: the variables filter these as well.
    p.row("Backups")
    op = '{namespace=~"$namespace", cluster=~"$cluster"}'
    p.panel("Backup age", "Time since each RaftCluster's last successful scheduled backup "
            "(spec.backup), and the age at which the RaftkvBackupTooOld alert starts "
            "(twice the longest gap of the schedule). Needs the operator to be scraped.",
            [(f"time() - raftkv_operator_backup_last_success_timestamp_seconds{op}",
              "{{cluster}} backup age"),
             (f"2 * raftkv_operator_backup_schedule_interval_seconds{op}",
              "{{cluster}} alert threshold")], unit="s", width=24)
    return p.panels


def variable(name, label, query):
    return {
        "name": name, "label": label, "type": "query", "datasource": DS,
        "query": {"query": query, "refId": f"{name}-var"}, "definition": query,
        "refresh": 2, "includeAll": True, "allValue": ".*", "multi": True,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1, "hide": 0, "options": [],
    }


def dashboard():
    return {
        "title": "raftkv",
        "uid": "raftkv-overview",
        "description": "raftkv clusters: leadership, term, commit/apply, replication, "
                       "proposals, disk, client requests, memory. One series per node.",
        "tags": ["raftkv", "raft"],
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-1h", "to": "now"},
        "timezone": "",
        "annotations": {"list": []},
        "links": [],
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource",
             "query": "prometheus", "current": {}, "hide": 0, "options": [], "refresh": 1},
            variable("namespace", "Namespace", "label_values(raftkv_node_info, namespace)"),
            variable("cluster", "Cluster",
                     'label_values(raftkv_node_info{namespace=~"$namespace"}, cluster)'),
        ]},
        "panels": panels(),
    }


def render():
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


def main():
    text = render()
    if sys.argv[1:] == ["--stdout"]:
        sys.stdout.write(text)
        return 0
    if sys.argv[1:]:
        print(__doc__, file=sys.stderr)
        return 2
    OUT.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
