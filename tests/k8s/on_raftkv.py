"""kube-apiserver with raftkv as its store (run by tests/k8s/run under
tests/k8s/control-plane with K8S_STORE=raftkv).

What the API server needs from etcd, checked through the API server itself:
its readiness checks of the store, writes and reads, watches (kubectl's,
and the controller-manager's, scheduler's and kwok's, which must see a
Deployment become running pods), paginated lists (continue tokens are reads
at a past revision), Events stored with an etcd lease, and a store that
loses its leader while the API server keeps serving.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

from suite import WORK, eventually, kjson, kubectl, log, run

NS = "on-raftkv"
ETCD = "http://127.0.0.1:12371,http://127.0.0.1:12372,http://127.0.0.1:12373"


def member_status(member):
    with urllib.request.urlopen(f"http://127.0.0.1:1808{member}/v1/status", timeout=3) as r:
        return json.loads(r.read())


def leader():
    ids = {member_status(m).get("leader_id") for m in (1, 2, 3)}
    ids.discard(None)
    return ids.pop() if len(ids) == 1 else None


class Watch:
    """`kubectl get --watch` in the background, its lines collected."""

    def __init__(self, *args):
        self.lines = []
        self.proc = subprocess.Popen(
            [
                "kubectl", "get", "--watch", "--output-watch-events",
                "-o", 'jsonpath={.type} {.object.metadata.name}{"\\n"}', *args,
            ],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.strip())

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def check():
    ready = run("kubectl", "get", "--raw", "/readyz?verbose").stdout
    assert "[+]etcd ok" in ready and "[+]etcd-readiness ok" in ready, ready
    kubectl("create", "namespace", NS)

    # kubectl's own watch sees additions and deletions, in order.
    watch = Watch("configmaps", "-n", NS)
    try:
        eventually("the watch to start", lambda: watch.proc.poll() is None and kjson("get", "ns", NS), 10)
        kubectl("-n", NS, "create", "configmap", "first", "--from-literal=a=1")
        kubectl("-n", NS, "create", "configmap", "second", "--from-literal=b=2")
        kubectl("-n", NS, "delete", "configmap", "first")
        want = ["ADDED first", "ADDED second", "DELETED first"]

        def reported():
            if [line for line in watch.lines if line in want] != want:
                raise AssertionError(f"the watch printed {watch.lines}")
            return True

        eventually("the watch to report every change", reported, 20)
    finally:
        watch.stop()

    # A paginated list: every page after the first is read at the revision
    # of the first.
    for i in range(7):
        kubectl("-n", NS, "create", "configmap", f"page-{i}", f"--from-literal=i={i}")
    names = kubectl("-n", NS, "get", "configmaps", "--chunk-size=2", "-o", "name").stdout.split()
    assert sorted(n for n in names if "page-" in n) == [f"configmap/page-{i}" for i in range(7)], names

    # Controllers, scheduler and kwok work off watches: a Deployment
    # becomes running pods; its Events are stored with a lease (--event-ttl).
    kubectl("-n", NS, "create", "deployment", "web", "--image=registry.invalid/web:1", "--replicas=2")

    def running():
        pods = kjson("-n", NS, "get", "pods")["items"]
        return len(pods) == 2 and all(p["status"].get("phase") == "Running" for p in pods)

    eventually("the Deployment's pods running", running, 60)
    events = eventually("events", lambda: kjson("-n", NS, "get", "events")["items"], 30)
    log(f"  {len(events)} events")
    got = run(
        "etcdctl", "--endpoints", ETCD, "get", "--prefix", f"/registry/events/{NS}/", "-w", "json",
        env={**os.environ, "ETCDCTL_API": "3"},
    ).stdout
    kvs = json.loads(got).get("kvs", [])
    assert kvs and all(kv.get("lease", 0) != 0 for kv in kvs), f"events without a lease: {got[:500]}"

    # The store loses its leader; the API server keeps serving once the
    # other two members elect a new one.
    old = eventually("a raftkv leader", leader, 30)
    with open(os.path.join(WORK, f"raftkv-{old}.pid")) as f:
        os.kill(int(f.read()), signal.SIGKILL)
    log(f"  killed raftkv member {old}, the leader")
    eventually(
        "a write through the API server after the store's leader died",
        lambda: kubectl("-n", NS, "create", "configmap", "after-failover", check=False).returncode == 0
        or kjson("-n", NS, "get", "configmap", "after-failover"),
        60,
    )
    assert kjson("-n", NS, "get", "configmap", "after-failover")["metadata"]["name"] == "after-failover"
    kubectl("-n", NS, "scale", "deployment", "web", "--replicas=3")
    eventually("a third pod", lambda: len(kjson("-n", NS, "get", "pods")["items"]) == 3, 60)


def main():
    t0 = time.monotonic()
    try:
        check()
    except Exception:  # noqa: BLE001 - reported below
        import traceback

        traceback.print_exc()
        print("k8s on raftkv: FAILED", flush=True)
        return 1
    print(f"k8s on raftkv: ok ({time.monotonic() - t0:.0f}s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
