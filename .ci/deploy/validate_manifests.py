#!/usr/bin/env python3
"""Validates rendered Kubernetes manifests offline.

- Built-in kinds: against the Kubernetes OpenAPI schemas shipped by the PyPI
  package kubernetes-validate, strictly (unknown fields fail), for every
  --kube-version given.
- RaftCluster: against the openAPIV3Schema of the CRD file given by --crd
  (jsonschema), with unknown fields rejected the way a typo should be; then,
  with the schema's defaults applied as the API server would, its CEL rules
  (x-kubernetes-validations) evaluated with cel-python. Transition rules
  (those reading oldSelf) only apply to updates and are skipped.
- CustomResourceDefinition: its own schema is checked, and a RaftCluster CRD
  must equal the --crd file.
- PrometheusRule: against the Prometheus Operator's schema (see
  validate_monitoring.mjs) and spec.groups by `promtool check rules`.
- ServiceMonitor: against the Prometheus Operator's schema.
Any other kind fails: every rendered object must be checked by something.

Usage: validate_manifests.py --crd CRD.yaml [--kube-version 1.27.0 ...] FILE...
"""

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile

import celpy
import jsonschema
import kubernetes_validate
import yaml


def load_docs(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def to_jsonschema(node):
    """OpenAPI v3 (Kubernetes structural schema) -> JSON schema with strict objects."""
    if isinstance(node, list):
        return [to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: to_jsonschema(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    if (out.get("type") == "object" and "properties" in out
            and "additionalProperties" not in out
            and not node.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def apply_defaults(schema, value):
    """Fills in `default`s the way the API server does before validation."""
    if isinstance(value, dict):
        for key, sub in schema.get("properties", {}).items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                apply_defaults(sub, value[key])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key in value:
                if key not in schema.get("properties", {}):
                    apply_defaults(extra, value[key])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            apply_defaults(schema["items"], item)


def cel_errors(schema, value, path="spec"):
    """Evaluates every x-kubernetes-validations rule that applies on create."""
    errors = []
    env = celpy.Environment()
    for rule in schema.get("x-kubernetes-validations", []):
        if "oldSelf" in rule["rule"]:
            continue
        try:
            result = env.program(env.compile(rule["rule"])).evaluate({"self": celpy.json_to_cel(value)})
        except Exception as e:  # a rule that cannot be evaluated is a failure too
            errors.append(f"{path}: CEL rule {rule['rule']!r} could not be evaluated: {e}")
            continue
        if not isinstance(result, celpy.celtypes.BoolType) or not bool(result):
            errors.append(f"{path}: {rule.get('message', rule['rule'])} (CEL: {rule['rule']})")
    if isinstance(value, dict):
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                errors += cel_errors(sub, value[key], f"{path}.{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            errors += cel_errors(schema["items"], item, f"{path}[{i}]")
    return errors


def raftcluster_cel(crd, doc):
    version = doc.get("apiVersion", "").rsplit("/", 1)[-1]
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            spec_schema = v["schema"]["openAPIV3Schema"]["properties"]["spec"]
            spec = copy.deepcopy(doc.get("spec", {}))
            apply_defaults(spec_schema, spec)
            return cel_errors(spec_schema, spec)
    return []


def raftcluster_validator(crd):
    versions = {v["name"]: v for v in crd["spec"]["versions"]}
    validators = {}
    for name, v in versions.items():
        schema = copy.deepcopy(v["schema"]["openAPIV3Schema"])
        props = schema.setdefault("properties", {})
        props.pop("metadata", None)  # metadata is the API server's, not the CRD's
        schema = to_jsonschema(schema)
        for meta in ("apiVersion", "kind"):
            schema["properties"].setdefault(meta, {"type": "string"})
        schema["properties"]["metadata"] = {"type": "object"}
        validators[f'{crd["spec"]["group"]}/{name}'] = jsonschema.Draft7Validator(schema)
    return validators


def check_prometheus_rule(doc):
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump({"groups": doc["spec"]["groups"]}, f)
    res = subprocess.run(["promtool", "check", "rules", f.name], capture_output=True, text=True)
    return [] if res.returncode == 0 else [res.stdout + res.stderr]


NPM_TOOLS = os.path.expanduser("~/.local/share/raftkv-ci/npm")
MONITORING_JS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "validate_monitoring.mjs")


def check_monitoring(doc):
    """ServiceMonitor / PrometheusRule against the Prometheus Operator's schema."""
    res = subprocess.run(["node", MONITORING_JS, NPM_TOOLS], input=json.dumps([doc]),
                         capture_output=True, text=True)
    return [] if res.returncode == 0 else [(res.stdout + res.stderr).strip()]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--crd", required=True)
    ap.add_argument("--kube-version", action="append", dest="versions")
    ap.add_argument("files", nargs="+")
    args = ap.parse_args()
    versions = args.versions or ["1.27.0", kubernetes_validate.latest_version()]
    crd = load_docs(args.crd)[0]
    rc_validators = raftcluster_validator(crd)

    failures = 0
    checked = 0
    for path in args.files:
        for doc in load_docs(path):
            kind, api = doc.get("kind"), doc.get("apiVersion")
            name = f'{path}: {kind}/{doc.get("metadata", {}).get("name")}'
            errors = []
            if kind == "RaftCluster":
                v = rc_validators.get(api)
                if v is None:
                    errors.append(f"apiVersion {api} is not served by the CRD")
                else:
                    errors += [f'{"/".join(map(str, e.path))}: {e.message}' for e in v.iter_errors(doc)]
                    if not errors:
                        errors += raftcluster_cel(crd, doc)
            elif kind == "PrometheusRule":
                errors += check_monitoring(doc) + check_prometheus_rule(doc)
            elif kind == "ServiceMonitor":
                errors += check_monitoring(doc)
            else:
                if kind == "CustomResourceDefinition" and doc["metadata"]["name"] == crd["metadata"]["name"] \
                        and doc != crd:
                    errors.append(f"differs from {args.crd}")
                for ver in versions:
                    try:
                        kubernetes_validate.validate(doc, ver, strict=True)
                    except kubernetes_validate.SchemaNotFoundError:
                        errors.append(f"no Kubernetes {ver} schema for {api} {kind}: unknown kind")
                    except kubernetes_validate.ValidationError as e:
                        errors.append(f"Kubernetes {ver}: {'/'.join(map(str, e.path))}: {e.message}")
            checked += 1
            if errors:
                failures += 1
                for e in errors:
                    print(f"FAIL {name}: {e}", file=sys.stderr)
    print(f"validated {checked} objects, {failures} failed")
    return 1 if failures or not checked else 0


if __name__ == "__main__":
    sys.exit(main())
