"""Validates rendered Kubernetes manifests (`kubectl kustomize deploy/`), for
`cargo xtask check-manifests`.

- Built-in kinds: kubernetes-validate, strict (an unknown field is an error, as
  `kubectl apply --validate=strict` makes it), against each Kubernetes version given.
- monitoring.coreos.com kinds (ServiceMonitor, PrometheusRule): kubernetes-validate does
  not know CRDs, so their openAPIV3Schema, vendored from prometheus-operator into
  xtask/testdata/crds/, is checked with jsonschema. The API server would silently prune
  unknown fields of a custom resource (a misspelt field just vanishes), so here every
  object schema without `additionalProperties` or `x-kubernetes-preserve-unknown-fields`
  gets `additionalProperties: false`, and list-type map/set uniqueness is checked too.
  Their metadata is checked as ObjectMeta by kubernetes-validate.

Usage: validate_manifests.py --crds DIR --kubernetes-version V [...] RENDERED.yaml
Prints one line per object and check; exits 1 if anything is invalid.
"""

import argparse
import copy
import json
import os
import sys

import jsonschema
import kubernetes_validate
import yaml


def strict(schema):
    """A copy of an OpenAPI v3 (structural) schema that rejects unknown fields."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if (
                node.get("type") == "object"
                and "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


def list_type_errors(schema, value, path="spec"):
    """What the API server enforces beyond JSON Schema: items of an
    `x-kubernetes-list-type: map` list are unique by their keys, of a `set` list unique."""
    errors = []
    if isinstance(value, dict) and isinstance(schema, dict):
        for key, sub in value.items():
            sub_schema = schema.get("properties", {}).get(key)
            if sub_schema is not None:
                errors += list_type_errors(sub_schema, sub, f"{path}.{key}")
    elif isinstance(value, list) and isinstance(schema, dict):
        kind = schema.get("x-kubernetes-list-type")
        seen = set()
        for i, item in enumerate(value):
            if kind == "map":
                ident = tuple(item.get(k) for k in schema.get("x-kubernetes-list-map-keys", []))
            elif kind == "set":
                ident = json.dumps(item, sort_keys=True)
            else:
                ident = None
            if ident is not None:
                if ident in seen:
                    errors.append(f"{path}[{i}]: duplicate {ident} in a list of type {kind}")
                seen.add(ident)
            errors += list_type_errors(schema.get("items", {}), item, f"{path}[{i}]")
    return errors


def load_crd_schemas(directory):
    """{(group/version, kind): schema} from files named <kind>-<group prefix>-<version>.json,
    the naming kubernetes-validate uses for its own schemas."""
    schemas = {}
    for name in sorted(os.listdir(directory)):
        if not name.endswith(".json"):
            continue
        with open(os.path.join(directory, name)) as f:
            schema = json.load(f)
        kind_lower, group_prefix, version = name[: -len(".json")].split("-")
        schemas[(kind_lower, group_prefix, version)] = strict(schema)
    return schemas


def crd_key(obj):
    group, _, version = obj["apiVersion"].rpartition("/")
    return (obj["kind"].lower(), group.split(".")[0], version)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--crds", required=True, help="directory of vendored CRD schemas")
    parser.add_argument("--kubernetes-version", action="append", required=True)
    parser.add_argument("rendered")
    args = parser.parse_args()

    crds = load_crd_schemas(args.crds)
    with open(args.rendered) as f:
        objects = [o for o in yaml.safe_load_all(f) if o is not None]

    failures = 0
    checked = 0
    for obj in objects:
        name = f"{obj.get('kind')} {obj.get('metadata', {}).get('namespace', '-')}/{obj.get('metadata', {}).get('name')}"
        problems = []
        what = ""
        if obj.get("apiVersion", "").startswith("monitoring.coreos.com/"):
            key = crd_key(obj)
            schema = crds.get(key)
            if schema is None:
                problems.append(f"no vendored CRD schema for {obj['apiVersion']} {obj['kind']}")
            else:
                validator = jsonschema.Draft7Validator(schema)
                for err in sorted(validator.iter_errors(obj), key=lambda e: list(e.path)):
                    path = ".".join(str(p) for p in err.path) or "(root)"
                    problems.append(f"{path}: {err.message}")
                problems += list_type_errors(schema.get("properties", {}).get("spec", {}), obj.get("spec"))
                # The metadata, as the API server checks it for any object.
                meta_only = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj.get("metadata", {})}
                for version in args.kubernetes_version:
                    try:
                        kubernetes_validate.validate(meta_only, version, strict=True)
                    except kubernetes_validate.ValidationError as e:
                        path = ".".join(str(p) for p in e.path)
                        problems.append(f"{path}: {e.message}")
                what = f"CRD schema {'-'.join(key)}.json (strict) + metadata"
        else:
            for version in args.kubernetes_version:
                try:
                    kubernetes_validate.validate(obj, version, strict=True)
                except kubernetes_validate.ValidationError as e:
                    path = ".".join(str(p) for p in e.path) or "(root)"
                    problems.append(f"Kubernetes {version}: {path}: {e.message}")
                except kubernetes_validate.SchemaNotFoundError as e:
                    problems.append(f"Kubernetes {version}: {e.message}")
            what = "Kubernetes " + ", ".join(args.kubernetes_version) + " (strict)"
        checked += 1
        if problems:
            failures += 1
            print(f"INVALID {name}:")
            for p in problems:
                print(f"    {p}")
        else:
            print(f"valid   {name}: {what}")
    print(f"{checked} objects checked, {failures} invalid")
    return 1 if failures or not checked else 0


if __name__ == "__main__":
    sys.exit(main())
