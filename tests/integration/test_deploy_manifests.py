"""The deployment files under deploy/, checked offline: no cluster and no container runtime needed.

- Kubernetes: each kustomization lists files that exist; the base and every overlay, rendered, validate
  against the JSON schemas pinned in deploy/kubernetes/schemas (Kubernetes 1.31, KubeRay 1.7.0's
  RayCluster CRD, strict: an unknown field fails). Overlays are rendered by ``render`` below, a small
  kustomize for the features these kustomizations use (it refuses any other); where ``kubectl`` is
  installed, its own kustomize renders them too and must agree.
- What a schema cannot see: Secret, ConfigMap and claim references resolve (Secrets against each
  overlay's secrets.example.yaml, which holds placeholders only); Services and policies select pods;
  every ``lineside`` command line names real subcommands and options; every LINESIDE_* variable is a
  setting the code reads; shell scripts use only variables they are given; pods run unprivileged with
  resources and probes; the RayCluster's agents start Ray as edge_node/cli.py expects.
- The broker: mosquitto.conf keeps the settings ``lineside broker run`` generates, and a real
  Mosquitto started with it and with init_dynsec.py's state lets the control plane's admin create a
  robot, which then connects over TLS.
- Compose: docker-compose.yml validates against the pinned compose-spec schema, and its services,
  volumes, mounts, variables and commands are consistent.
"""

from __future__ import annotations

import copy
import getpass
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml  # type: ignore[import-untyped]
from referencing import Registry, Resource

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
SCHEMAS = KUBERNETES / "schemas"
K8S_SCHEMAS = SCHEMAS / "kubernetes-v1.31.0"
RAYCLUSTER_SCHEMA = SCHEMAS / "kuberay-v1.7.0" / "raycluster-ray-v1.json"
COMPOSE_SCHEMA = SCHEMAS / "compose-spec-v2.13.0.json"
COMPOSE = DEPLOY / "compose" / "docker-compose.yml"
SITE = KUBERNETES / "base" / "site"

KUSTOMIZATIONS = sorted(KUBERNETES.rglob("kustomization.yaml"))
OVERLAYS = sorted(p.parent for p in (KUBERNETES / "overlays").glob("*/kustomization.yaml"))
ALL_TARGETS = [p.parent for p in KUSTOMIZATIONS]

IMAGE = "lineside"
"""The image built from deploy/Dockerfile; containers running anything else (postgres) are third-party."""

DEFINITIONS_ID = "https://kubernetes.io/api/_definitions.json"
OBJECT_META = f"{DEFINITIONS_ID}#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"

# Environment KubeRay 1.7.0 gives Ray containers (ray-operator/controllers/ray/common/pod.go, setContainerEnvVars
# and SetContainerTokenAuthEnvVars): FQ_RAY_IP and RAY_IP in workers only.
KUBERAY_ENV_ALL = {"RAY_ADDRESS", "RAY_PORT", "RAY_CLUSTER_NAME", "RAY_CLUSTER_NAMESPACE", "RAY_AUTH_MODE",
                   "RAY_AUTH_TOKEN", "KUBERAY_GEN_RAY_START_CMD"}  # fmt: skip
KUBERAY_ENV_WORKER = {"FQ_RAY_IP", "RAY_IP"}


def _id(path: Path) -> str:
    return str(path.relative_to(KUBERNETES))


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


# --- a small kustomize ---------------------------------------------------------------------------------

SUPPORTED_KEYS = {"apiVersion", "kind", "resources", "namespace", "images", "patches", "configMapGenerator",
                  "generatorOptions"}  # fmt: skip
BUILTIN_GROUPS = {"", "apps", "networking.k8s.io", "policy", "batch", "rbac.authorization.k8s.io"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass"}


def _group_version(doc: dict[str, Any]) -> tuple[str, str]:
    group, _, version = doc["apiVersion"].rpartition("/")
    return group, version


def _json_merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: what kustomize applies to custom resources (lists are replaced)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _json_merge(result.get(key), value)
    return result


def _strategic_merge(target: Any, patch: Any, where: str) -> Any:
    """A strategic merge patch of maps and scalars; a list would need Kubernetes' merge keys, so it is refused."""
    if isinstance(patch, list):
        raise NotImplementedError(
            f"{where}: lists in strategic-merge patches are not rendered here; use a JSON 6902 patch"
        )
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if any(key.startswith("$") for key in patch):
        raise NotImplementedError(f"{where}: strategic-merge directives are not rendered here")
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _strategic_merge(result.get(key), value, f"{where}.{key}")
    return result


def _pointer(path: str) -> list[str]:
    return [part.replace("~1", "/").replace("~0", "~") for part in path.lstrip("/").split("/")]


def _json6902(doc: dict[str, Any], operations: list[dict[str, Any]]) -> None:
    """RFC 6902 add, replace and remove (the operations kustomize patches use most)."""
    for operation in operations:
        *parents, last = _pointer(operation["path"])
        node: Any = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        op = operation["op"]
        if op == "add" and isinstance(node, list):
            value = copy.deepcopy(operation["value"])
            node.append(value) if last == "-" else node.insert(int(last), value)
        elif op in ("add", "replace"):
            node[int(last) if isinstance(node, list) else last] = copy.deepcopy(operation["value"])
        elif op == "remove":
            del node[int(last) if isinstance(node, list) else last]
        else:
            raise NotImplementedError(f"JSON 6902 op {op!r} is not rendered here")


def _matches(doc: dict[str, Any], target: dict[str, Any]) -> bool:
    group, version = _group_version(doc)
    wanted = {"group": group, "version": version, "kind": doc["kind"], "name": doc["metadata"]["name"]}
    return all(target[key] == wanted[key] for key in wanted if key in target)


def _apply_patch(docs: list[dict[str, Any]], folder: Path, patch: dict[str, Any]) -> None:
    unknown = set(patch) - {"path", "target"}
    assert not unknown, f"{folder}: patch keys {unknown} are not rendered here"
    content = yaml.safe_load((folder / patch["path"]).read_text())
    if isinstance(content, list):  # JSON 6902: needs a target
        targets = [d for d in docs if _matches(d, patch["target"])]
        assert targets, f"{folder / patch['path']}: no resource matches its target {patch['target']}"
        for doc in targets:
            _json6902(doc, content)
        return
    target = patch.get("target") or {"kind": content["kind"], "name": content["metadata"]["name"]}
    matching = [i for i, d in enumerate(docs) if _matches(d, target)]
    assert matching, f"{folder / patch['path']}: patches nothing ({target})"
    for index in matching:
        doc = docs[index]
        if _group_version(doc)[0] in BUILTIN_GROUPS:
            docs[index] = _strategic_merge(doc, content, patch["path"])
        else:  # kustomize merges a custom resource's strategic-merge patch as a JSON merge patch
            docs[index] = _json_merge(doc, content)


def _set_images(node: Any, images: list[dict[str, str]]) -> None:
    """kustomize's image transformer: image fields in any containers/initContainers list, at any depth."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                for container in value:
                    name, _, _tag = container.get("image", "").partition(":")
                    for image in images:
                        if image["name"] == name:
                            container["image"] = f"{image.get('newName', name)}:{image['newTag']}"
            else:
                _set_images(value, images)
    elif isinstance(node, list):
        for value in node:
            _set_images(value, images)


def render(folder: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize folder`` for the features deploy/kubernetes uses; anything else fails here."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unknown = set(kustomization) - SUPPORTED_KEYS
    assert not unknown, f"{folder}: kustomization keys {unknown} are not rendered by this test's kustomize"
    docs: list[dict[str, Any]] = []
    for entry in kustomization.get("resources", []):
        path = folder / entry
        docs.extend(render(path) if path.is_dir() else load_all(path))
    options = kustomization.get("generatorOptions", {})
    assert set(options) <= {"disableNameSuffixHash", "labels"}, f"{folder}: generatorOptions {options}"
    assert not kustomization.get("configMapGenerator") or options.get("disableNameSuffixHash"), (
        f"{folder}: generated names with a hash suffix are not rendered here"
    )
    for generator in kustomization.get("configMapGenerator", []):
        assert set(generator) <= {"name", "files"}, f"{folder}: configMapGenerator {generator}"
        metadata: dict[str, Any] = {"name": generator["name"]}
        if options.get("labels"):
            metadata["labels"] = dict(options["labels"])
        data = {Path(f).name: (folder / f).read_text() for f in generator.get("files", [])}
        docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data})
    for patch in kustomization.get("patches", []):
        _apply_patch(docs, folder, patch)
    if "namespace" in kustomization:
        for doc in docs:
            if doc["kind"] not in CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = kustomization["namespace"]
    _set_images(docs, kustomization.get("images", []))
    return docs


@cache
def rendered(folder: Path) -> tuple[dict[str, Any], ...]:
    return tuple(render(folder))


def _key(doc: dict[str, Any]) -> tuple[str, str, str, str]:
    meta = doc["metadata"]
    return doc["apiVersion"], doc["kind"], meta.get("namespace", ""), meta["name"]


# --- schemas ---------------------------------------------------------------------------------------------


@cache
def _registry() -> Registry:
    definitions = json.loads((K8S_SCHEMAS / "_definitions.json").read_text())
    return Resource.from_contents(definitions) @ Registry()


def _schema_file(doc: dict[str, Any]) -> Path:
    group, version = _group_version(doc)
    group = group.split(".")[0]
    return K8S_SCHEMAS / f"{doc['kind'].lower()}-{group + '-' if group else ''}{version}.json"


def _strict(schema: Any) -> Any:
    """A CRD's structural schema refuses nothing (the API server prunes unknown fields); refuse them here."""
    if isinstance(schema, dict):
        result = {k: _strict(v) for k, v in schema.items()}
        if (
            "properties" in result
            and "additionalProperties" not in result
            and not result.get("x-kubernetes-preserve-unknown-fields")
        ):
            result["additionalProperties"] = False
        return result
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@cache
def _raycluster_validator() -> jsonschema.protocols.Validator:
    schema = _strict(json.loads(RAYCLUSTER_SCHEMA.read_text()))
    schema["properties"]["apiVersion"] = {"enum": ["ray.io/v1"]}
    schema["properties"]["kind"] = {"enum": ["RayCluster"]}
    schema["required"] = ["apiVersion", "kind", "metadata", "spec"]
    # OpenAPI 3.0 schema objects are JSON Schema draft 4 with extensions (x-kubernetes-*), which it ignores.
    return jsonschema.Draft4Validator(schema)


def schema_errors(doc: dict[str, Any]) -> list[str]:
    if doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayCluster":
        errors = list(_raycluster_validator().iter_errors(doc))
        meta = jsonschema.Draft202012Validator({"$ref": OBJECT_META}, registry=_registry())
        errors += list(meta.iter_errors(doc["metadata"]))
    else:
        path = _schema_file(doc)
        assert path.exists(), f"no pinned schema for {doc['apiVersion']} {doc['kind']}: add it (schemas/README.md)"
        validator = jsonschema.Draft202012Validator(json.loads(path.read_text()), registry=_registry())
        errors = list(validator.iter_errors(doc))
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors]


# --- walking pods ------------------------------------------------------------------------------------------


def pod_templates(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, pod template) of a workload: a StatefulSet's, or each Ray group's."""
    name = f"{doc['kind']}/{doc['metadata']['name']}"
    if doc["kind"] in ("StatefulSet", "Deployment", "DaemonSet"):
        yield name, doc["spec"]["template"]
    elif doc["kind"] == "RayCluster":
        yield f"{name} head", doc["spec"]["headGroupSpec"]["template"]
        for group in doc["spec"].get("workerGroupSpecs", []):
            yield f"{name} {group['groupName']}", group["template"]


def containers(template: dict[str, Any], *, init: bool = True) -> list[dict[str, Any]]:
    spec = template["spec"]
    return list(spec.get("initContainers", []) if init else []) + list(spec["containers"])


def workloads(docs: tuple[dict[str, Any], ...]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    for doc in docs:
        for where, template in pod_templates(doc):
            yield where, doc, template


def script_of(command: list[str]) -> str:
    """The command line a container runs, as shell text (an ``sh -c`` script as it is)."""
    if len(command) >= 3 and command[0] in ("/bin/sh", "sh", "/bin/bash", "bash") and command[1] == "-c":
        return command[2]
    return shlex.join(command)


def command_of(container: dict[str, Any]) -> list[str]:
    return [*container.get("command", []), *container.get("args", [])]


# --- the lineside command -------------------------------------------------------------------------------


@cache
def lineside_commands() -> dict[tuple[str, ...], Any]:
    """Every command of ``lineside`` by its path, with its options (the Typer app itself, as `--help` shows)."""
    import typer

    from lineside.cli import app

    found: dict[tuple[str, ...], Any] = {}

    def walk(command: Any, path: tuple[str, ...]) -> None:  # typer's own click: groups have .commands
        found[path] = command
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, (*path, name))

    walk(typer.main.get_group(app), ())
    return found


def lineside_invocations(script: str) -> Iterator[list[str]]:
    """The words of each ``lineside ...`` command in a shell script, from ``lineside`` on."""
    for line in script.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        for index, word in enumerate(words):
            if word == "lineside" or word.endswith("/bin/lineside"):
                yield words[index + 1 :]


def check_lineside_invocation(words: list[str]) -> list[str]:
    """What is wrong with ``lineside WORDS``: an unknown subcommand or option, a required option missing."""
    commands = lineside_commands()
    path: tuple[str, ...] = ()
    rest = list(words)
    while rest and not rest[0].startswith("-") and hasattr(commands[path], "commands"):
        if (*path, rest[0]) not in commands:
            return [f"`lineside {' '.join((*path, rest[0]))}` is not a lineside command"]
        path = (*path, rest.pop(0))
    command = commands[path]
    if hasattr(command, "commands"):
        return [f"`lineside {' '.join(path)}` is a group: name one of its commands"]
    options = {opt: param for param in command.params for opt in [*param.opts, *param.secondary_opts]}
    problems, given = [], set()
    for word in rest:
        if word.startswith("--"):
            option = word.split("=", 1)[0]
            if option not in options:
                problems.append(f"`lineside {' '.join(path)}` has no option {option}")
            else:
                given.add(options[option].name)
    for param in command.params:
        # An option the program also reads from a LINESIDE_ variable (a join token, kept out of ps) may come from
        # the container's environment; that the variable is a real one is checked with the others.
        from_env = bool(getattr(param, "envvar", None))
        required = getattr(param, "required", False) and param.param_type_name == "option" and not from_env
        if required and param.name not in given:
            problems.append(f"`lineside {' '.join(path)}` needs {param.opts[0]}")
    return problems


@cache
def lineside_variables() -> frozenset[str]:
    """LINESIDE_* variables the code reads: every setting, and those read from os.environ directly."""
    from control_plane.settings import ControlPlaneSettings
    from edge_node.settings import EdgeSettings

    names = {f"LINESIDE_{field.upper()}" for cls in (ControlPlaneSettings, EdgeSettings) for field in cls.model_fields}
    for package in ("control_plane", "edge_node", "contracts", "lineside", "robots"):
        for source in (ROOT / package).rglob("*.py"):
            text = source.read_text()
            names |= set(re.findall(r"os\.environ(?:\.get\(|\[)\s*\"(LINESIDE_\w+)\"", text))
            names |= set(re.findall(r"envvar=\"(LINESIDE_\w+)\"", text))  # typer options read from the environment
    return frozenset(names)


def shell_variables(script: str) -> set[str]:
    """$NAME and ${NAME} a script uses (less those it assigns itself)."""
    used = set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", script))
    assigned = set(re.findall(r"^\s*([A-Za-z_][A-Za-z0-9_]*)=", script, re.M))
    return used - assigned


# --- Kubernetes: files and schemas ------------------------------------------------------------------------


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=_id)
def test_every_kustomization_lists_files_that_exist(kustomization: Path) -> None:
    folder = kustomization.parent
    content = yaml.safe_load(kustomization.read_text())
    assert content["apiVersion"] == "kustomize.config.k8s.io/v1beta1" and content["kind"] == "Kustomization"
    listed = [*content.get("resources", []), *(p["path"] for p in content.get("patches", []))]
    listed += [f for g in content.get("configMapGenerator", []) for f in g.get("files", [])]
    for entry in listed:
        path = (folder / entry).resolve()
        assert path.exists(), f"{_id(kustomization)} lists {entry}, which does not exist"
        assert path.is_relative_to(KUBERNETES), f"{_id(kustomization)}: {entry} is outside deploy/kubernetes"
        if path.is_dir():
            assert (path / "kustomization.yaml").exists(), f"{entry} is a folder without a kustomization.yaml"


def test_every_yaml_file_is_listed_somewhere_or_is_an_example() -> None:
    """A manifest no kustomization lists would be silently left out of every install."""
    listed = set()
    for kustomization in KUSTOMIZATIONS:
        content = yaml.safe_load(kustomization.read_text())
        for entry in [*content.get("resources", []), *(p["path"] for p in content.get("patches", []))]:
            listed.add((kustomization.parent / entry).resolve())
    for path in KUBERNETES.rglob("*.yaml"):
        if path.name != "kustomization.yaml" and not path.name.endswith(".example.yaml"):
            assert path.resolve() in listed, f"{_id(path)} is in no kustomization"


@pytest.mark.parametrize("target", ALL_TARGETS, ids=_id)
def test_rendered_manifests_validate_against_the_pinned_schemas(target: Path) -> None:
    docs = rendered(target)
    assert docs
    keys = [_key(d) for d in docs]
    assert len(keys) == len(set(keys)), f"{_id(target)}: the same object twice"
    problems = {f"{d['kind']}/{d['metadata']['name']}": schema_errors(d) for d in docs}
    assert not {k: v for k, v in problems.items() if v}, json.dumps(problems, indent=1)


@pytest.mark.parametrize("overlay", OVERLAYS, ids=_id)
def test_secret_placeholders_validate_and_hold_no_secret(overlay: Path) -> None:
    secrets = load_all(overlay / "secrets.example.yaml")
    namespace = yaml.safe_load((overlay / "kustomization.yaml").read_text())["namespace"]
    for secret in secrets:
        assert secret["kind"] == "Secret" and not schema_errors(secret), schema_errors(secret)
        assert secret["metadata"]["namespace"] == namespace
        assert "data" not in secret, "placeholders go in stringData, readable"
        for key, value in secret["stringData"].items():
            assert "REPLACE-ME" in value, f"{secret['metadata']['name']}/{key} must hold a placeholder, never a value"


def test_the_schemas_bad_manifests_fail() -> None:
    """The validation refuses what it should: a misspelt field, in a built-in kind and in the RayCluster."""
    docs = rendered(KUBERNETES / "overlays" / "single-site")
    statefulset = copy.deepcopy(next(d for d in docs if d["kind"] == "StatefulSet"))
    statefulset["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    assert any("imagePullPolicyy" in e for e in schema_errors(statefulset))
    ray = copy.deepcopy(next(d for d in docs if d["kind"] == "RayCluster"))
    ray["spec"]["workerGroupSpec"] = ray["spec"].pop("workerGroupSpecs")
    assert any("workerGroupSpec" in e for e in schema_errors(ray))
    ray = copy.deepcopy(next(d for d in docs if d["kind"] == "RayCluster"))
    ray["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = [4]
    assert schema_errors(ray)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed: rendered by the test only")
@pytest.mark.parametrize("target", ALL_TARGETS, ids=_id)
def test_kubectl_kustomize_renders_what_the_test_renders(target: Path) -> None:
    result = subprocess.run(["kubectl", "kustomize", str(target)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    theirs = {_key(d): d for d in yaml.safe_load_all(result.stdout) if d}
    ours = {_key(d): d for d in rendered(target)}
    assert sorted(theirs) == sorted(ours)
    for key, doc in ours.items():
        assert doc == theirs[key], f"{key} differs from kubectl kustomize's"


def test_the_pinned_schemas_are_documented() -> None:
    readme = (SCHEMAS / "README.md").read_text()
    for path in SCHEMAS.rglob("*.json"):
        assert path.name in readme, f"schemas/README.md does not say where {path.name} comes from"
    for overlay in OVERLAYS:
        for doc in rendered(overlay):
            if doc["kind"] != "RayCluster":
                assert _schema_file(doc).exists(), f"{doc['kind']}: pin its schema (pin_schemas.py KINDS)"


# --- Kubernetes: what a schema cannot see ------------------------------------------------------------------


def _env_refs(container: dict[str, Any], kind: str) -> Iterator[tuple[str, str | None]]:
    """(name, key) of the Secrets (kind "secret") or ConfigMaps ("configMap") a container reads; key None: all."""
    for env in container.get("env", []):
        ref = env.get("valueFrom", {}).get(f"{kind}KeyRef")
        if ref:
            yield ref["name"], ref["key"]
    for source in container.get("envFrom", []):
        ref = source.get(f"{kind}Ref")
        if ref:
            yield ref["name"], None


@pytest.mark.parametrize("overlay", OVERLAYS, ids=_id)
def test_every_secret_a_pod_reads_has_the_key(overlay: Path) -> None:
    secrets = {s["metadata"]["name"]: s["stringData"] for s in load_all(overlay / "secrets.example.yaml")}
    docs = rendered(overlay)
    read = set()
    for where, _doc, template in workloads(docs):
        for container in containers(template):
            for name, key in _env_refs(container, "secret"):
                assert name in secrets, f"{where} reads Secret {name}, which secrets.example.yaml lacks"
                assert key is None or key in secrets[name], f"{where} reads {name}/{key}: no such key"
                read.add(name)
        for volume in template["spec"].get("volumes", []):
            if "secret" in volume:
                name = volume["secret"]["secretName"]
                assert name in secrets, f"{where} mounts Secret {name}, which secrets.example.yaml lacks"
                read.add(name)
    assert read == set(secrets), f"secrets.example.yaml has Secrets no pod reads: {set(secrets) - read}"


@pytest.mark.parametrize("overlay", OVERLAYS, ids=_id)
def test_every_config_map_and_claim_a_pod_uses_exists(overlay: Path) -> None:
    docs = rendered(overlay)
    config_maps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    claims = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    used_claims = []
    for where, doc, template in workloads(docs):
        spec = template["spec"]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        templated = {t["metadata"]["name"] for t in doc["spec"].get("volumeClaimTemplates", [])}
        for container in containers(template):
            for name, key in _env_refs(container, "configMap"):
                assert name in config_maps, f"{where} reads ConfigMap {name}, which is not rendered"
                assert key is None or key in config_maps[name], f"{where} reads {name}/{key}: no such key"
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes or mount["name"] in templated, f"{where}: no volume {mount['name']}"
        for volume in volumes.values():
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps, f"{where}: no ConfigMap {volume['configMap']}"
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                assert claim in claims, f"{where} mounts claim {claim}, which is not rendered"
                used_claims.append(claim)
        if spec.get("serviceAccountName"):
            accounts = {d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount"}
            assert spec["serviceAccountName"] in accounts, f"{where}: no ServiceAccount {spec['serviceAccountName']}"
    # Each agent's claim is its node's identity: two pods sharing one would be one node twice.
    assert len(used_claims) == len(set(used_claims)), used_claims
    assert set(used_claims) == claims, f"claims no pod mounts: {claims - set(used_claims)}"


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("overlay", OVERLAYS, ids=_id)
def test_services_statefulsets_and_policies_select_their_pods(overlay: Path) -> None:
    docs = rendered(overlay)
    pods = [(where, t["metadata"].get("labels", {})) for where, _d, t in workloads(docs)]
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    for name, service in services.items():
        chosen = [where for where, labels in pods if _selects(service["spec"]["selector"], labels)]
        assert len(chosen) == 1, f"Service {name} selects {chosen or 'no pods'}"
        template = next(t for w, _d, t in workloads(docs) if w == chosen[0])
        ports = {p["name"] for c in containers(template, init=False) for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, f"Service {name}: no container port named {port['targetPort']}"
    for statefulset in (d for d in docs if d["kind"] == "StatefulSet"):
        spec, name = statefulset["spec"], statefulset["metadata"]["name"]
        assert _selects(spec["selector"]["matchLabels"], spec["template"]["metadata"]["labels"]), name
        governing = services.get(spec["serviceName"])
        assert governing and governing["spec"].get("clusterIP") == "None", f"{name}: serviceName is no headless Service"
    for policy in (d for d in docs if d["kind"] == "NetworkPolicy"):
        selector = policy["spec"]["podSelector"]["matchLabels"]
        assert any(_selects(selector, labels) for _w, labels in pods), f"NetworkPolicy {policy['metadata']['name']}"


def test_the_broker_lets_in_the_control_plane_and_the_ray_head() -> None:
    """Its policy admits pods labelled lineside.io/broker-client: the control plane and the head, which holds
    the ingress; workers never connect to the broker."""
    docs = rendered(KUBERNETES / "overlays" / "single-site")
    policy = next(d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "lineside-broker")
    (plain,) = [rule for rule in policy["spec"]["ingress"] if rule.get("from")]
    selector = plain["from"][0]["podSelector"]["matchLabels"]
    admitted = {where for where, _d, t in workloads(docs) if _selects(selector, t["metadata"].get("labels", {}))}
    assert admitted == {"StatefulSet/lineside-control-plane", "RayCluster/lineside-ray head"}


@pytest.mark.parametrize("target", ALL_TARGETS, ids=_id)
def test_containers_run_real_lineside_commands_with_real_settings(target: Path) -> None:
    for where, doc, template in workloads(rendered(target)):
        ray_worker = doc["kind"] == "RayCluster" and not where.endswith(" head")
        for container in containers(template):
            script = script_of(command_of(container))
            for words in lineside_invocations(script):
                assert not check_lineside_invocation(words), (where, check_lineside_invocation(words))
            env = {e["name"] for e in container.get("env", [])}
            for name in env:
                if name.startswith("LINESIDE_"):
                    assert name in lineside_variables(), f"{where}: {name} is read by no Lineside code"
            given = env | (
                KUBERAY_ENV_ALL | (KUBERAY_ENV_WORKER if ray_worker else set())
                if doc["kind"] == "RayCluster"
                else set()
            )
            missing = shell_variables(script) - given
            assert not missing, f"{where}/{container['name']}: its command uses {missing}, which it is not given"
    for doc in rendered(target):
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "lineside-control-plane":
            for name in doc["data"]:  # read as the control plane's environment (envFrom)
                assert name in lineside_variables(), f"ConfigMap lineside-control-plane: {name} is no setting"


@pytest.mark.parametrize("target", ALL_TARGETS, ids=_id)
def test_pods_run_unprivileged_with_resources_and_probes(target: Path) -> None:
    for where, _doc, template in workloads(rendered(target)):
        spec = template["spec"]
        assert spec.get("automountServiceAccountToken") is False, f"{where}: no pod here needs the Kubernetes API"
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        for container in containers(template):
            name = f"{where}/{container['name']}"
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["capabilities"]["drop"] == ["ALL"], name
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][kind]), f"{name}: {kind}"
            assert container.get("imagePullPolicy") == "IfNotPresent", name
        for container in containers(template, init=False):
            for probe in ("readinessProbe", "livenessProbe"):
                assert probe in container, f"{where}/{container['name']} has no {probe}"


def test_the_control_plane_probes_are_its_health_endpoints() -> None:
    from control_plane.api.routes.health import router

    paths = {route.path for route in router.routes}  # type: ignore[attr-defined]
    docs = rendered(KUBERNETES / "base" / "control-plane")
    (statefulset,) = [d for d in docs if d["kind"] == "StatefulSet"]
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz" in paths
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz" in paths
    # Each instance's broker logins are named after it: a stable pod name, never a Deployment's.
    env = {e["name"]: e for e in container["env"]}
    assert env["LINESIDE_INSTANCE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


@pytest.mark.parametrize("overlay", OVERLAYS, ids=_id)
def test_the_ray_cluster_is_started_by_the_agents(overlay: Path) -> None:
    """The agent starts Ray (head in-process, workers with --ray-address), so KubeRay must not; each Ray pod
    joins with a join token of its own; the GCS listens where KubeRay tells the workers to join."""
    import ray

    (cluster,) = [d for d in rendered(overlay) if d["kind"] == "RayCluster"]
    spec = cluster["spec"]
    assert cluster["metadata"]["annotations"]["ray.io/overwrite-container-cmd"] == "true"
    assert spec["rayVersion"] == ray.__version__, "the image's Ray is the project's"
    assert spec["enableInTreeAutoscaling"] is False and spec["authOptions"]["mode"] == "token"
    assert len(cluster["metadata"]["name"]) <= 53 and re.fullmatch(
        r"[a-z]([-a-z0-9]*[a-z0-9])?", cluster["metadata"]["name"]
    )
    tokens = []
    for where, template in pod_templates(cluster):
        ray_container = template["spec"]["containers"][0]  # KubeRay's Ray container is the first
        invocations = list(lineside_invocations(script_of(command_of(ray_container))))
        assert {tuple(w[:2]) for w in invocations} == {("edge-node", "join"), ("edge-node", "run")}, where
        head = where.endswith(" head")
        for words in invocations:
            assert ("--ray-address" in words) is not head, f"{where}: {words}"
            assert "--data-dir" in words
        env = {e["name"]: e for e in ray_container["env"]}
        tokens.append(env["LINESIDE_JOIN_TOKEN"]["valueFrom"]["secretKeyRef"]["key"])
        if head:
            (gcs,) = [p["containerPort"] for p in ray_container["ports"] if p["name"] == "gcs-server"]
            assert env["RAY_GCS_SERVER_PORT"]["value"] == str(gcs) == "6379"  # KubeRay's default head port
            assert template["metadata"]["labels"]["lineside.io/broker-client"] == "true"
        else:
            group = next(g for g in spec["workerGroupSpecs"] if where.endswith(f" {g['groupName']}"))
            assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 1, "one node per group"
            assert "lineside.io/broker-client" not in template["metadata"]["labels"]
            assert tokens[-1] == group["groupName"], f"{where}: its join token's key is its group's name"
    assert len(tokens) == len(set(tokens)), f"join tokens are one-time: one key per Ray pod ({tokens})"


@pytest.mark.parametrize("overlay", OVERLAYS, ids=_id)
def test_every_image_is_the_projects(overlay: Path) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    kustomization = yaml.safe_load((overlay / "kustomization.yaml").read_text())
    (image,) = [i for i in kustomization["images"] if i["name"] == IMAGE]
    expected = f"{image['newName']}:{image['newTag']}"
    assert image["newTag"].startswith(version)
    for where, _doc, template in workloads(rendered(overlay)):
        for container in containers(template):
            if not container["image"].startswith("postgres:"):
                assert container["image"] == expected, where
    for path in (KUBERNETES / "base").rglob("*.yaml"):
        for tag in re.findall(rf"image: {IMAGE}:(\S+)", path.read_text()):
            assert tag == version, f"{_id(path)}: {IMAGE}:{tag}, the project is {version}"


# --- the broker they share ------------------------------------------------------------------------------


def _conf(text: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            key, _, value = line.partition(" ")
            settings.setdefault(key, []).append(value.strip())
    return settings


def test_mosquitto_conf_keeps_what_lineside_broker_run_generates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edge_node import broker

    plugin = tmp_path / "mosquitto_dynamic_security.so"
    plugin.touch()
    monkeypatch.setattr(broker, "DYNSEC_PLUGIN_PATHS", (str(plugin),))
    data = "/var/lib/lineside/broker"
    generated = _conf(broker.MosquittoBroker(Path(data), 1883, admin_password="x").render_config())
    ours = _conf((SITE / "mosquitto.conf").read_text())
    differ = {"listener", "user", "plugin", "log_dest", "certfile", "keyfile", "tls_version"}
    for key in set(generated) - differ:
        assert ours.get(key) == generated[key], f"mosquitto.conf {key}: {ours.get(key)} != {generated[key]}"
    assert ours["plugin"] == ["/usr/local/lib/mosquitto_dynamic_security.so"]
    assert "/usr/local/lib/mosquitto_dynamic_security.so" in (DEPLOY / "Dockerfile").read_text()
    assert ours["listener"] == ["1883 0.0.0.0", "8883 0.0.0.0"]


def _broker_pod() -> dict[str, Any]:
    docs = rendered(SITE)
    (statefulset,) = [d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "lineside-broker"]
    return statefulset["spec"]["template"]


def test_the_broker_pod_mounts_what_its_config_names() -> None:
    conf = _conf((SITE / "mosquitto.conf").read_text())
    pod = _broker_pod()
    (init,) = pod["spec"]["initContainers"]
    (mosquitto,) = pod["spec"]["containers"]
    mounts = {m["mountPath"]: m["name"] for m in mosquitto["volumeMounts"]}
    data = conf["persistence_location"][0].rstrip("/")
    assert mounts[data] == "data" and conf["plugin_opt_config_file"] == [f"{data}/dynamic-security.json"]
    assert init["command"][-1] == data and {m["mountPath"]: m["name"] for m in init["volumeMounts"]}[data] == "data"
    config = Path(mosquitto["command"][-1])
    assert mounts[str(config.parent)] == "config" and config.name == "mosquitto.conf"
    assert Path(init["command"][1]).parent == config.parent and Path(init["command"][1]).name == "init_dynsec.py"
    tls_folder = str(Path(conf["certfile"][0]).parent)
    assert mounts[tls_folder] == "tls" and Path(conf["keyfile"][0]).parent == Path(tls_folder)
    tls_volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "tls")
    secret = next(
        s
        for s in load_all(OVERLAYS[0] / "secrets.example.yaml")
        if s["metadata"]["name"] == tls_volume["secret"]["secretName"]
    )
    assert {Path(conf["certfile"][0]).name, Path(conf["keyfile"][0]).name} == set(secret["stringData"])
    ports = {p["containerPort"] for p in mosquitto["ports"]}
    assert ports == {int(v.split()[0]) for v in conf["listener"]}
    env = {e["name"] for e in init["env"]}
    assert env == {"LINESIDE_BROKER_ADMIN_PASSWORD"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _mosquitto() -> str | None:
    return shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto",) if Path(p).exists()), None)


@pytest.fixture
def site_broker(tmp_path: Path) -> Iterator[tuple[int, int, Path, str]]:
    """Mosquitto started with mosquitto.conf (its paths moved under tmp_path, its ports free) after
    init_dynsec.py wrote the admin; yields (plain port, TLS port, CA file, admin password)."""
    from edge_node.broker import DYNSEC_PLUGIN_PATHS, wait_for_port

    binary = _mosquitto()
    plugin = next((p for p in DYNSEC_PLUGIN_PATHS if Path(p).exists()), None)
    if binary is None or plugin is None or shutil.which("openssl") is None:
        pytest.skip("Mosquitto with its dynamic-security plugin and openssl are needed (make test installs them)")
    data, tls = tmp_path / "data", tmp_path / "tls"
    tls.mkdir()
    subj = "/CN=lineside-broker"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", subj,
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(tls / "tls.key"),
                    "-out", str(tls / "tls.crt")], check=True, capture_output=True, timeout=60)  # fmt: skip
    password = "admin-" + os.urandom(12).hex()
    init = subprocess.run([sys.executable, str(SITE / "init_dynsec.py"), str(data)], capture_output=True, text=True,
                          env={**os.environ, "LINESIDE_BROKER_ADMIN_PASSWORD": password}, timeout=60)  # fmt: skip
    assert init.returncode == 0, init.stderr
    plain, secure = _free_port(), _free_port()
    conf = (SITE / "mosquitto.conf").read_text()
    conf = conf.replace("/usr/local/lib/mosquitto_dynamic_security.so", plugin)
    conf = conf.replace("/var/lib/lineside/broker", str(data)).replace("/etc/lineside/broker-tls", str(tls))
    conf = conf.replace("listener 1883 0.0.0.0", f"listener {plain} 127.0.0.1")
    conf = conf.replace("listener 8883 0.0.0.0", f"listener {secure} 127.0.0.1")
    # In the image Mosquitto runs as its unprivileged user already; started as root it would switch to
    # user mosquitto, which cannot read tmp_path.
    (tmp_path / "mosquitto.conf").write_text(f"user {getpass.getuser()}\n{conf}")
    process = subprocess.Popen([binary, "-c", str(tmp_path / "mosquitto.conf")], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        try:
            wait_for_port("127.0.0.1", plain, 10)
            wait_for_port("127.0.0.1", secure, 10)
        except Exception:
            process.kill()
            pytest.fail(f"Mosquitto refused mosquitto.conf: {process.communicate(timeout=10)[0].decode()}")
        yield plain, secure, tls / "tls.crt", password
    finally:
        process.terminate()
        process.wait(timeout=10)


def _connect(
    port: int, username: str | None, password: str | None, client_id: str | None, ca: Path | None = None
) -> str:
    """How the broker answers an MQTT 5 login on ``port`` (its CONNACK's reason), over TLS with ``ca``."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or "", protocol=mqtt.MQTTv5)
    if username is not None:
        client.username_pw_set(username, password)
    if ca is not None:
        client.tls_set(ca_certs=str(ca))
    answered, reasons = threading.Event(), []

    def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        reasons.append(str(reason))
        answered.set()

    client.on_connect = on_connect
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        assert answered.wait(10), "no CONNACK"
        return reasons[0]
    finally:
        client.disconnect()
        client.loop_stop()


def test_a_broker_from_these_files_serves_the_control_plane_and_robots(site_broker: tuple[int, int, Path, str]) -> None:
    from control_plane.broker_sync import DynsecAdmin, robot_client

    plain, secure, ca, password = site_broker
    robot = robot_client("acme", "line-1", "cam-7", "robot-" + os.urandom(8).hex())
    with DynsecAdmin("127.0.0.1", plain, password) as admin:  # what the control plane does to a site's broker
        admin.reconcile([robot])
        assert robot.username in admin.managed_usernames()
    assert _connect(secure, robot.username, robot.password, robot.client_id, ca=ca) == "Success"
    assert _connect(plain, None, None, "anonymous") != "Success"
    # A second first start keeps the state the plugin owns (the robot's login stays).
    env = {**os.environ, "LINESIDE_BROKER_ADMIN_PASSWORD": "other"}
    init = [sys.executable, str(SITE / "init_dynsec.py"), str(ca.parent.parent / "data")]
    again = subprocess.run(init, capture_output=True, text=True, env=env, timeout=60)
    assert again.returncode == 0 and "kept" in again.stdout
    with DynsecAdmin("127.0.0.1", plain, password) as admin:
        assert robot.username in admin.managed_usernames()


def test_init_dynsec_says_what_to_do_without_a_password(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "LINESIDE_BROKER_ADMIN_PASSWORD"}
    result = subprocess.run([sys.executable, str(SITE / "init_dynsec.py"), str(tmp_path)], capture_output=True,
                            text=True, env=env, timeout=60)  # fmt: skip
    assert result.returncode == 2 and "/broker-admin" in result.stderr
    assert not (tmp_path / "dynamic-security.json").exists()


# --- compose ---------------------------------------------------------------------------------------------


@cache
def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(document, dict)
    return document


def test_compose_file_validates_against_the_compose_spec() -> None:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose())]
    assert not errors, errors
    broken = copy.deepcopy(compose())
    broken["services"]["broker"]["depends_on"]["broker-init"]["condition"] = "service_finished"
    assert list(validator.iter_errors(broken)), "the schema must refuse what compose refuses"


def _interpolate_defaults(text: str) -> str:
    """${VAR:-default} as its default, ${VAR} and ${VAR:?...} as a marker (what a missing .env leaves)."""
    text = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", text)
    return re.sub(r"\$\{\w+(:?\?[^}]*)?\}", "<set>", text)


def test_compose_services_volumes_and_mounts_are_consistent() -> None:
    document = compose()
    services, volumes = document["services"], set(document["volumes"])
    used = set()
    for name, service in services.items():
        assert "image" in service, f"{name}: no image"
        for other in service.get("depends_on", {}):
            assert other in services, f"{name} depends on {other}, which is no service"
        for mount in service.get("volumes", []):
            source = _interpolate_defaults(mount).split(":")[0]
            if source.startswith((".", "/")):
                assert (COMPOSE.parent / source).exists(), f"{name} mounts {source}, which does not exist"
            else:
                assert source in volumes, f"{name} mounts volume {source}, which is not declared"
                used.add(source)
        for port in service.get("ports", []):
            assert re.fullmatch(r"(\S+:)?\d+:\d+", _interpolate_defaults(port)), f"{name}: port {port}"
        build = service.get("build")
        if build:
            context = COMPOSE.parent / build["context"]
            assert (context / build["dockerfile"]).exists() and (context / "pyproject.toml").exists()
    assert used == volumes, f"declared volumes no service mounts: {volumes - used}"
    # The broker's files are the Kubernetes site's: one copy of each.
    mounted = {m.split(":")[0] for m in services["broker"]["volumes"] + services["broker-init"]["volumes"]}
    assert "../kubernetes/base/site/mosquitto.conf" in mounted and "../kubernetes/base/site/init_dynsec.py" in mounted


def test_compose_variables_are_documented_and_secrets_stay_out_of_git() -> None:
    text = COMPOSE.read_text()
    used = set(re.findall(r"(?<!\$)\$\{(\w+)", text))
    example = (COMPOSE.parent / ".env.example").read_text()
    documented = set(re.findall(r"^(\w+)=", example, re.M))
    assert used == documented, f"compose variables vs .env.example: {used ^ documented}"
    assert all(not value for value in re.findall(r"^(?:POSTGRES_PASSWORD|LINESIDE_SECRET_KEY)=(.*)$", example, re.M))
    ignored = (COMPOSE.parent / ".gitignore").read_text().split()
    assert ".env" in ignored and "tls/*" in ignored


def test_compose_commands_are_real_lineside_commands_with_real_settings() -> None:
    for name, service in compose()["services"].items():
        command = service.get("command", [])
        script = script_of(command).replace("$$", "$")
        for words in lineside_invocations(script):
            assert not check_lineside_invocation(words), (name, check_lineside_invocation(words))
        env = service.get("environment", {})
        for variable in env:
            if variable.startswith("LINESIDE_"):
                assert variable in lineside_variables(), f"{name}: {variable} is read by no Lineside code"
        missing = shell_variables(script) - set(env)
        assert not missing, f"{name}: its command uses {missing}, which it is not given"
    assert "edge-node" in compose()["services"]["edge"]["command"][2]


def test_the_image_holds_every_package() -> None:
    """deploy/Dockerfile copies the repository root; its ignore file must leave every package in it."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = [p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]]
    ignored = {line.strip() for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()}
    for package in packages:
        assert package not in ignored and (ROOT / package).is_dir(), package
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert '"/src[server,${ORT_EXTRA}]"' in dockerfile and "USER 10001:10001" in dockerfile
