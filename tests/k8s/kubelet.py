"""A test-side "process kubelet" and volume provisioner for the k8s suite.

kwok marks pods Running on a fake node but runs nothing. For every raftkv pod
that kwok has marked Running, this starts a real `raftkv serve` with the pod's
own command, args and environment (field references resolved as a kubelet
would), listening on an address of the loopback range of its own, and adds
the pod's DNS name (`<hostname>.<subdomain>.<namespace>.svc`) to the hosts
file that the suite's private network namespace bind-mounts over /etc/hosts.
The operator's unchanged DNS addressing thus reaches real processes.

It also binds every pending PersistentVolumeClaim to a new PersistentVolume
(there is no storage provisioner); a claim's data lives in a folder named by
the claim's UID, so a retained claim keeps its data across pods and a claim
deleted and made anew starts empty. A process that exits is started again
after a back-off, as a container with `restartPolicy: Always` would be.

Pods of backup Jobs (`app.kubernetes.io/name=raftkv-backup`) run once
(`restartPolicy: Never`): when the process exits, the pod is marked
Succeeded or Failed with the container's termination message (the file at
its terminationMessagePath, or the log's tail with FallbackToLogsOnError),
as a kubelet reports it. Init containers run to completion, in order,
before a pod's container starts (and again after a failure, after a
back-off). A Secret volume is a folder of the Secret's keys, written when
the pod's process starts (a Secret that does not exist yet holds the
process back, as a kubelet would). Paths under a volume's mount path, in
arguments and variables, are that volume's folder here, and the termination message path is a
file of the pod's own. A Service name (`<svc>.<ns>.svc`) resolves to the
address of one live pod it selects, a stand-in for kube-proxy, written
when a pod that is not a member starts.

Two stand-ins for what only a real node shows: an image whose tag starts
with `broken` is one whose binary cannot start (the process exits at once,
as a bad release would), and `paused` pods get no process (a container
that keeps crashing), so that a member can be down while its pod exists.
"""

import base64
import json
import os
import re
import signal
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

# What the image sets (deploy/Dockerfile) and the operator does not.
IMAGE_DATA_DIR = "/var/lib/raftkv"
PORTS = {"RAFTKV_LISTEN_CLIENT": 2379, "RAFTKV_LISTEN_PEER": 2380, "RAFTKV_LISTEN_HTTP": 8080}
# Listeners a pod has only when its spec asks (the plain metrics port of TLS pods).
OPTIONAL_PORTS = {"RAFTKV_LISTEN_METRICS": 9090}
POD_SELECTOR = urllib.parse.quote("app.kubernetes.io/name in (raftkv,raftkv-backup)")
BROKEN_TAG = "broken"


def expand(value, defined):
    """Kubernetes' `$(VAR)` expansion of env values, commands and args."""
    return re.sub(
        r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
        lambda m: "$" if m.group(0) == "$$" else defined.get(m.group(1), m.group(0)),
        value,
    )


class Api:
    """The API server, as cluster admin (client certificate)."""

    def __init__(self, server, pki):
        self.server = server
        self.ctx = ssl.create_default_context(cafile=os.path.join(pki, "ca.crt"))
        self.ctx.load_cert_chain(os.path.join(pki, "admin.crt"), os.path.join(pki, "admin.key"))

    def request(self, method, path, body=None, content_type="application/json"):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.server + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", content_type)
        with urllib.request.urlopen(req, context=self.ctx, timeout=10) as resp:
            return json.loads(resp.read() or b"null")

    def get(self, path):
        return self.request("GET", path)

    def try_get(self, path):
        try:
            return self.get(path)
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise


class ContainerConfigError(Exception):
    """What a kubelet reports as CreateContainerConfigError: a Secret or
    ConfigMap the container needs is not there (yet, or any more)."""


class InitFailed(Exception):
    """An init container exited non-zero: the pod's container does not start."""


class Proc:
    def __init__(self, pod_key, uid, popen, log, labels=None, run_once=False, exit_report=None):
        self.pod_key = pod_key
        self.uid = uid
        self.popen = popen
        self.log = log
        self.labels = labels or {}
        self.restarts = 0
        self.exited_at = None
        # restartPolicy Never: report the exit instead of restarting.
        self.run_once = run_once
        self.reported = False
        # (container name, image, termination message file, policy, log path)
        self.exit_report = exit_report


class ProcessKubelet:
    def __init__(self, api, raftkv_bin, work, hosts_file):
        self.api = api
        self.raftkv_bin = raftkv_bin
        self.work = work
        self.hosts_file = hosts_file
        self.procs = {}  # pod uid -> Proc
        self.ips = {}  # (namespace, pod name) -> loopback address
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="process-kubelet", daemon=True)
        self.watcher = threading.Thread(target=self._watch_deletions, name="pod-deletions", daemon=True)
        self.errors = []
        # RaftClusters (app.kubernetes.io/instance) whose pods get no process.
        self.ignored_instances = set()
        # (namespace, pod name) whose process is stopped and not restarted.
        self.paused = set()
        # Pod uid -> (failures, monotonic time of the last) of init containers.
        self.init_failures = {}
        # Service FQDNs already written to the hosts file.
        self.service_hosts = set()
        self.lock = threading.Lock()
        os.makedirs(os.path.join(work, "volumes"), exist_ok=True)
        os.makedirs(os.path.join(work, "pods"), exist_ok=True)

    # --- public -------------------------------------------------------------

    def start(self):
        self.thread.start()
        self.watcher.start()

    def stop(self):
        self.stop_event.set()
        self.thread.join(timeout=30)
        with self.lock:
            for proc in list(self.procs.values()):
                self._kill(proc)
            self.procs.clear()

    def address(self, namespace, pod):
        """The loopback address a pod's process listens on."""
        return self.ips.get((namespace, pod))

    def http_url(self, namespace, pod):
        ip = self.address(namespace, pod)
        return None if ip is None else f"http://{ip}:8080"

    def process_uid(self, namespace, pod):
        """The UID of the pod whose live process serves that pod name."""
        with self.lock:
            for p in self.procs.values():
                if p.pod_key == (namespace, pod) and p.popen.poll() is None:
                    return p.uid
        return None

    def running(self, namespace):
        """Pod names of the namespace whose process is alive."""
        with self.lock:
            return sorted(
                p.pod_key[1]
                for p in self.procs.values()
                if p.pod_key[0] == namespace and p.popen.poll() is None
            )

    # --- the loop -----------------------------------------------------------

    def _loop(self):
        while not self.stop_event.is_set():
            try:
                self._provision_volumes()
                self._sync_pods()
            except Exception as e:  # keep serving; the suite reports it
                self.errors.append(repr(e))
            self.stop_event.wait(0.3)

    def _watch_deletions(self):
        """SIGTERM a pod's process the moment the pod is being deleted.

        A real kubelet stops a pod's containers before the pod object goes,
        so a StatefulSet never runs the old and the new pod of an ordinal at
        once. kwok lets a pod object go at once (it clears finalizers too),
        and the polling loop above may notice a few hundred milliseconds
        later: meanwhile the new pod exists while the old process still
        answers under its name. raftkv stops serving HTTP as soon as it gets
        SIGTERM, so signalling here closes that window; the loop reaps.
        """
        path = f"/api/v1/pods?watch=1&labelSelector={POD_SELECTOR}"
        while not self.stop_event.is_set():
            try:
                req = urllib.request.Request(self.api.server + path)
                with urllib.request.urlopen(req, context=self.api.ctx, timeout=60) as resp:
                    for line in resp:
                        event = json.loads(line)
                        meta = (event.get("object") or {}).get("metadata") or {}
                        if event.get("type") == "DELETED" or meta.get("deletionTimestamp"):
                            proc = self.procs.get(meta.get("uid"))
                            if proc is not None and proc.popen.poll() is None:
                                proc.popen.send_signal(signal.SIGTERM)
                        if self.stop_event.is_set():
                            return
            except Exception:  # noqa: BLE001 - a watch ends; open another
                self.stop_event.wait(0.2)

    def _provision_volumes(self):
        pvcs = self.api.get("/api/v1/persistentvolumeclaims")["items"]
        for pvc in pvcs:
            if pvc["status"].get("phase") != "Pending" or pvc["spec"].get("volumeName"):
                continue
            meta = pvc["metadata"]
            path = os.path.join(self.work, "volumes", meta["uid"])
            os.makedirs(path, exist_ok=True)
            pv = {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": "pv-" + meta["uid"]},
                "spec": {
                    "capacity": {"storage": pvc["spec"]["resources"]["requests"]["storage"]},
                    "accessModes": pvc["spec"]["accessModes"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": pvc["spec"].get("storageClassName") or "",
                    "hostPath": {"path": path},
                    "claimRef": {
                        "namespace": meta["namespace"],
                        "name": meta["name"],
                        "uid": meta["uid"],
                    },
                },
            }
            try:
                self.api.request("POST", "/api/v1/persistentvolumes", pv)
            except urllib.error.HTTPError as e:
                if e.code != 409:
                    raise

    def _sync_pods(self):
        pods = self.api.get(f"/api/v1/pods?labelSelector={POD_SELECTOR}")["items"]
        wanted = {}
        for pod in pods:
            meta = pod["metadata"]
            if meta.get("deletionTimestamp") or pod["status"].get("phase") != "Running":
                continue
            if meta.get("labels", {}).get("app.kubernetes.io/instance") in self.ignored_instances:
                continue
            if (meta["namespace"], meta["name"]) in self.paused:
                continue
            wanted[meta["uid"]] = pod
        with self.lock:
            for uid in [u for u in self.procs if u not in wanted]:
                self._kill(self.procs.pop(uid))
            for uid, pod in wanted.items():
                proc = self.procs.get(uid)
                try:
                    if proc is None:
                        failed = self.init_failures.get(uid)
                        if failed and time.monotonic() - failed[1] < min(2 ** failed[0], 10):
                            continue
                        self.procs[uid] = self._start(pod)
                    elif proc.popen.poll() is not None and proc.run_once:
                        if not proc.reported:
                            self._report_exit(pod, proc)
                            proc.reported = True
                    elif proc.popen.poll() is not None:
                        # Exited: start again after a back-off, as a kubelet would.
                        if proc.exited_at is None:
                            proc.exited_at = time.monotonic()
                        if time.monotonic() - proc.exited_at >= min(2 ** proc.restarts, 10):
                            fresh = self._start(pod)
                            fresh.restarts = proc.restarts + 1
                            self.procs[uid] = fresh
                except ContainerConfigError:
                    # A kubelet reports CreateContainerConfigError and tries
                    # again later; a Secret deleted with its cluster (the
                    # pod goes next) is no fault of the process kubelet.
                    continue
                except InitFailed:
                    # As a kubelet: Init:Error, then again after a back-off.
                    count = self.init_failures.get(uid, (0, 0))[0]
                    self.init_failures[uid] = (count + 1, time.monotonic())
                    continue

    # --- one pod ------------------------------------------------------------

    def _ip_for(self, namespace, name, fqdn):
        key = (namespace, name)
        if key not in self.ips:
            n = len(self.ips) + 2
            self.ips[key] = f"127.0.{1 + n // 250}.{n % 250 + 1}"
            # Appended in place: the namespace's /etc/hosts is a bind mount of
            # this file, and glibc reads it on every lookup.
            with open(self.hosts_file, "a") as f:
                f.write(f"{self.ips[key]} {fqdn} {fqdn}.cluster.local\n")
        return self.ips[key]

    def _start(self, pod):
        meta, spec = pod["metadata"], pod["spec"]
        ns, name = meta["namespace"], meta["name"]
        hostname = spec.get("hostname", name)
        fqdn = f"{hostname}.{spec['subdomain']}.{ns}.svc" if spec.get("subdomain") else None
        ip = self._ip_for(ns, name, fqdn or f"{name}.{ns}.pod")
        labels = meta.get("labels", {})
        if labels.get("app.kubernetes.io/name") != "raftkv":
            self._map_services(ns)

        volumes = {}
        for vol in spec.get("volumes", []):
            claim = vol.get("persistentVolumeClaim")
            if claim:
                pvc = self.api.get(
                    f"/api/v1/namespaces/{ns}/persistentvolumeclaims/{claim['claimName']}"
                )
                volumes[vol["name"]] = os.path.join(self.work, "volumes", pvc["metadata"]["uid"])
            elif "emptyDir" in vol:
                # A folder of the pod's own, as a kubelet's emptyDir.
                folder = os.path.join(self.work, "emptydirs", meta["uid"], vol["name"])
                os.makedirs(folder, exist_ok=True)
                volumes[vol["name"]] = folder
            elif vol.get("secret"):
                secret_ref = vol["secret"]
                volumes[vol["name"]] = self._secret_volume(ns, meta["uid"], vol["name"], secret_ref)

        log_path = os.path.join(self.work, "pods", f"{ns}_{name}_{meta['uid']}.log")
        for init in spec.get("initContainers", []):
            argv, env, _ = self._command(pod, init, ip, hostname, volumes)
            with open(log_path, "ab") as log:
                log.write(f"--- init container {init['name']}: {argv}\n".encode())
                log.flush()
                res = subprocess.run(
                    argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, timeout=120,
                )
            if res.returncode != 0:
                raise InitFailed(f"pod {ns}/{name}: init container {init['name']} exited {res.returncode}")
        self.init_failures.pop(meta["uid"], None)

        container = spec["containers"][0]
        argv, env, message_file = self._command(pod, container, ip, hostname, volumes)
        if container.get("image", "").rsplit(":", 1)[-1].startswith(BROKEN_TAG):
            # A release that cannot start: clap refuses the flag and exits.
            argv.append("--flag-of-a-broken-release")

        log = open(log_path, "ab")
        popen = subprocess.Popen(
            argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        run_once = spec.get("restartPolicy", "Always") != "Always"
        report = (
            container["name"], container.get("image", ""), message_file,
            container.get("terminationMessagePolicy", "File"), log_path,
        )
        return Proc((ns, name), meta["uid"], popen, log, labels, run_once, report)

    def _command(self, pod, container, ip, hostname, volumes):
        """argv, environment and termination message file of a container."""
        meta, spec = pod["metadata"], pod["spec"]
        ns, name = meta["namespace"], meta["name"]
        mounts = {
            m["mountPath"]: volumes[m["name"]]
            for m in container.get("volumeMounts", [])
            if m["name"] in volumes
        }
        message_file = os.path.join(
            self.work, "pods", f"{ns}_{name}_{meta['uid']}_{container['name']}.termination"
        )
        if os.path.exists(message_file):
            os.remove(message_file)
        mounts[container.get("terminationMessagePath", "/dev/termination-log")] = message_file

        def local(value):
            # A path inside a mounted volume is that volume's folder here.
            for mount_path, folder in mounts.items():
                if value == mount_path or value.startswith(mount_path + "/"):
                    return folder + value[len(mount_path) :]
            return value

        # A container runtime sets HOSTNAME to the pod's host name.
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": self.work, "HOSTNAME": hostname}
        env["RAFTKV_DATA_DIR"] = mounts.get(IMAGE_DATA_DIR, IMAGE_DATA_DIR)
        fields = {
            "metadata.name": name,
            "metadata.namespace": ns,
            "metadata.uid": meta["uid"],
            "spec.nodeName": spec.get("nodeName", ""),
            "status.podIP": ip,
        }
        defined = {}
        for var in container.get("env", []):
            source = var.get("valueFrom") or {}
            if "value" in var:
                value = expand(var["value"], defined)
            elif "fieldRef" in source:
                value = fields[source["fieldRef"]["fieldPath"]]
            elif "secretKeyRef" in source:
                # As a kubelet does: the container does not start until
                # the Secret exists (the loop tries again).
                ref = source["secretKeyRef"]
                secret = self.api.try_get(f"/api/v1/namespaces/{ns}/secrets/{ref['name']}")
                data = (secret or {}).get("data") or {}
                if ref["key"] not in data:
                    # An optional key that is absent leaves the variable
                    # unset, as for config maps below.
                    if ref.get("optional"):
                        continue
                    raise ContainerConfigError(f"pod {ns}/{name}: secret key {ref} missing")
                value = base64.b64decode(data[ref["key"]]).decode()
            elif "configMapKeyRef" in source:
                # Read when the container starts, as a kubelet does; an
                # optional key that is absent leaves the variable unset.
                ref = source["configMapKeyRef"]
                cm = self.api.try_get(f"/api/v1/namespaces/{ns}/configmaps/{ref['name']}")
                value = ((cm or {}).get("data") or {}).get(ref["key"])
                if value is None:
                    if ref.get("optional"):
                        continue
                    raise RuntimeError(f"pod {ns}/{name}: config map key {ref} missing")
            else:
                raise RuntimeError(f"pod {ns}/{name}: unsupported env source {var}")
            defined[var["name"]] = value
            env[var["name"]] = local(value)
        for var, port in PORTS.items():  # listen on the pod's own address, whatever was set
            env[var] = f"{ip}:{port}"
        for var, port in OPTIONAL_PORTS.items():
            if var in env:
                env[var] = f"{ip}:{port}"

        command = container.get("command") or ["raftkv"]
        args = container.get("args") or (["serve"] if not container.get("command") else [])
        argv = [local(expand(a, defined)) for a in command + args]
        if os.path.basename(argv[0]) == "raftkv":
            argv[0] = self.raftkv_bin
        else:
            raise RuntimeError(f"pod {ns}/{name}: unexpected command {argv}")
        return argv, env, message_file

    def _secret_volume(self, ns, uid, volume, source):
        """A folder holding the Secret's keys as files."""
        secret = self.api.try_get(f"/api/v1/namespaces/{ns}/secrets/{source['secretName']}")
        if secret is None:
            if source.get("optional"):
                secret = {}
            else:
                raise ContainerConfigError(f"secret {ns}/{source['secretName']} missing")
        folder = os.path.join(self.work, "secrets", uid, volume)
        os.makedirs(folder, exist_ok=True)
        mode = source.get("defaultMode", 0o644)
        for key, value in (secret.get("data") or {}).items():
            path = os.path.join(folder, key)
            with open(path, "wb") as f:
                f.write(base64.b64decode(value))
            # Readable by this (the pod's) user at least: the process runs
            # as the test's user, not as the pod's fsGroup.
            os.chmod(path, mode | 0o400)
        return folder

    def _map_services(self, ns):
        """`<svc>.<ns>.svc` -> the address of a live pod the Service selects."""
        for svc in self.api.get(f"/api/v1/namespaces/{ns}/services")["items"]:
            selector = svc["spec"].get("selector")
            fqdn = f"{svc['metadata']['name']}.{ns}.svc"
            if not selector or svc["spec"].get("clusterIP") == "None" or fqdn in self.service_hosts:
                continue
            for proc in self.procs.values():
                if (
                    proc.pod_key[0] == ns
                    and proc.popen.poll() is None
                    and all(proc.labels.get(k) == v for k, v in selector.items())
                ):
                    with open(self.hosts_file, "a") as f:
                        f.write(f"{self.ips[proc.pod_key]} {fqdn} {fqdn}.cluster.local\n")
                    self.service_hosts.add(fqdn)
                    break

    def _report_exit(self, pod, proc):
        """Mark a run-once pod Succeeded or Failed, as a kubelet would."""
        name, image, message_file, policy, log_path = proc.exit_report
        code = proc.popen.returncode
        message = ""
        if os.path.exists(message_file):
            with open(message_file, errors="replace") as f:
                message = f.read(4096)
        if not message and code != 0 and policy == "FallbackToLogsOnError":
            proc.log.flush()
            with open(log_path, "rb") as f:
                message = f.read()[-2048:].decode(errors="replace")
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        started = pod["status"].get("startTime", now)
        status = {
            "phase": "Succeeded" if code == 0 else "Failed",
            "conditions": [
                {"type": t, "status": "False", "lastTransitionTime": now, "reason": "PodCompleted"}
                for t in ("Ready", "ContainersReady")
            ],
            "containerStatuses": [{
                "name": name, "image": image, "imageID": "", "ready": False,
                "restartCount": 0, "started": False,
                "state": {"terminated": {
                    "exitCode": code, "reason": "Completed" if code == 0 else "Error",
                    "message": message, "startedAt": started, "finishedAt": now,
                }},
            }],
        }
        ns, pod_name = proc.pod_key
        self.api.request(
            "PATCH", f"/api/v1/namespaces/{ns}/pods/{pod_name}/status", {"status": status},
            content_type="application/merge-patch+json",
        )

    @staticmethod
    def _kill(proc):
        if proc.popen.poll() is None:
            proc.popen.send_signal(signal.SIGTERM)
            try:
                proc.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait()
        proc.log.close()
