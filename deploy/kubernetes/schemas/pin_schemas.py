"""Rebuild the pinned JSON schemas in this folder from their upstream files (see README.md).

    python deploy/kubernetes/schemas/pin_schemas.py \\
        --kubernetes-validate kubernetes_validate-1.37.0-py3-none-any.whl \\
        --kuberay-crd ray.io_rayclusters.yaml \\
        --compose-spec compose-spec.json

Nothing is downloaded: fetch the three inputs as README.md says, then run this. What it does to them:

- Kubernetes: from the wheel's ``v1.31.0-local-strict`` schemas (upstream's OpenAPI, with
  ``additionalProperties: false``), the files of the kinds the manifests use, and of
  ``_definitions.json`` only the definitions those kinds reach. ``description`` texts are dropped
  everywhere (they are documentation, not constraints); nothing else is changed, ``$id`` and ``$ref``
  included, so they resolve as in kubernetes-validate.
- KubeRay: the ``v1`` version's ``openAPIV3Schema`` of the RayCluster CRD, as it is (it has no
  descriptions). The test makes it strict (unknown fields refused) when it loads it.
- Compose: the file as it is.
"""

from __future__ import annotations

import argparse
import json
import zipfile
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
KUBERNETES_VERSION = "v1.31.0"
KUBERNETES_DIR = HERE / f"kubernetes-{KUBERNETES_VERSION}"
KUBERAY_FILE = HERE / "kuberay-v1.7.0" / "raycluster-ray-v1.json"
COMPOSE_FILE = HERE / "compose-spec-v2.13.0.json"

KINDS = (
    "configmap-v1",
    "namespace-v1",
    "networkpolicy-networking-v1",
    "persistentvolumeclaim-v1",
    "secret-v1",
    "service-v1",
    "serviceaccount-v1",
    "statefulset-apps-v1",
)
"""The kinds deploy/kubernetes uses (besides RayCluster); the test fails on a kind missing here."""

DEFS_PREFIXES = ("/api/_definitions.json#/$defs/", "#/$defs/")
"""How the kinds' files and _definitions.json itself refer to a definition."""


def _without_descriptions(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _without_descriptions(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [_without_descriptions(v) for v in node]
    return node


def _refs(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and value.startswith(DEFS_PREFIXES):
                found.add(value.rpartition("/")[2])
            else:
                found |= _refs(value)
    elif isinstance(node, list):
        for value in node:
            found |= _refs(value)
    return found


def _write(path: Path, document: Any, *, compact: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(document, sort_keys=True, separators=(",", ":")) if compact else json.dumps(document, indent=1)
    path.write_text(text + "\n")
    print(f"wrote {path.relative_to(HERE)} ({path.stat().st_size} bytes)")


def pin_kubernetes(wheel: Path) -> None:
    folder = f"kubernetes_validate/kubernetes-json-schema/{KUBERNETES_VERSION}-local-strict"
    with zipfile.ZipFile(wheel) as archive:
        definitions = json.loads(archive.read(f"{folder}/_definitions.json"))
        kinds = {kind: json.loads(archive.read(f"{folder}/{kind}.json")) for kind in KINDS}
    needed: set[str] = set()
    todo = sorted(set().union(*(_refs(schema) for schema in kinds.values())))
    while todo:
        name = todo.pop()
        if name not in needed:
            needed.add(name)
            todo.extend(_refs(definitions["$defs"][name]) - needed)
    pruned = {**definitions, "$defs": {name: definitions["$defs"][name] for name in sorted(needed)}}
    for old in KUBERNETES_DIR.glob("*.json"):
        old.unlink()
    _write(KUBERNETES_DIR / "_definitions.json", _without_descriptions(pruned))
    for kind, schema in kinds.items():
        _write(KUBERNETES_DIR / f"{kind}.json", _without_descriptions(schema))


def pin_kuberay(crd_file: Path) -> None:
    crd = yaml.safe_load(crd_file.read_text())
    assert crd["spec"]["names"]["kind"] == "RayCluster", crd_file
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    # One line: indented, the pod templates' schemas would make it 400 KB.
    _write(KUBERAY_FILE, version["schema"]["openAPIV3Schema"], compact=True)


def pin_compose(spec_file: Path) -> None:
    COMPOSE_FILE.write_bytes(spec_file.read_bytes())
    print(f"wrote {COMPOSE_FILE.relative_to(HERE)} ({COMPOSE_FILE.stat().st_size} bytes)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kubernetes-validate", type=Path, help="kubernetes_validate-1.37.0-py3-none-any.whl")
    parser.add_argument("--kuberay-crd", type=Path, help="ray.io_rayclusters.yaml of KubeRay v1.7.0")
    parser.add_argument("--compose-spec", type=Path, help="schema/compose-spec.json of compose-go v2.13.0")
    args = parser.parse_args()
    if args.kubernetes_validate:
        pin_kubernetes(args.kubernetes_validate)
    if args.kuberay_crd:
        pin_kuberay(args.kuberay_crd)
    if args.compose_spec:
        pin_compose(args.compose_spec)


if __name__ == "__main__":
    main()
