#!/usr/bin/env python3
"""End-to-end suite of the chart and the operator on a real control plane.

Run by tests/k8s/run (which builds the tools, makes the private network
namespace and starts the control plane); it needs KUBECONFIG and K8S_WORK
from tests/k8s/control-plane. The user's path, asserted step by step with
deadlines: helm install, the CRD and its CEL rules, the operator running as
the chart's ServiceAccount, `kubectl apply` of the example, status columns,
`kubectl scale` 3 -> 5 -> 3 under writes with nothing acknowledged lost and
one membership change at a time, a deleted pod rejoining, a rolling update
of the pod template under writes (one pod at a time, the leader's last), a
release that cannot start halting the rollout, a member whose volume is
lost removed and added back, a member down reported, the helm test hook's
check, scheduled backups (CronJob, a job started by hand, status,
failure, retention) and a new cluster restored from one, the same with
an S3-compatible store (a moto server on loopback), pvcRetention Retain
and Delete, and helm uninstall.
"""

import base64
import http.client as http_client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request

import yaml

from kubelet import Api, ProcessKubelet

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORK = os.environ["K8S_WORK"]
HOSTS = os.environ["K8S_HOSTS_FILE"]
RAFTKV = os.path.join(ROOT, "target", "release", "raftkv")
OPERATOR = os.path.join(ROOT, "target", "release", "raftkv-operator")
RELEASE, OP_NS = "raftkv-operator", "raftkv-system"
OPERATOR_IP = "127.0.3.1"  # the operator's metrics Service name maps here
CHART = os.path.join(ROOT, "charts", "raftkv-operator")
EXAMPLE = os.path.join(ROOT, "deploy", "examples", "raftcluster.yaml")
# Short enough to keep the suite quick: a replaced pod that has not caught
# up after this long halts a rollout; a member down this long is reported.
ROLLOUT_TIMEOUT_SECONDS = 15
MEMBER_DOWN_SECONDS = 3


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(*argv, check=True, input=None, env=None):
    res = subprocess.run(
        list(argv), capture_output=True, text=True, input=input, env=env, timeout=180
    )
    if check and res.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} exited {res.returncode}:\n{res.stdout}\n{res.stderr}"
        )
    return res


def kubectl(*args, **kw):
    return run("kubectl", *args, **kw)


def kjson(*args):
    return json.loads(kubectl(*args, "-o", "json").stdout)


def eventually(what, fn, timeout, interval=0.3):
    """Polls fn until it returns a truthy value; fails with the last answer."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = fn()
            if last:
                return last
        except Exception as e:  # noqa: BLE001 - reported if the deadline passes
            last = f"{type(e).__name__}: {e}"
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s; last: {last}")
        time.sleep(interval)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http(method, url, data=None, timeout=3):
    req = urllib.request.Request(url, data=data, method=method)
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.status, resp.read()


class Suite:
    def __init__(self):
        self.api = Api("https://127.0.0.1:6443", os.path.join(WORK, "pki"))
        self.kubelet = ProcessKubelet(self.api, RAFTKV, WORK, HOSTS)
        self.operator = None
        self.passed, self.failed = 0, 0
        self.acked = {}  # key -> value of every acknowledged write
        self.writer_stop = threading.Event()
        self.writer = None
        self.writer_errors = 0
        self.config_samples = []  # (voters, learners) seen on the leader

    # --- helpers ------------------------------------------------------------

    def raftc(self, name, ns="default"):
        return kjson("get", "raftc", name, "-n", ns)

    def columns(self, name, ns="default"):
        """`kubectl get raftc NAME` as the user sees it: header -> value."""
        out = kubectl("get", "raftc", name, "-n", ns).stdout.splitlines()
        return dict(zip(out[0].split(), out[1].split()))

    def node_status(self, pod, ns="default"):
        url = self.kubelet.http_url(ns, pod)
        if url is None:
            return None
        return json.loads(http("GET", url + "/v1/status", timeout=1)[1])

    def leader_status(self, ns="default", name="demo"):
        for pod in self.kubelet.running(ns):
            if not pod.startswith(name + "-"):
                continue
            try:
                st = self.node_status(pod, ns)
            except Exception:  # noqa: BLE001 - a member may be starting
                continue
            if st and st["role"] == "leader":
                return st
        return None

    def healthy(self, name, replicas, ns="default"):
        """Status and the nodes agree: `replicas` voters, a leader, all ready."""
        st = self.raftc(name, ns).get("status") or {}
        cols = self.columns(name, ns)
        leader = self.leader_status(ns, name)
        if not leader:
            raise AssertionError(
                f"no leader among {self.kubelet.running(ns)}; status {st.get('phase')} "
                f"{[c.get('reason') for c in st.get('conditions', [])]}"
            )
        voters = [m for m in leader["members"] if m["role"] == "voter"]
        learners = [m for m in leader["members"] if m["role"] == "learner"]
        ok = (
            st.get("phase") == "Running"
            and st.get("readyReplicas") == replicas
            and len(voters) == replicas
            and not learners
            and cols.get("READY") == str(replicas)
            and cols.get("LEADER", "<none>") == leader["name"]
            and int(cols.get("TERM", 0)) >= 1
            and int(cols.get("COMMIT", 0)) >= 1
            and len(st.get("members", [])) == replicas
            and len(self.kubelet.running(ns)) >= replicas
        )
        if not ok:
            raise AssertionError(
                f"status phase={st.get('phase')} ready={st.get('readyReplicas')} "
                f"members={[m.get('name') for m in st.get('members', [])]}; columns {cols}; "
                f"leader {leader['name']} voters={len(voters)} learners={len(learners)}; "
                f"processes {self.kubelet.running(ns)}"
            )
        return st, cols, leader

    def pod_uids(self, name="demo", ns="default"):
        """Pod name -> (uid, being deleted) of a cluster's pods."""
        pods = self.api.get(
            f"/api/v1/namespaces/{ns}/pods?labelSelector=app.kubernetes.io/instance%3D{name}"
        )["items"]
        return {
            p["metadata"]["name"]: (p["metadata"]["uid"], bool(p["metadata"].get("deletionTimestamp")))
            for p in pods
        }

    def not_serving(self, pod, uids, ns="default"):
        """Why the pod does not serve (None if it does): it exists, is not
        being deleted, and its own process answers."""
        uid, deleting = uids.get(pod, (None, True))
        if uid is None:
            return "no pod"
        if deleting:
            return "being deleted"
        if self.kubelet.process_uid(ns, pod) != uid:
            return "no process of this pod"
        try:
            self.node_status(pod, ns)
        except Exception as e:  # noqa: BLE001 - starting or gone
            return f"status: {e}"
        return None

    def condition(self, type_, name="demo", ns="default"):
        st = self.raftc(name, ns).get("status") or {}
        return next((c for c in st.get("conditions", []) if c["type"] == type_), {})

    def event_notes(self, reason, name="demo"):
        events = kjson("get", "events", "--field-selector", f"involvedObject.name={name}")["items"]
        return [e.get("message") or e.get("note") or "" for e in events if e["reason"] == reason]

    # --- writer: nothing acknowledged may be lost ---------------------------

    def start_writer(self, name="demo", ns="default"):
        def loop():
            i = 0
            while not self.writer_stop.is_set():
                pods = [p for p in self.kubelet.running(ns) if p.startswith(name + "-")]
                if not pods:
                    time.sleep(0.1)
                    continue
                pod = pods[i % len(pods)]
                key, value = f"w{i:06d}", f"v{i}"
                try:
                    status, _ = http(
                        "PUT", f"{self.kubelet.http_url(ns, pod)}/v1/kv/{key}", value.encode()
                    )
                    if status == 200:
                        self.acked[key] = value
                except Exception:  # noqa: BLE001 - unacknowledged: allowed to be lost
                    self.writer_errors += 1
                i += 1
                time.sleep(0.02)

        def sample():
            # On its own thread: a put to a member being removed can hang
            # for the request timeout, longer than a one-step membership
            # change lasts, and a sample skipped then looks like a jump.
            while not self.writer_stop.is_set():
                self.sample_config(ns, name)
                time.sleep(0.02)

        self.writer_stop.clear()
        self.writer = threading.Thread(target=loop, name="writer", daemon=True)
        self.sampler = threading.Thread(target=sample, name="config-sampler", daemon=True)
        self.writer.start()
        self.sampler.start()

    def stop_writer(self):
        self.writer_stop.set()
        self.writer.join(timeout=30)
        self.sampler.join(timeout=30)

    def sample_config(self, ns, name):
        try:
            leader = self.leader_status(ns, name)
        except Exception:  # noqa: BLE001
            return
        if leader:
            members = leader["members"]
            self.config_samples.append(
                (
                    sum(m["role"] == "voter" for m in members),
                    sum(m["role"] == "learner" for m in members),
                )
            )

    def check_acked(self, name="demo", ns="default"):
        leader = eventually("a leader", lambda: self.leader_status(ns, name), 60)
        url = self.kubelet.http_url(ns, leader["name"])
        lost = []
        # A copy: the writer may still be adding to it.
        for key, value in list(self.acked.items()):
            status, body = http("GET", f"{url}/v1/kv/{key}")
            if status != 200 or body.decode() != value:
                lost.append(key)
        assert not lost, f"{len(lost)} acknowledged writes lost, e.g. {lost[:5]}"
        return len(self.acked)

    # --- the operator, as the chart's ServiceAccount ------------------------

    def start_operator(self):
        deploy = kjson("get", "deployment", RELEASE, "-n", OP_NS)
        pod = deploy["spec"]["template"]["spec"]
        sa = pod["serviceAccountName"]
        token = kubectl("create", "token", sa, "-n", OP_NS, "--duration", "2h").stdout.strip()
        server = kjson("config", "view", "--raw", "--minify")["clusters"][0]["cluster"]
        kubeconfig = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "test", "cluster": server}],
            "users": [{"name": sa, "user": {"token": token}}],
            "contexts": [
                {"name": "test", "context": {"cluster": "test", "user": sa, "namespace": OP_NS}}
            ],
            "current-context": "test",
        }
        path = os.path.join(WORK, "operator.kubeconfig")
        with open(path, "w") as f:
            json.dump(kubeconfig, f)
        # The container's environment, as the chart renders it.
        container = pod["containers"][0]
        env = {"PATH": os.environ["PATH"], "KUBECONFIG": path, "HOME": WORK}
        fields = {"metadata.name": "raftkv-operator-test", "metadata.namespace": OP_NS}
        for var in container.get("env", []):
            if "value" in var:
                env[var["name"]] = var["value"]
            else:
                env[var["name"]] = fields[var["valueFrom"]["fieldRef"]["fieldPath"]]
        port = env["RAFTKV_OPERATOR_LISTEN"].rsplit(":", 1)[1]
        env["RAFTKV_OPERATOR_LISTEN"] = f"{OPERATOR_IP}:{port}"
        self.operator_metrics = f"http://{OPERATOR_IP}:{port}/metrics"
        env["RAFTKV_OPERATOR_LOG_JSON"] = "false"
        with open(HOSTS, "a") as f:
            f.write(f"{OPERATOR_IP} {RELEASE}.{OP_NS}.svc\n")
        argv = [OPERATOR] + container.get("args", [])
        assert container["command"] == ["raftkv-operator"], container["command"]
        self.operator_log = open(os.path.join(WORK, "logs", "operator.log"), "ab")
        self.operator = subprocess.Popen(
            argv, env=env, stdout=self.operator_log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        eventually(
            "operator /readyz",
            lambda: http("GET", f"http://{OPERATOR_IP}:{port}/readyz")[0] == 200,
            60,
        )

    def stop_operator(self, deadline=10):
        if self.operator and self.operator.poll() is None:
            t0 = time.monotonic()
            self.operator.send_signal(signal.SIGTERM)
            try:
                self.operator.wait(timeout=deadline)
            except subprocess.TimeoutExpired:
                self.operator.kill()
                self.operator.wait()
                raise AssertionError(f"operator did not exit within {deadline}s of SIGTERM")
            return time.monotonic() - t0
        return 0.0

    # --- the steps ----------------------------------------------------------

    def step_helm_install(self):
        run(
            "helm", "install", RELEASE, CHART, "--namespace", OP_NS, "--create-namespace",
            # The operator's own flags, through the chart.
            "--set-json", "extraArgs=" + json.dumps([
                f"--rollout-timeout-seconds={ROLLOUT_TIMEOUT_SECONDS}",
                f"--member-down-seconds={MEMBER_DOWN_SECONDS}",
            ]),
        )
        crd = eventually(
            "CRD established",
            lambda: any(
                c["type"] == "Established" and c["status"] == "True"
                for c in kjson("get", "crd", "raftclusters.raftkv.io")["status"]["conditions"]
            ),
            30,
        )
        assert crd
        names = kjson("get", "crd", "raftclusters.raftkv.io")["spec"]["names"]
        assert names["shortNames"] == ["raftc"], names
        # The short name must not collide with a built-in resource.
        resources = kubectl("api-resources", "--no-headers").stdout.split("\n")
        owners = [r for r in resources if r.split() and "raftc" in r.split()[1].split(",")]
        assert len(owners) == 1 and "raftclusters" in owners[0], owners

    def step_cel_rules(self):
        bad = yaml.safe_load(open(EXAMPLE))
        bad["metadata"]["name"] = "bad-timing"
        bad["spec"]["raft"]["heartbeatIntervalMs"] = 500
        res = kubectl("apply", "-f", "-", input=yaml.safe_dump(bad), check=False)
        assert res.returncode != 0 and "at most a third" in res.stderr, res.stderr
        assert kubectl("get", "raftc", "bad-timing", check=False).returncode != 0

    def step_operator_as_chart_sa(self):
        self.start_operator()
        can = kubectl(
            "auth", "can-i", "create", "statefulsets", "-n", "default",
            f"--as=system:serviceaccount:{OP_NS}:{RELEASE}",
        )
        assert can.stdout.strip() == "yes", can.stdout

    def step_apply_example(self):
        kubectl("apply", "-f", EXAMPLE)
        self.kubelet_check()
        first_pod0 = eventually("demo-0 created", lambda: self.pod_uids().get("demo-0"), 30)[0]
        st, cols, leader = eventually("demo healthy with 3 voters", lambda: self.healthy("demo", 3), 120)
        log(f"  columns: {cols}")
        # Bootstrapping must not change the pod template: pod 0 is the one
        # that bootstrapped, and it is still the same pod, on the current
        # revision.
        sts = kjson("get", "statefulset", "demo")
        pod0 = kjson("get", "pod", "demo-0")
        assert pod0["metadata"]["uid"] == first_pod0, "demo-0 was recreated after bootstrap"
        assert (
            pod0["metadata"]["labels"]["controller-revision-hash"]
            == sts["status"]["updateRevision"]
        ), "demo-0 runs an outdated template after bootstrap"
        assert sts["spec"]["updateStrategy"]["type"] == "OnDelete", sts["spec"]["updateStrategy"]
        names = sorted(m["name"] for m in st["members"])
        assert names == ["demo-0", "demo-1", "demo-2"], f"status.members names: {names}"
        # Immutable storage (a CEL transition rule), checked on a live object.
        res = kubectl(
            "patch", "raftc", "demo", "--type", "merge", "-p",
            '{"spec":{"storage":{"size":"2Gi"}}}', check=False,
        )
        assert res.returncode != 0 and "immutable" in res.stderr, res.stderr

    def step_peers_authenticated(self):
        secret = kjson("get", "secret", "demo-peer")
        owners = [(o["kind"], o["name"]) for o in secret["metadata"].get("ownerReferences", [])]
        assert owners == [("RaftCluster", "demo")], owners
        assert len(base64.b64decode(secret["data"]["secret"])) == 64
        policy = kjson("get", "networkpolicy", "demo")["spec"]
        peer_rules = [r for r in policy["ingress"] if any(p.get("port") == 2380 for p in r.get("ports", []))]
        assert len(peer_rules) == 1 and peer_rules[0].get("from"), policy
        # Every member runs with peer authentication on: none says it is off,
        # and the cluster is healthy, so they authenticated each other.
        env = kjson("get", "statefulset", "demo")["spec"]["template"]["spec"]["containers"][0]["env"]
        names = {e["name"] for e in env}
        assert "RAFTKV_PEER_AUTH" not in names and "RAFTKV_PEER_SECRET" in names, names
        logs = os.path.join(WORK, "pods")
        members = [f for f in os.listdir(logs) if f.startswith("default_demo-")]
        assert members, f"no member logs in {logs}"
        for f in members:
            with open(os.path.join(logs, f), errors="replace") as fh:
                assert "PEER AUTHENTICATION IS OFF" not in fh.read(), f

    def step_tls_auto(self):
        """A cluster with `tls.mode: auto`: the operator's CA and
        certificates, members that talk TLS to each other and to the
        operator, etcdctl with the users' certificate from the Secret, and
        plain text refused on the client and HTTP ports."""
        name = "sec"
        manifest = yaml.safe_load(open(EXAMPLE))
        manifest["metadata"]["name"] = name
        manifest["spec"]["pod"] = {}
        manifest["spec"]["pvcRetention"] = "Delete"
        manifest["spec"]["tls"] = {"mode": "auto", "clientUsers": ["alice"]}
        kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))
        # Running with 3 ready members: the operator's status calls (https,
        # its client certificate) and the members' peer streams (TLS, peer
        # identity from the certificates) all work.
        eventually(
            "sec Running with 3 ready members",
            lambda: (self.raftc(name).get("status") or {}).get("phase") == "Running"
            and self.raftc(name)["status"].get("readyReplicas") == 3
            and len(self.raftc(name)["status"].get("members", [])) == 3,
            120,
        )
        ca = kjson("get", "secret", f"{name}-ca")
        assert ca["type"] == "kubernetes.io/tls", ca["type"]
        members = kjson("get", "secret", f"{name}-tls")["data"]
        assert {"ca.crt", "sec-0.crt", "sec-2.key"} <= set(members), sorted(members)
        # The administrator's certificate, as a user would take it from the
        # Secret.
        files = self.client_certificate(f"{name}-client-tls", "sec-client")
        host = f"{name}-1.{name}-peers.default.svc"
        tls_flags = [f"--cacert={files['ca.crt']}", f"--cert={files['tls.crt']}", f"--key={files['tls.key']}"]
        etcdctl = lambda *args, flags=tls_flags, endpoint=f"https://{host}:2379": run(  # noqa: E731
            "etcdctl", f"--endpoints={endpoint}", "--command-timeout=5s", "--dial-timeout=3s",
            *flags, *args, check=False, env={**os.environ, "ETCDCTL_API": "3"},
        )
        put = etcdctl("put", "tls-key", "over-tls")
        assert put.returncode == 0 and "OK" in put.stdout, put.stdout + put.stderr
        got = etcdctl("get", "tls-key", "--print-value-only")
        assert got.returncode == 0 and got.stdout.strip() == "over-tls", got.stdout + got.stderr
        # Plain text to the client port, and TLS without a client
        # certificate, are refused.
        plain = etcdctl("get", "tls-key", flags=[], endpoint=f"http://{host}:2379")
        assert plain.returncode != 0, plain.stdout
        anonymous = etcdctl("get", "tls-key", flags=[tls_flags[0]])
        assert anonymous.returncode != 0, anonymous.stdout
        # The HTTP API: plain refused, TLS with the certificate answers.
        # (The TLS port answers plain text with a TLS alert, which is no
        # HTTP status line, or closes the connection.)
        try:
            http("GET", f"http://{host}:8080/v1/status")
            raise AssertionError("plain HTTP to a TLS HTTP port answered")
        except (urllib.error.URLError, http_client.HTTPException, OSError) as e:
            log(f"  plain HTTP refused: {e!r}")
        context = ssl.create_default_context(cafile=files["ca.crt"])
        context.load_cert_chain(files["tls.crt"], files["tls.key"])
        with urllib.request.urlopen(f"https://{host}:8080/v1/status", context=context, timeout=3) as r:
            status = json.loads(r.read())
        assert len(status["members"]) == 3, status
        assert all(m["peer_url"].startswith("https://") for m in status["members"]), status
        # Probes and Prometheus: the plain metrics port, and only metrics.
        code, body = http("GET", f"http://{host}:9090/metrics")
        assert code == 200 and b"raftkv_raft_term" in body, code
        self.tls_users_under_auth(name, etcdctl, tls_flags)
        kubectl("delete", "raftc", name, "--wait=false")
        eventually(
            "sec's pods gone",
            lambda: not [p for p in self.kubelet.running("default") if p.startswith(f"{name}-")],
            60,
        )

    def client_certificate(self, secret, folder):
        """The ca.crt, tls.crt and tls.key of a client certificate Secret,
        written to files for etcdctl."""
        data = kjson("get", "secret", secret)["data"]
        folder = os.path.join(WORK, folder)
        os.makedirs(folder, exist_ok=True)
        files = {}
        for key in ("ca.crt", "tls.crt", "tls.key"):
            files[key] = os.path.join(folder, key)
            with open(files[key], "wb") as f:
                f.write(base64.b64decode(data[key]))
        return files

    def tls_users_under_auth(self, name, etcdctl, root_flags):
        """etcd's auth on a TLS cluster: a user's certificate from
        `tls.clientUsers` acts as that user (CN), with that user's
        permissions only; the operator (CN root) still changes membership;
        a user taken off the list loses its Secret."""
        alice = self.client_certificate(f"{name}-client-alice-tls", "sec-alice")
        subject = run("openssl", "x509", "-noout", "-subject", "-in", alice["tls.crt"]).stdout
        assert "CN = alice" in subject or "CN=alice" in subject, subject
        alice_flags = [f"--cacert={alice['ca.crt']}", f"--cert={alice['tls.crt']}", f"--key={alice['tls.key']}"]
        for args in (
            ("user", "add", "root:k8s-root-pw", "--interactive=false"),
            ("role", "add", "app"),
            ("role", "grant-permission", "app", "--prefix=true", "readwrite", "/app/"),
            ("user", "add", "alice:k8s-alice-pw", "--interactive=false"),
            ("user", "grant-role", "alice", "app"),
            ("auth", "enable"),
        ):
            done = etcdctl(*args)
            assert done.returncode == 0, f"etcdctl {' '.join(args)}: {done.stdout}{done.stderr}"
        # The certificate's common name is the user: alice writes under
        # /app/ and nowhere else; root (the administrator's certificate)
        # everywhere.
        mine = etcdctl("put", "/app/x", "by-alice", flags=alice_flags)
        assert mine.returncode == 0, mine.stdout + mine.stderr
        theirs = etcdctl("put", "/other", "by-alice", flags=alice_flags)
        assert theirs.returncode != 0 and "permission denied" in theirs.stderr, theirs.stdout + theirs.stderr
        admin = etcdctl("put", "/other", "by-root", flags=root_flags)
        assert admin.returncode == 0, admin.stdout + admin.stderr
        # The operator presents CN root: with auth on it still adds a member.
        kubectl("scale", f"raftc/{name}", "--replicas=4")
        def four_voters():
            st = self.raftc(name).get("status") or {}
            members = st.get("members", [])
            return (
                st.get("phase") == "Running"
                and st.get("readyReplicas") == 4
                and len(members) == 4
                and all(m.get("role", "").lower() == "voter" for m in members)
            )

        eventually(f"{name} Running with 4 voters under auth", four_voters, 120)
        joined = etcdctl("member", "list", flags=root_flags)
        assert joined.returncode == 0 and len(joined.stdout.strip().splitlines()) == 4, joined.stdout + joined.stderr
        assert self.raftc(name)["status"].get("clientUsers") == ["alice"], self.raftc(name)["status"]
        kubectl("patch", "raftc", name, "--type=merge", "-p", json.dumps({"spec": {"tls": {"clientUsers": []}}}))
        eventually(
            f"{name}-client-alice-tls removed",
            lambda: run("kubectl", "get", "secret", f"{name}-client-alice-tls", check=False).returncode != 0,
            60,
        )

    def step_unreachable_members_explained(self):
        # Pods that never run (no process behind them, their names unknown to
        # the resolver): the status must say why there is no leader.
        self.kubelet.ignored_instances.add("ghost")
        ghost = yaml.safe_load(open(EXAMPLE))
        ghost["metadata"]["name"] = "ghost"
        ghost["spec"]["replicas"] = 1
        kubectl("apply", "-f", "-", input=yaml.safe_dump(ghost))

        def explained():
            st = self.raftc("ghost").get("status") or {}
            conds = {c["type"]: c for c in st.get("conditions", [])}
            avail = conds.get("Available", {})
            if not (
                avail.get("status") == "False"
                and avail.get("reason") in ("MembersUnreachable", "NoLeader")
                and "ghost-0" in avail.get("message", "")
            ):
                raise AssertionError(f"Available condition: {avail}")
            return avail

        avail = eventually("ghost's status explains the missing leader", explained, 60)
        log(f"  {avail['reason']}: {avail['message'][:160]}")
        kubectl("delete", "raftc", "ghost", "--wait=true", "--timeout=60s")
        kubectl("delete", "pvc", "-l", "app.kubernetes.io/instance=ghost", "--wait=false")

    def kubelet_check(self):
        assert not self.kubelet.errors, f"process kubelet: {self.kubelet.errors[-3:]}"

    def step_scale_up_under_writes(self):
        self.start_writer()
        eventually("writes acknowledged", lambda: len(self.acked) >= 20, 30)
        kubectl("scale", "raftc/demo", "--replicas=5")
        eventually("demo healthy with 5 voters", lambda: self.healthy("demo", 5), 180)
        self.kubelet_check()

    def step_scale_down_under_writes(self):
        kubectl("scale", "raftc/demo", "--replicas=3")
        eventually("demo healthy with 3 voters", lambda: self.healthy("demo", 3), 180)
        eventually(
            "demo-3 and demo-4 gone",
            lambda: sorted(p["metadata"]["name"] for p in kjson("get", "pods", "-l", "app.kubernetes.io/instance=demo")["items"]) == ["demo-0", "demo-1", "demo-2"],
            60,
        )
        before = len(self.acked)
        eventually("writes continue after scaling", lambda: len(self.acked) >= before + 20, 30)
        self.stop_writer()
        n = self.check_acked()
        log(f"  {n} acknowledged writes all present ({self.writer_errors} unacknowledged)")
        # One membership change at a time: the configuration never holds
        # more than one learner, and the voter count moves by one.
        assert self.config_samples, "no configuration samples"
        assert max(learners for _, learners in self.config_samples) <= 1, "two learners at once"
        voters_seen = sorted({v for v, _ in self.config_samples})
        assert voters_seen == [3, 4, 5], f"voter counts seen: {voters_seen}"
        for (v1, _), (v2, _) in zip(self.config_samples, self.config_samples[1:]):
            assert abs(v2 - v1) <= 1, f"voters jumped {v1} -> {v2}"
        # Every scaling event keeps its own message (events are not merged
        # into the first one's text).
        events = kjson("get", "events", "--field-selector", "involvedObject.name=demo")["items"]
        ups = {e["message"] for e in events if e["reason"] == "ScalingUp"}
        assert len(ups) >= 2, f"ScalingUp messages: {ups}"

    def step_pod_deleted_rejoins(self):
        old_uid = kjson("get", "pod", "demo-1")["metadata"]["uid"]
        kubectl("delete", "pod", "demo-1", "--wait=false")
        new_uid = eventually(
            "demo-1 recreated",
            lambda: (uid := kjson("get", "pod", "demo-1")["metadata"]["uid"]) != old_uid and uid,
            60,
        )
        before = len(self.acked)

        def caught_up():
            # Only the new pod's process counts, not the old one on its way out.
            if self.kubelet.process_uid("default", "demo-1") != new_uid:
                return False
            leader = self.leader_status()
            st = self.node_status("demo-1")
            return leader and st and st["cluster_id"] == leader["cluster_id"] and (
                st["applied_index"] >= leader["commit_index"] - 5
            ) and st["role"] in ("follower", "leader") and st["applied_index"] >= before

        eventually("demo-1 back and caught up", caught_up, 60)
        eventually("demo healthy with 3 voters", lambda: self.healthy("demo", 3), 60)

    def watch_rollout(self, before, until, timeout):
        """Samples the pods until `until()` holds: the order in which the
        pods of `before` were replaced, and the most pods not serving at
        once."""
        replaced, most_down = [], 0
        deadline = time.monotonic() + timeout
        while True:
            uids = self.pod_uids()
            for pod, (uid, _) in before.items():
                if pod not in replaced and uids.get(pod, (None,))[0] != uid:
                    replaced.append(pod)
            why = {p: self.not_serving(p, uids) for p in before}
            down = [p for p, reason in why.items() if reason]
            if len(down) > 1:
                log(f"  {len(down)} down: {why}")
            most_down = max(most_down, len(down))
            try:
                if until(replaced):
                    return replaced, most_down
            except Exception:  # noqa: BLE001 - not yet
                pass
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"rollout: not done within {timeout}s; replaced {replaced}, "
                    f"down now {down}, status {self.raftc('demo').get('status', {}).get('message')}"
                )
            time.sleep(0.2)

    def step_rolling_update_under_writes(self):
        self.config_samples = []
        self.start_writer()
        acked_before = len(self.acked)
        eventually("writes acknowledged", lambda: len(self.acked) >= acked_before + 20, 30)
        leader = self.leader_status()["name"]
        before = {p: v for p, v in self.pod_uids().items()}
        assert sorted(before) == ["demo-0", "demo-1", "demo-2"], before
        transfers_before = len(self.event_notes("LeaderTransferred"))
        # A template change (what `kubectl rollout restart` does to a Deployment).
        kubectl(
            "patch", "raftc", "demo", "--type", "merge", "-p",
            '{"spec":{"pod":{"annotations":{"raftkv.io/restartedAt":"rollout-1"}}}}',
        )
        replaced, most_down = self.watch_rollout(
            before,
            lambda replaced: len(replaced) == 3 and self.healthy("demo", 3),
            150,
        )
        log(f"  replaced in order {replaced}, leader was {leader}; at most {most_down} pod down at once")
        assert most_down <= 1, f"{most_down} pods down at once"
        assert replaced[-1] == leader, f"the leader's pod {leader} was not replaced last: {replaced}"
        assert len(self.event_notes("LeaderTransferred")) > transfers_before, "no leadership transfer"
        # Membership never changed: three voters, no learner, throughout.
        assert self.config_samples, "no configuration samples"
        assert {s for s in self.config_samples} == {(3, 0)}, set(self.config_samples)
        sts = kjson("get", "statefulset", "demo")
        for pod in before:
            labels = kjson("get", "pod", pod)["metadata"]["labels"]
            assert labels["controller-revision-hash"] == sts["status"]["updateRevision"], pod
        during = len(self.acked)
        assert during > acked_before + 20, "writes stopped during the rollout"
        n = self.check_acked()
        log(f"  {n} acknowledged writes all present ({self.writer_errors} unacknowledged)")

    def step_broken_release_halts_the_rollout(self):
        spec_image = yaml.safe_load(open(EXAMPLE))["spec"]["image"]
        broken = spec_image.rsplit(":", 1)[0] + ":broken"
        before = self.pod_uids()
        kubectl("patch", "raftc", "demo", "--type", "merge", "-p", json.dumps({"spec": {"image": broken}}))

        def halted():
            degraded = self.condition("Degraded")
            if degraded.get("reason") != "RolloutHalted" or degraded.get("status") != "True":
                raise AssertionError(f"Degraded: {degraded}")
            return degraded

        degraded = eventually("the rollout halts", halted, ROLLOUT_TIMEOUT_SECONDS + 60)
        log(f"  {degraded['message'][:150]}")
        uids = self.pod_uids()
        replaced = [p for p in before if uids.get(p, (None,))[0] != before[p][0]]
        assert len(replaced) == 1, f"pods replaced by a release that cannot start: {replaced}"
        assert self.raftc("demo")["status"]["phase"] == "Degraded"
        assert any(replaced[0] in n for n in self.event_notes("RolloutHalted")), "no RolloutHalted event"
        # The other two still form a quorum and take writes.
        acked = len(self.acked)
        eventually("writes continue while halted", lambda: len(self.acked) >= acked + 10, 30)
        # Reverting the image replaces the broken pod only.
        kubectl("patch", "raftc", "demo", "--type", "merge", "-p", json.dumps({"spec": {"image": spec_image}}))
        eventually("demo healthy with 3 voters", lambda: self.healthy("demo", 3), 90)
        eventually("Degraded cleared", lambda: self.condition("Degraded").get("status") == "False", 30)
        uids = self.pod_uids()
        again = [p for p in before if p not in replaced and uids[p][0] != before[p][0]]
        assert not again, f"healthy pods replaced after the revert: {again}"

    def step_volume_lost_self_heals(self):
        old_pvc = kjson("get", "pvc", "data-demo-1")["metadata"]["uid"]
        recorded = self.raftc("demo")["status"]["memberVolumes"]
        assert recorded.get("demo-1") == old_pvc, recorded
        added_before = len([n for n in self.event_notes("MemberAdded") if n.startswith("demo-1 ")])
        kubectl("delete", "pvc", "data-demo-1", "--wait=false")
        kubectl("delete", "pod", "demo-1", "--wait=false")
        eventually(
            "VolumeLost event for demo-1",
            lambda: any(n.startswith("demo-1 ") for n in self.event_notes("VolumeLost")),
            90,
        )
        eventually("demo healthy with 3 voters", lambda: self.healthy("demo", 3), 90)
        new_pvc = kjson("get", "pvc", "data-demo-1")["metadata"]["uid"]
        assert new_pvc != old_pvc
        added = [n for n in self.event_notes("MemberAdded") if n.startswith("demo-1 ")]
        assert len(added) > added_before, f"demo-1 was not added again as a learner: {added}"
        assert any(n.startswith("demo-1 ") for n in self.event_notes("MemberPromoted"))
        eventually(
            "the new volume recorded",
            lambda: self.raftc("demo")["status"]["memberVolumes"].get("demo-1") == new_pvc,
            30,
        )
        leader = self.leader_status()
        st = self.node_status("demo-1")
        assert st["applied_index"] >= leader["commit_index"] - 100, (st, leader["commit_index"])

    def step_data_dir_emptied_self_heals(self):
        # Same PVC, emptied directory: only the node's storage id tells.
        pod = "demo-2"
        old = self.node_status(pod)["storage_id"]
        recorded = self.raftc("demo")["status"].get("memberStorage", {})
        assert recorded.get(pod) == old, recorded
        pvc_uid = kjson("get", "pvc", f"data-{pod}")["metadata"]["uid"]
        added_before = len([n for n in self.event_notes("MemberAdded") if n.startswith(f"{pod} ")])
        self.kubelet.paused.add(("default", pod))
        eventually(f"{pod} stopped", lambda: pod not in self.kubelet.running("default"), 30)
        volume = os.path.join(WORK, "volumes", pvc_uid)
        for entry in os.listdir(volume):
            path = os.path.join(volume, entry)
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
        self.kubelet.paused.discard(("default", pod))
        eventually(
            f"VolumeLost event for {pod}",
            lambda: any(n.startswith(f"{pod} ") for n in self.event_notes("VolumeLost")),
            90,
        )
        eventually("demo healthy with 3 voters", lambda: self.healthy("demo", 3), 90)
        st = self.node_status(pod)
        new = st["storage_id"]
        assert new != old, (old, new)
        # Added anew as a learner: it votes again.
        assert st["withholding_votes"] is False, st
        assert kjson("get", "pvc", f"data-{pod}")["metadata"]["uid"] == pvc_uid
        added = [n for n in self.event_notes("MemberAdded") if n.startswith(f"{pod} ")]
        assert len(added) > added_before, f"{pod} was not added again as a learner: {added}"
        eventually(
            "the new storage id recorded",
            lambda: self.raftc("demo")["status"]["memberStorage"].get(pod) == new,
            30,
        )

    def step_member_down_reported(self):
        self.kubelet.paused.add(("default", "demo-2"))

        def reported():
            cond = self.condition("MemberDown")
            if cond.get("status") != "True" or "demo-2" not in cond.get("message", ""):
                raise AssertionError(f"MemberDown: {cond}")
            return cond

        cond = eventually("demo-2 reported down", reported, MEMBER_DOWN_SECONDS + 30)
        log(f"  {cond['message']}")
        members = {m["name"]: m for m in self.raftc("demo")["status"]["members"]}
        assert members["demo-2"].get("unhealthySince"), members["demo-2"]
        assert any("demo-2" in n for n in self.event_notes("MemberDown")), "no MemberDown event"
        self.kubelet.paused.discard(("default", "demo-2"))
        eventually("demo healthy with 3 voters", lambda: self.healthy("demo", 3), 60)
        eventually("MemberDown cleared", lambda: self.condition("MemberDown").get("status") == "False", 30)
        self.stop_writer()
        n = self.check_acked()
        log(f"  {n} acknowledged writes all present ({self.writer_errors} unacknowledged)")

    def step_helm_test_check(self):
        # A test pod cannot run without a container runtime: run the hook's
        # own script here, its Service name resolving to the operator.
        hooks = list(yaml.safe_load_all(run("helm", "get", "hooks", RELEASE, "-n", OP_NS).stdout))
        pods = [h for h in hooks if h and h["kind"] == "Pod"]
        assert len(pods) == 1, hooks
        assert pods[0]["metadata"]["annotations"]["helm.sh/hook"] == "test"
        container = pods[0]["spec"]["containers"][0]
        res = run(*container["command"], check=False)
        assert res.returncode == 0, f"helm test script failed: {res.stdout} {res.stderr}"
        log(f"  {res.stdout.strip()}")

    def step_delete_retain_adopts(self):
        value = self.acked[next(iter(self.acked))]
        key = next(iter(self.acked))
        kubectl("delete", "raftc", "demo", "--wait=true", "--timeout=60s")
        eventually("demo's pods gone", lambda: not kjson("get", "pods", "-l", "app.kubernetes.io/instance=demo")["items"], 60)
        pvcs = kjson("get", "pvc", "-l", "app.kubernetes.io/instance=demo")["items"]
        assert len(pvcs) >= 3, f"Retain kept {len(pvcs)} claims"
        kubectl("apply", "-f", EXAMPLE)
        eventually("demo healthy again with 3 voters", lambda: self.healthy("demo", 3), 120)
        leader = self.leader_status()
        status, body = http("GET", f"{self.kubelet.http_url('default', leader['name'])}/v1/kv/{key}")
        assert status == 200 and body.decode() == value, (status, body)
        self.check_acked()

    def step_delete_with_pvc_delete(self):
        kubectl("patch", "raftc", "demo", "--type", "merge", "-p", '{"spec":{"pvcRetention":"Delete"}}')
        eventually(
            "StatefulSet's retention policy updated",
            lambda: kjson("get", "statefulset", "demo")["spec"]
            .get("persistentVolumeClaimRetentionPolicy", {})
            .get("whenDeleted") == "Delete",
            30,
        )

        # Delete frees the volumes of removed members (demo-3 and demo-4,
        # kept while the policy was Retain): the operator deletes them.
        def member_claims_only():
            left = kjson("get", "pvc", "-l", "app.kubernetes.io/instance=demo")["items"]
            names = sorted(c["metadata"]["name"] for c in left)
            if len(names) != 3:
                raise AssertionError(f"claims: {names}")
            return True

        eventually("the removed members' claims deleted", member_claims_only, 60)
        kubectl("delete", "raftc", "demo", "--wait=true", "--timeout=60s")

        def no_claims():
            left = kjson("get", "pvc", "-l", "app.kubernetes.io/instance=demo")["items"]
            if left:
                raise AssertionError(f"claims left: {[c['metadata']['name'] for c in left]}")
            return True

        eventually("demo's claims deleted", no_claims, 90)

    def step_helm_uninstall_with_cluster(self):
        run(
            "helm", "upgrade", RELEASE, CHART, "-n", OP_NS, "--reuse-values",
            "--set", "cluster.enabled=true", "--set", "cluster.spec.replicas=3",
        )
        eventually("chart's cluster healthy", lambda: self.healthy("raftkv", 3, OP_NS), 120)
        # Up to here the operator must never have been refused; once helm
        # uninstall removes its RBAC, a pass already under way may be.
        operator_log = os.path.join(WORK, "logs", "operator.log")
        rbac_gone_at = os.path.getsize(operator_log)
        run("helm", "uninstall", RELEASE, "-n", OP_NS)
        eventually(
            "release's cluster gone",
            lambda: not kjson("get", "raftc", "-n", OP_NS)["items"]
            and not kjson(
                "get", "statefulsets,pods,secrets,networkpolicies", "-n", OP_NS, "-l", "app.kubernetes.io/name=raftkv"
            )["items"],
            60,
        )
        left = kjson("get", "deployments,services,serviceaccounts,roles,rolebindings,configmaps", "-n", OP_NS)["items"]
        ours = [
            f"{o['kind']}/{o['metadata']['name']}"
            for o in left
            if o["metadata"]["name"] not in ("default", "kube-root-ca.crt")
        ]
        assert not ours, f"left behind in {OP_NS}: {ours}"
        cluster_wide = kjson("get", "clusterroles,clusterrolebindings", "-l", f"app.kubernetes.io/instance={RELEASE}")["items"]
        assert not cluster_wide, [o["metadata"]["name"] for o in cluster_wide]
        took = self.stop_operator(deadline=5)
        log(f"  operator exited {took:.1f}s after SIGTERM")
        # The chart's RBAC sufficed: the API server never refused the operator.
        with open(operator_log, "rb") as f:
            before_uninstall = f.read(rbac_gone_at).decode(errors="replace").splitlines()
        refused = [line for line in before_uninstall if "forbidden" in line.lower() or " 403" in line]
        assert not refused, f"the operator was refused: {refused[:3]}"

    # --- backups and restore --------------------------------------------------

    def backup_status(self, name="demo"):
        return (self.raftc(name).get("status") or {}).get("backup") or {}

    def backup_files(self, claim="demo-backup"):
        uid = kjson("get", "pvc", claim)["metadata"]["uid"]
        folder = os.path.join(WORK, "volumes", uid)
        return sorted(f for f in os.listdir(folder) if f.endswith(".db"))

    def run_backup_job(self, job):
        """`kubectl create job --from=cronjob/demo-backup JOB`, as the docs
        say, then waits for the status to report it."""
        # Files are named by the second: never two runs in one.
        second = int(time.time())
        eventually("the next second", lambda: int(time.time()) > second, 3, interval=0.05)
        kubectl("create", "job", "--from=cronjob/demo-backup", job)

        def reported():
            st = self.backup_status()
            if st.get("lastSuccessfulJob") != job:
                raise AssertionError(f"status.backup {st}; BackupFailed {self.condition('BackupFailed')}")
            return st

        return eventually(f"status.backup reports {job}", reported, 40)

    def step_scheduled_backup(self):
        # Keys written and acknowledged before any backup: every one must
        # come back in the restored cluster.
        leader = eventually("a leader", lambda: self.leader_status(), 60)
        url = self.kubelet.http_url("default", leader["name"])
        self.backup_keys = {}
        for i in range(40):
            key, value = f"backup-{i:03d}", f"value-{i}"
            status, _ = http("PUT", f"{url}/v1/kv/{key}", value.encode())
            assert status == 200, status
            self.backup_keys[key] = value
        # The CEL rule: exactly one of claimName and size.
        res = kubectl(
            "patch", "raftc", "demo", "--type", "merge", "-p",
            json.dumps({"spec": {"backup": {"schedule": "@daily", "pvc": {"claimName": "x", "size": "1Gi"}}}}),
            check=False,
        )
        assert res.returncode != 0 and "exactly one" in res.stderr, res.stderr
        # A schedule the cron parser refuses: reported, no CronJob.
        kubectl(
            "patch", "raftc", "demo", "--type", "merge", "-p",
            json.dumps({"spec": {"backup": {"schedule": "every night", "keep": 2, "pvc": {"size": "1Gi"}}}}),
        )
        eventually(
            "InvalidSchedule reported",
            lambda: self.condition("BackupFailed").get("reason") == "InvalidSchedule",
            30,
        )
        assert kubectl("get", "cronjob", "demo-backup", check=False).returncode != 0
        kubectl(
            "patch", "raftc", "demo", "--type", "merge", "-p",
            json.dumps({"spec": {"backup": {"schedule": "0 3 * * *"}}}),
        )
        cronjob = eventually("CronJob demo-backup", lambda: kjson("get", "cronjob", "demo-backup"), 30)
        owners = [(o["kind"], o["name"]) for o in cronjob["metadata"]["ownerReferences"]]
        assert owners == [("RaftCluster", "demo")], owners
        assert cronjob["spec"]["schedule"] == "0 3 * * *", cronjob["spec"]
        eventually(
            "BackupFailed cleared",
            lambda: self.condition("BackupFailed").get("reason") == "NoBackupYet",
            30,
        )
        # The claim the operator created outlives the cluster: no owner.
        claim = kjson("get", "pvc", "demo-backup")
        assert not claim["metadata"].get("ownerReferences"), claim["metadata"]

        first = self.run_backup_job("demo-backup-now-1")
        log(f"  {first['file']}: revision {first['revision']}, {first['sizeBytes']} bytes")
        assert first["claimName"] == "demo-backup" and first["sizeBytes"] > 0, first
        assert 0 < first["revision"], first
        assert self.backup_files() == [first["file"]], self.backup_files()
        cond = self.condition("BackupFailed")
        assert cond.get("status") == "False" and cond.get("reason") == "BackupSucceeded", cond
        # The operator's metrics: the last success and the schedule's gap.
        metrics = http("GET", self.operator_metrics)[1].decode()
        last = [
            line for line in metrics.splitlines()
            if line.startswith("raftkv_operator_backup_last_success_timestamp_seconds{")
            and 'cluster="demo"' in line
        ]
        assert last and abs(float(last[0].split()[-1]) - time.time()) < 120, last
        assert 'raftkv_operator_backup_schedule_interval_seconds{cluster="demo",namespace="default"} 86400' in metrics

        # A failing run (nothing listens where it saves from) is reported.
        job = yaml.safe_load(kubectl("create", "job", "--from=cronjob/demo-backup", "demo-backup-broken",
                                     "--dry-run=client", "-o", "yaml").stdout)
        args = job["spec"]["template"]["spec"]["containers"][0]["args"]
        args[args.index("--endpoints") + 1] = "127.0.0.1:9"
        job["spec"]["backoffLimit"] = 0
        kubectl("apply", "-f", "-", input=yaml.safe_dump(job))

        def failed():
            cond = self.condition("BackupFailed")
            if cond.get("status") != "True" or "demo-backup-broken" not in cond.get("message", ""):
                raise AssertionError(f"BackupFailed: {cond}")
            return cond

        cond = eventually("the failed backup reported", failed, 40)
        log(f"  {cond['reason']}: {cond['message'][:150]}")
        assert "no endpoint answered" in cond["message"], cond
        assert self.backup_status()["lastSuccessfulJob"] == "demo-backup-now-1"

        # Two more: keep 2 leaves the newest two, and a success clears the
        # condition.
        second = self.run_backup_job("demo-backup-now-2")
        third = self.run_backup_job("demo-backup-now-3")
        files = self.backup_files()
        assert files == sorted([second["file"], third["file"]]), (files, second, third)
        assert first["file"] not in files
        assert third["revision"] >= first["revision"]
        eventually(
            "BackupFailed cleared by the next success",
            lambda: self.condition("BackupFailed").get("status") == "False",
            30,
        )
        self.restore_file = third["file"]

    def step_restore_from_backup(self):
        restored = yaml.safe_load(open(EXAMPLE))
        restored["metadata"]["name"] = "restored"
        restored["spec"]["restore"] = {"claimName": "demo-backup", "file": self.restore_file}
        restored["spec"].pop("backup", None)
        kubectl("apply", "-f", "-", input=yaml.safe_dump(restored))
        eventually("restored healthy with 3 voters", lambda: self.healthy("restored", 3), 120)
        leader = self.leader_status("default", "restored")
        url = self.kubelet.http_url("default", leader["name"])
        missing = []
        for key, value in self.backup_keys.items():
            status, body = http("GET", f"{url}/v1/kv/{key}")
            if status != 200 or body.decode() != value:
                missing.append(key)
        assert not missing, f"{len(missing)} keys of the backup missing, e.g. {missing[:5]}"
        # Only the bootstrapping member restored; the others joined.
        logs = os.path.join(WORK, "pods")
        said = {}
        for f in os.listdir(logs):
            for pod in ("restored-0", "restored-1", "restored-2"):
                if f.startswith(f"default_{pod}_"):
                    with open(os.path.join(logs, f), errors="replace") as fh:
                        said[pod] = said.get(pod, "") + fh.read()
        assert "keys at revision" in said.get("restored-0", ""), said.get("restored-0", "")[-500:]
        assert "keys at revision" not in said.get("restored-1", ""), said.get("restored-1", "")[-500:]
        assert "joins an existing cluster" in said.get("restored-1", ""), said.get("restored-1", "")[-500:]
        log(f"  {len(self.backup_keys)} keys served by the restored cluster (leader {leader['name']})")
        kubectl("delete", "raftc", "restored", "--wait=true", "--timeout=60s")
        kubectl("delete", "pvc", "-l", "app.kubernetes.io/instance=restored", "--wait=false")
        # The backups' claim has no owner; later steps count demo's claims.
        kubectl("patch", "raftc", "demo", "--type", "json", "-p", '[{"op":"remove","path":"/spec/backup"}]')
        eventually(
            "CronJob removed with spec.backup",
            lambda: kubectl("get", "cronjob", "demo-backup", check=False).returncode != 0,
            30,
        )
        kubectl("delete", "pvc", "demo-backup", "--wait=false")

    def step_s3_backup_and_restore(self):
        # A real S3-compatible server (moto) on loopback, where the pods
        # (local processes in the same network namespace) reach it.
        port = free_port()
        moto = subprocess.Popen(
            ["moto_server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        endpoint = f"http://127.0.0.1:{port}"
        try:
            eventually("moto_server to answer", lambda: http("GET", endpoint)[0] == 200, 60)
            http("PUT", f"{endpoint}/raftkv-backups", b"")
            kubectl("create", "secret", "generic", "demo-s3",
                    "--from-literal=AWS_ACCESS_KEY_ID=raftkv", "--from-literal=AWS_SECRET_ACCESS_KEY=raftkv-secret")
            s3 = {"bucket": "raftkv-backups", "prefix": "k8s/demo", "endpoint": endpoint,
                  "forcePathStyle": True, "credentialsSecret": "demo-s3"}
            # The CEL rule: a claim or a bucket, not both.
            res = kubectl(
                "patch", "raftc", "demo", "--type", "merge", "-p",
                json.dumps({"spec": {"backup": {"schedule": "@daily", "pvc": {"size": "1Gi"}, "s3": s3}}}),
                check=False,
            )
            assert res.returncode != 0 and "exactly one" in res.stderr, res.stderr
            kubectl(
                "patch", "raftc", "demo", "--type", "merge", "-p",
                json.dumps({"spec": {"backup": {"schedule": "0 3 * * *", "timeZone": "Etc/UTC",
                                                "keep": 1, "s3": s3}}}),
            )

            def s3_cronjob():
                cj = kjson("get", "cronjob", "demo-backup")
                args = cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"]
                assert "--s3" in args, args
                return cj

            cronjob = eventually("CronJob demo-backup to S3", s3_cronjob, 30)
            assert cronjob["spec"].get("timeZone") == "Etc/UTC", cronjob["spec"]
            first = self.run_backup_job("demo-s3-backup-1")
            second = self.run_backup_job("demo-s3-backup-2")
            log(f"  {second['location']}: revision {second['revision']}, {second['sizeBytes']} bytes")
            assert second["location"] == f"s3://raftkv-backups/k8s/demo/{second['file']}", second
            assert "claimName" not in second, second
            # keep 1: the first went when the second was uploaded.
            listing = http("GET", f"{endpoint}/raftkv-backups?list-type=2&prefix=k8s/demo/")[1].decode()
            assert f"k8s/demo/{second['file']}" in listing, listing
            assert first["file"] not in listing, listing

            restored = yaml.safe_load(open(EXAMPLE))
            restored["metadata"]["name"] = "restored-s3"
            restored["spec"].pop("backup", None)
            store = {k: v for k, v in s3.items() if k != "prefix"}
            restored["spec"]["restore"] = {"s3": dict(store, key=f"k8s/demo/{second['file']}")}
            kubectl("apply", "-f", "-", input=yaml.safe_dump(restored))
            eventually("restored-s3 healthy with 3 voters", lambda: self.healthy("restored-s3", 3), 120)
            leader = self.leader_status("default", "restored-s3")
            url = self.kubelet.http_url("default", leader["name"])
            missing = [
                key for key, value in self.backup_keys.items()
                if http("GET", f"{url}/v1/kv/{key}") != (200, value.encode())
            ]
            assert not missing, f"{len(missing)} keys of the backup missing, e.g. {missing[:5]}"
            log(f"  {len(self.backup_keys)} keys served by the cluster restored from S3")
            kubectl("delete", "raftc", "restored-s3", "--wait=true", "--timeout=60s")
            kubectl("delete", "pvc", "-l", "app.kubernetes.io/instance=restored-s3", "--wait=false")
            kubectl("patch", "raftc", "demo", "--type", "json", "-p", '[{"op":"remove","path":"/spec/backup"}]')
            eventually(
                "CronJob removed with spec.backup",
                lambda: kubectl("get", "cronjob", "demo-backup", check=False).returncode != 0,
                30,
            )
            kubectl("delete", "secret", "demo-s3")
        finally:
            moto.kill()
            moto.wait()

    # --- driver ---------------------------------------------------------------

    def main(self):
        steps = [
            ("helm install: CRD established, short name raftc", self.step_helm_install),
            ("CEL rules reject a bad spec", self.step_cel_rules),
            ("operator runs as the chart's ServiceAccount", self.step_operator_as_chart_sa),
            ("no leader: the status says why", self.step_unreachable_members_explained),
            ("kubectl apply the example: leader, term, commit in columns", self.step_apply_example),
            ("members authenticate each other with the cluster's secret", self.step_peers_authenticated),
            ("tls.mode auto: certificates, etcdctl over TLS, plain text refused", self.step_tls_auto),
            ("kubectl scale raftc/demo 3 -> 5 under writes", self.step_scale_up_under_writes),
            ("kubectl scale raftc/demo 5 -> 3, nothing acknowledged lost", self.step_scale_down_under_writes),
            ("a pod deleted by hand comes back and catches up", self.step_pod_deleted_rejoins),
            ("rolling update under writes: one pod at a time, the leader's last", self.step_rolling_update_under_writes),
            ("a release that cannot start halts the rollout", self.step_broken_release_halts_the_rollout),
            ("a member whose volume is lost is removed and added back", self.step_volume_lost_self_heals),
            ("a member whose data directory is emptied is removed and added back", self.step_data_dir_emptied_self_heals),
            ("a member down longer than the threshold is reported", self.step_member_down_reported),
            ("scheduled backups: CronJob, kubectl create job --from, status, retention", self.step_scheduled_backup),
            ("a new RaftCluster restored from a backup serves its keys", self.step_restore_from_backup),
            ("backups to an S3-compatible store (moto), and a cluster restored from one", self.step_s3_backup_and_restore),
            ("the helm test hook's check holds", self.step_helm_test_check),
            ("delete + re-apply with pvcRetention Retain adopts the data", self.step_delete_retain_adopts),
            ("delete with pvcRetention Delete removes the claims", self.step_delete_with_pvc_delete),
            ("helm uninstall with cluster.enabled leaves nothing behind", self.step_helm_uninstall_with_cluster),
        ]
        if os.environ.get("RAFTKV_K8S_ONLY") == "tls":
            wanted = (self.step_helm_install, self.step_operator_as_chart_sa, self.step_tls_auto)
            steps = [(n, fn) for n, fn in steps if fn in wanted]
        if os.environ.get("RAFTKV_K8S_ONLY") == "backup":
            # Only what the backup steps need (see tests/k8s/run).
            wanted = (
                self.step_helm_install, self.step_operator_as_chart_sa, self.step_apply_example,
                self.step_scheduled_backup, self.step_restore_from_backup,
                self.step_s3_backup_and_restore,
            )
            steps = [(n, fn) for n, fn in steps if fn in wanted]
        self.kubelet.start()
        t0 = time.monotonic()
        try:
            for name, fn in steps:
                log(f"STEP {name}")
                t = time.monotonic()
                try:
                    fn()
                    self.kubelet_check()
                except Exception:  # noqa: BLE001 - reported, later steps depend on it
                    self.failed += 1
                    log(f"FAIL {name} ({time.monotonic() - t:.1f}s)")
                    traceback.print_exc()
                    break
                self.passed += 1
                log(f"ok   {name} ({time.monotonic() - t:.1f}s)")
        finally:
            self.writer_stop.set()
            try:
                self.stop_operator(deadline=15)
            except AssertionError as e:
                log(str(e))
            self.kubelet.stop()
        skipped = len(steps) - self.passed - self.failed
        log(f"suite took {time.monotonic() - t0:.0f}s")
        print(f"k8s: {self.passed} passed, {self.failed} failed, {skipped} skipped", flush=True)
        return 0 if self.failed == 0 and skipped == 0 else 1


if __name__ == "__main__":
    sys.exit(Suite().main())
