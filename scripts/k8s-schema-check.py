#!/usr/bin/env python3
"""Schema check of Kubernetes manifests, offline.

Validates every document of the YAML files given on the command line against the
Kubernetes API types of the official Python client (Debian: `python3-kubernetes`),
the same OpenAPI definitions kubeconform uses, but installable from the package
registry with no network:

  - every key is a field of its type (a misspelt `readinesProbe` is an error, not a
    silently ignored key, which is what the API server's strict field validation does);
  - every value has its field's type (object, list, map, string, integer, boolean;
    `int-or-string` fields take either; resource quantities take numbers too);
  - every field the API marks as required is present.

Kinds the client does not model (Kustomization, CRDs) are reported as skipped, never as
passing. `autoscaling/v2` is checked against `autoscaling/v2beta2`, the same schema
under its pre-GA name (the client predates the rename).

Usage: k8s-schema-check.py FILE.yaml...   exit 0 when every document passes, 1 if not.
"""
import inspect
import re
import sys

import yaml

try:
    import kubernetes.client as k8s
except ImportError:
    sys.exit(
        "error: the Kubernetes schema check needs the python3 `kubernetes` module.\n"
        "       Debian/Ubuntu: sudo apt-get install -y python3-kubernetes"
    )

# apiVersion -> the client's class-name version prefix.
VERSIONS = {
    "v1": "V1",
    "apps/v1": "V1",
    "batch/v1": "V1",
    "policy/v1": "V1",
    "networking.k8s.io/v1": "V1",
    "rbac.authorization.k8s.io/v1": "V1",
    "autoscaling/v1": "V1",
    "autoscaling/v2": "V2beta2",
    "autoscaling/v2beta2": "V2beta2",
}
SKIP_KINDS = {"Kustomization"}

# Fields GA'd after the client's API version (1.22), written in the client's terms:
# type -> {json key: field type}; NEW_TYPES: type -> ({json key: field type}, required).
NEWER_FIELDS = {
    # `lifecycle.preStop.sleep` (KEP-3960, on by default since 1.30): a distroless image
    # has no `sleep` binary for an exec hook.
    "V1Handler": {"sleep": "V1SleepAction"},
}
NEW_TYPES = {
    "V1SleepAction": ({"seconds": "int"}, {"seconds"}),
}

_required_cache = {}


def required_fields(cls):
    """Python attribute names whose setter rejects None (the API's `required`)."""
    if cls not in _required_cache:
        req = set()
        for attr in cls.openapi_types:
            prop = getattr(cls, attr, None)
            if isinstance(prop, property) and prop.fset is not None:
                try:
                    src = inspect.getsource(prop.fset)
                except (OSError, TypeError):
                    continue
                if "must not be `None`" in src:
                    req.add(attr)
        _required_cache[cls] = req
    return _required_cache[cls]


def check(value, type_name, path, errors, field=""):
    if value is None:
        return
    m = re.fullmatch(r"list\[(.+)\]", type_name)
    if m:
        if not isinstance(value, list):
            errors.append(f"{path}: expected a list, got {type(value).__name__}")
            return
        for i, item in enumerate(value):
            check(item, m.group(1), f"{path}[{i}]", errors, field)
        return
    m = re.fullmatch(r"dict\((\w+), (.+)\)", type_name)
    if m:
        if not isinstance(value, dict):
            errors.append(f"{path}: expected a map, got {type(value).__name__}")
            return
        for k, v in value.items():
            # Resource quantities (`cpu: 1`) are int-or-string in the API.
            inner = "object" if field in ("limits", "requests", "capacity", "hard") else m.group(2)
            check(v, inner, f"{path}.{k}", errors, field)
        return
    if type_name == "object":
        return  # int-or-string, raw extension
    if type_name == "str":
        if not isinstance(value, str):
            errors.append(f"{path}: expected a string, got {type(value).__name__} {value!r}")
        return
    if type_name == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            errors.append(f"{path}: expected an integer, got {value!r}")
        return
    if type_name == "float":
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            errors.append(f"{path}: expected a number, got {value!r}")
        return
    if type_name == "bool":
        if not isinstance(value, bool):
            errors.append(f"{path}: expected true/false, got {value!r}")
        return
    if type_name == "datetime":
        return
    if type_name in NEW_TYPES:
        fields, required = NEW_TYPES[type_name]
        if not isinstance(value, dict):
            errors.append(f"{path}: expected an object ({type_name}), got {type(value).__name__}")
            return
        for key, v in value.items():
            if key not in fields:
                errors.append(f"{path}.{key}: unknown field of {type_name}")
            else:
                check(v, fields[key], f"{path}.{key}", errors, key)
        for key in sorted(required - value.keys()):
            errors.append(f"{path}.{key}: required field of {type_name} is missing")
        return
    cls = getattr(k8s, type_name, None)
    if cls is None:
        errors.append(f"{path}: unknown schema type {type_name}")
        return
    if not isinstance(value, dict):
        errors.append(f"{path}: expected an object ({type_name}), got {type(value).__name__}")
        return
    by_json = {j: a for a, j in cls.attribute_map.items()}
    for key, v in value.items():
        attr = by_json.get(key)
        newer = NEWER_FIELDS.get(type_name, {})
        if attr is None and key in newer:
            check(v, newer[key], f"{path}.{key}", errors, key)
            continue
        if attr is None:
            errors.append(f"{path}.{key}: unknown field of {type_name}")
            continue
        check(v, cls.openapi_types[attr], f"{path}.{key}", errors, key)
    for attr in sorted(required_fields(cls)):
        if value.get(cls.attribute_map[attr]) is None:
            errors.append(f"{path}.{cls.attribute_map[attr]}: required field of {type_name} is missing")


def main(paths):
    failed = checked = skipped = 0
    for path in paths:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d is not None]
        for i, doc in enumerate(docs):
            where = f"{path} document {i + 1}"
            if not isinstance(doc, dict):
                print(f"FAIL {where}: not a mapping")
                failed += 1
                continue
            api, kind = doc.get("apiVersion"), doc.get("kind")
            if kind in SKIP_KINDS:
                print(f"skip {where}: {api} {kind} (not a Kubernetes API type)")
                skipped += 1
                continue
            prefix = VERSIONS.get(api)
            type_name = f"{prefix}{kind}" if prefix else None
            if type_name is None or getattr(k8s, type_name, None) is None:
                print(f"FAIL {where}: no schema for apiVersion {api!r} kind {kind!r}")
                failed += 1
                continue
            errors = []
            check(doc, type_name, kind, errors)
            checked += 1
            if errors:
                failed += 1
                for e in errors:
                    print(f"FAIL {where}: {e}")
            else:
                name = (doc.get("metadata") or {}).get("name", "?")
                print(f"ok   {where}: {kind} {name} matches the {api} schema")
    print(f"{checked} object(s) checked, {skipped} skipped, {failed} failing")
    return 1 if failed or checked == 0 else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
