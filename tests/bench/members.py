"""HTTP probes of one member of a raftkv or etcd cluster, for failover.py and footprint.py.

Both scripts ask the same questions of either system: which member leads,
how far each has applied, is it healthy, does a write through it succeed,
does it serve a local (serializable) read. raftkv answers on its HTTP API
(--listen-http); etcd on its client URL's JSON gateway (/v3/...). Each probe
is one HTTP request with a short timeout and never raises on a network or
HTTP error: a member that is down, electing or catching up simply answers
"no" (or None), which is what the callers poll for.
"""

import base64
import json
import time
import urllib.error
import urllib.parse
import urllib.request


def _request(url, body=None, method="GET", timeout=0.2):
    """(status, body bytes) of one request; (None, None) on a network error or timeout."""
    req = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (OSError, ValueError):
        # URLError, connection refused/reset, socket timeout, a reply cut short.
        return None, None


def _json(body):
    try:
        return json.loads(body)
    except (TypeError, ValueError):
        return None


class Status:
    """What one member says about itself: its id, whether it leads, which
    member it believes leads, and how far it has applied and committed."""

    def __init__(self, member, leader, applied, commit):
        self.member = member
        self.leader = leader
        self.applied = applied
        self.commit = commit

    @property
    def is_leader(self):
        return self.leader is not None and self.leader == self.member


class RaftkvMember:
    def __init__(self, url):
        self.url = url.rstrip("/")

    def status(self, timeout=0.5):
        code, body = _request(f"{self.url}/v1/status", timeout=timeout)
        s = _json(body) if code == 200 else None
        if not isinstance(s, dict):
            return None
        try:
            leader = s.get("leader_id") if s.get("role") != "leader" else s["id"]
            return Status(str(s["id"]), None if leader is None else str(leader),
                          int(s["applied_index"]), int(s["commit_index"]))
        except (KeyError, TypeError, ValueError):
            return None

    def ready(self, timeout=0.5):
        code, _ = _request(f"{self.url}/readyz", timeout=timeout)
        return code == 200

    def put(self, key, value, timeout=0.2):
        code, _ = _request(f"{self.url}/v1/kv/{urllib.parse.quote(key, safe='')}", body=value,
                           method="PUT", timeout=timeout)
        return code == 200

    def get_local(self, key, timeout=0.2):
        """The value of key from this member's own state (serializable), or None."""
        code, body = _request(
            f"{self.url}/v1/kv/{urllib.parse.quote(key, safe='')}?consistency=serializable",
            timeout=timeout)
        return body if code == 200 else None


def _b64(b):
    return base64.b64encode(b).decode()


class EtcdMember:
    def __init__(self, url):
        self.url = url.rstrip("/")

    def _post(self, path, obj, timeout):
        code, body = _request(f"{self.url}{path}", body=json.dumps(obj).encode(), method="POST",
                              timeout=timeout)
        return _json(body) if code == 200 else None

    def status(self, timeout=0.5):
        s = self._post("/v3/maintenance/status", {}, timeout)
        if not isinstance(s, dict):
            return None
        try:
            # The gateway prints uint64 fields as strings and omits zeros:
            # a member that knows no leader has no "leader" field.
            leader = s.get("leader")
            applied = int(s.get("raftAppliedIndex", s.get("raftIndex", 0)))
            return Status(str(s["header"]["member_id"]), None if leader in (None, "0") else leader,
                          applied, int(s.get("raftIndex", 0)))
        except (KeyError, TypeError, ValueError):
            return None

    def ready(self, timeout=0.5):
        # etcd 3.4's /health answers true once the member has a leader and a
        # request through Raft succeeds on it.
        code, body = _request(f"{self.url}/health", timeout=timeout)
        h = _json(body) if code == 200 else None
        return isinstance(h, dict) and h.get("health") == "true"

    def put(self, key, value, timeout=0.2):
        return self._post("/v3/kv/put", {"key": _b64(key.encode()), "value": _b64(value)},
                          timeout) is not None

    def get_local(self, key, timeout=0.2):
        r = self._post("/v3/kv/range", {"key": _b64(key.encode()), "serializable": True}, timeout)
        try:
            return base64.b64decode(r["kvs"][0]["value"]) if r else None
        except (KeyError, IndexError, TypeError, ValueError):
            return None


def members(cluster):
    """One probe per member of a cluster started by compare.py, in spawn order."""
    kind = RaftkvMember if cluster.name == "raftkv" else EtcdMember
    return [kind(u) for u in cluster.http_urls]


def leader_index(probes, timeout):
    """Index (into probes) of the member that leads and that the others
    agree leads; polls until then or raises after timeout seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        st = [p.status() for p in probes]
        last = [None if s is None else (s.member, s.leader) for s in st]
        if all(s is not None for s in st):
            leaders = [i for i, s in enumerate(st) if s.is_leader]
            if len(leaders) == 1 and all(s.leader == st[leaders[0]].member for s in st):
                return leaders[0]
        time.sleep(0.05)
    raise RuntimeError(f"no agreed leader within {timeout}s: (member, leader) = {last}")


def wait_healed(probes, timeout):
    """Polls until every member is ready, all agree on one leader, and each
    has applied at least what the leader had committed when the wait began
    (so callers stop writing first). Returns the seconds it took."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    target = None
    last = "no status yet"
    while time.monotonic() < deadline:
        st = [p.status() for p in probes]
        if all(s is not None for s in st):
            leaders = [s for s in st if s.is_leader]
            if len(leaders) == 1 and all(s.leader == leaders[0].member for s in st):
                if target is None:
                    target = leaders[0].commit
                behind = [s.member for s in st if s.applied < target]
                if not behind and all(p.ready() for p in probes):
                    return time.monotonic() - t0
                last = f"behind index {target}: {behind}" if behind else "not all ready"
            else:
                last = f"(member, leader) = {[(s.member, s.leader) for s in st]}"
        else:
            last = f"no status from members {[i for i, s in enumerate(st) if s is None]}"
        time.sleep(0.05)
    raise RuntimeError(f"cluster not healed within {timeout}s: {last}")
