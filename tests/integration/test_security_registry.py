"""Security of model uploads (issue 11 items 1, 2 and 17): no file of the server is read, validation
runs out of process under limits without holding the event loop, and the stored files are private.

Every test uploads through the real API to a real ONNX Runtime; the "attacker" is a factory_it user.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper

from control_plane.app import create_app
from control_plane.settings import ControlPlaneSettings
from edge_node.broker import free_port
from models import BUNDLED_MANIFEST
from tests.integration.cp_fixtures import BOOT, bearer, ok

SECRET = b"LINESIDE_SECRET_KEY=hunter2-do-not-leak\n"
N = "N"  # dynamic batch axis
LIBRARY_TEXT = (
    "ONNXRuntimeError",
    "onnxruntime_src",
    "Status Message",
    "DecodeError",
    "google.protobuf",
    "Error parsing",
)


@pytest.fixture
def app_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[TestClient, dict[str, str]]]:
    """An app on SQLite whose working directory holds a secret file, with a factory_it user's token."""
    cwd = tmp_path / "server-cwd"
    cwd.mkdir()
    (cwd / "secret.env").write_bytes(SECRET)
    monkeypatch.chdir(cwd)  # the attacker's relative locations resolve here
    settings = ControlPlaneSettings(data_dir=tmp_path / "data", bootstrap_token=BOOT, monitor_sites=False)
    settings.validator_cpu_s, settings.validator_timeout_s, settings.validator_memory_bytes = 3, 20, 2**30
    app = create_app(settings)
    with TestClient(app) as client:
        op = bearer(BOOT)
        tenant = ok(client.post("/tenants", json={"slug": "acme", "name": "Acme"}, headers=op), 201)
        body = {"email": "it@acme.example", "role": "factory_it", "tenant_id": tenant["id"]}
        it = bearer(ok(client.post("/users", json=body, headers=op), 201)["token"])
        yield client, it
    app.state.engine.dispose()


def _serialize(model: onnx.ModelProto) -> bytes:
    out = io.BytesIO()
    onnx.save(model, out)
    return out.getvalue()


def _manifest(data: bytes) -> str:
    manifest = json.loads(BUNDLED_MANIFEST.read_text())
    manifest.update({"version": "9.0.0", "sha256": hashlib.sha256(data).hexdigest()})
    return json.dumps(manifest)


def _upload(client: TestClient, headers: dict[str, str], data: bytes, **form: object) -> httpx.Response:
    files = {"file": ("model.onnx", data)}
    return client.post("/models", files=files, data={"manifest": _manifest(data), **form}, headers=headers)


def _external(name: str, location: str = "secret.env", elements: int = 2) -> TensorProto:
    """An int64 tensor whose bytes ONNX Runtime would read from ``location`` (relative to its cwd)."""
    tensor = TensorProto(name=name, data_type=TensorProto.INT64, dims=[elements])
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(8 * elements))):
        tensor.external_data.add(key=key, value=value)
    return tensor


def _io(out_type: int = TensorProto.FLOAT) -> tuple[onnx.ValueInfoProto, onnx.ValueInfoProto]:
    return (helper.make_tensor_value_info("image", TensorProto.FLOAT, [N, 3, 128, 128]),
            helper.make_tensor_value_info("probs", out_type, [N, 6]))  # fmt: skip


def _model(nodes: list[onnx.NodeProto], initializers: list[TensorProto], extra_inputs=(), **graph_kw) -> bytes:
    x, y = _io(graph_kw.pop("out_type", TensorProto.FLOAT))
    graph = helper.make_graph(nodes, "probe", [x, *extra_inputs], [y], initializers, **graph_kw)
    return _serialize(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def _dynamic_zeros(source: str, out: str) -> list[onnx.NodeProto]:
    """``out = source + 0``, where the 0 depends on the input so ONNX Runtime cannot fold it away."""
    return [helper.make_node("Shape", ["image"], ["dyn"], start=0, end=2),
            helper.make_node("Sub", ["dyn", "dyn"], ["zeros"]),
            helper.make_node("Add", [source, "zeros"], [out])]  # fmt: skip


def _leaking_gather(source: str) -> list[onnx.NodeProto]:
    """Gather with indices read from the secret: ORT's error prints the first index (8 bytes of the file)."""
    return [*_dynamic_zeros(source, "idx"), helper.make_node("Gather", ["dyn", "idx"], ["probs"])]


def _leaking_model(nodes: list[onnx.NodeProto], initializers: list[TensorProto], **kw) -> bytes:
    return _model([*nodes, *_leaking_gather("leak")], initializers, out_type=TensorProto.INT64, **kw)


def _exploit(where: str) -> bytes:
    if where == "initializer":  # also a graph input, so ORT does not constant-fold it: it reads the file
        leak_input = helper.make_tensor_value_info("leak", TensorProto.INT64, [2])
        return _leaking_model([], [_external("leak")], extra_inputs=[leak_input])
    if where == "constant_attribute":
        const = helper.make_node("Constant", [], ["leak"], value=_external("value"))
        return _leaking_model([const], [])
    if where == "sparse_initializer":
        indices = helper.make_tensor("indices", TensorProto.INT64, [2], [0, 1])
        return _leaking_model([], [], sparse_initializer=[helper.make_sparse_tensor(_external("leak"), indices, [2])])
    # A Constant with external data inside an If branch: the subgraph must be searched too.
    branch_out = helper.make_tensor_value_info("leak_b", TensorProto.INT64, [2])
    branch = helper.make_graph(
        [helper.make_node("Constant", [], ["leak_b"], value=_external("v"))], "b", [], [branch_out]
    )
    cond = helper.make_tensor("cond", TensorProto.BOOL, [], [True])
    if_node = helper.make_node("If", ["cond"], ["leak"], then_branch=branch, else_branch=branch)
    return _leaking_model([if_node], [cond])


def _secret_numbers() -> set[str]:
    """The secret's bytes as ORT prints int64 indices, and as text."""
    words = np.frombuffer(SECRET[:16], dtype="<i8")
    return {str(int(w)) for w in words} | {"hunter2", "LINESIDE_SECRET_KEY"}


@pytest.mark.parametrize("where", ["initializer", "constant_attribute", "sparse_initializer", "if_subgraph"])
def test_external_data_is_refused_and_no_server_file_is_read(app_client, where: str) -> None:
    client, it = app_client
    response = _upload(client, it, _exploit(where))
    assert response.status_code == 422, response.text
    for leaked in _secret_numbers():
        assert leaked not in response.text, f"the answer carries the server's file: {response.text}"
    body = response.json()
    assert (body["code"], body["reason"]) == ("invalid_upload", "external_data")
    assert not any(text in response.text for text in LIBRARY_TEXT)


def _loop_forever() -> bytes:
    """A graph that passes every static check but loops for ~2^62 iterations when run."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Add", ["acc_in", "one"], ["acc_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [])],
        [helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])],
    )  # fmt: skip
    inits = [helper.make_tensor("trips", TensorProto.INT64, [], [2**62]),
             helper.make_tensor("go", TensorProto.BOOL, [], [True]),
             helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
             helper.make_tensor("w", TensorProto.FLOAT, [3, 6], [1.0] * 18)]  # fmt: skip
    nodes = [helper.make_node("Loop", ["trips", "go", "zero"], ["acc"], body=body),
             helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"]),
             helper.make_node("Mul", ["flat", "acc"], ["scaled"]),
             helper.make_node("MatMul", ["scaled", "w"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probs"], axis=1)]  # fmt: skip
    return _model(nodes, inits)


def _validator_running() -> bool:
    """Whether a validator child of this process is alive (the out-of-process check has started)."""
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():  # a worker thread starts it: every thread's children
        with contextlib.suppress(OSError):  # threads and children come and go
            for pid in (task / "children").read_text().split():
                if b"model_check" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    return True
    return False


def test_healthz_answers_while_a_looping_model_is_validated_and_it_times_out(app_client) -> None:
    client, it = app_client
    finished: dict[str, float] = {}
    result: dict[str, httpx.Response] = {}

    def upload() -> None:
        result["upload"] = _upload(client, it, _loop_forever())
        finished["upload"] = time.monotonic()

    worker = threading.Thread(target=upload)
    worker.start()
    deadline = time.monotonic() + 3
    while not _validator_running() and time.monotonic() < deadline and worker.is_alive():
        time.sleep(0.02)
    assert ok(client.get("/healthz")) == {"status": "ok"}
    finished["healthz"] = time.monotonic()
    worker.join()
    assert finished["healthz"] < finished["upload"], "/healthz waited for the validation"
    response = result["upload"]
    assert response.status_code == 422, response.text
    assert (response.json()["code"], response.json()["reason"]) == ("invalid_upload", "timeout")
    good = (BUNDLED_MANIFEST.parent / "part-inspector.onnx").read_bytes()
    assert _upload(client, it, good).status_code == 201  # the server is up and still validates


def test_validations_beyond_the_limit_are_told_to_retry(app_client) -> None:
    client, it = app_client
    client.app.state.settings.validator_concurrency = 1
    slow = threading.Thread(target=_upload, args=(client, it, _loop_forever()))
    slow.start()
    deadline = time.monotonic() + 5
    while not _validator_running() and time.monotonic() < deadline:
        time.sleep(0.02)
    busy = _upload(client, it, (BUNDLED_MANIFEST.parent / "part-inspector.onnx").read_bytes())
    slow.join()
    assert busy.status_code == 429, busy.text
    assert busy.json()["code"] == "validator_busy" and int(busy.headers["Retry-After"]) > 0


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("not_onnx", "not_onnx"),
        ("runtime_failure", "runtime_failed"),
        ("memory_hog", "runtime_failed"),
        ("too_large", "too_large"),
    ],
)
def test_failures_answer_a_stable_reason_without_library_text(app_client, case: str, reason: str) -> None:
    client, it = app_client
    data = b"\x08\x07garbage that is not protobuf"
    if case == "runtime_failure":  # reshapes the image to a shape it cannot take, at run time
        bad_shape = helper.make_tensor("bad", TensorProto.INT64, [2], [7, 5])
        reshape = helper.make_node("Reshape", ["image", "shape"], ["probs"])
        data = _model([*_dynamic_zeros("bad", "shape"), reshape], [bad_shape])
    elif case == "memory_hog":  # a classifier that also fills 3 GiB when run: RLIMIT_AS (1 GiB) refuses it
        hog = [helper.make_node("ConstantOfShape", ["huge"], ["big"]),
               helper.make_node("ReduceSum", ["big"], ["bias"], keepdims=0)]  # fmt: skip
        data = _classifier(hog, [helper.make_tensor("huge", TensorProto.INT64, [1], [3 << 28])])
    elif case == "too_large":
        client.app.state.settings.max_model_bytes = 1000  # under the Content-Length check: refused while streaming
        data = b"\0" * 50_000
    response = _upload(client, it, data)
    assert response.status_code == 422, response.text
    assert (response.json()["code"], response.json()["reason"]) == ("invalid_upload", reason)
    assert not any(text in response.text for text in LIBRARY_TEXT), response.text
    uploads = client.app.state.settings.data_dir / "uploads"
    assert not uploads.exists() or not list(uploads.iterdir()), "a refused upload left its temporary file"


def test_an_oversized_content_length_is_refused_before_the_body_is_read(app_client) -> None:
    client, it = app_client
    limit = client.app.state.settings.max_model_bytes
    headers = {**it, "Content-Type": "multipart/form-data; boundary=x", "Content-Length": str(2 * limit)}
    response = client.post("/models", content=b"--x--\r\n", headers=headers)
    assert response.status_code == 422 and response.json()["reason"] == "too_large", response.text


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_database_and_model_store_are_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        settings = ControlPlaneSettings(data_dir=tmp_path / "data", bootstrap_token=BOOT, monitor_sites=False)
        app = create_app(settings)
        with TestClient(app) as client:
            good = (BUNDLED_MANIFEST.parent / "part-inspector.onnx").read_bytes()
            ok(_upload(client, bearer(BOOT), good), 201)
            everything = [settings.data_dir, *settings.data_dir.rglob("*")]
            modes = {str(p.relative_to(tmp_path)): oct(_mode(p)) for p in everything}
            assert modes == {str(p.relative_to(tmp_path)): "0o700" if p.is_dir() else "0o600" for p in everything}
            names = {p.name for p in everything}
            assert {"lineside.db", "lineside.db-wal", "lineside.db-shm", "models", "uploads"} <= names
            assert any(name.endswith(".onnx") for name in names)
        app.state.engine.dispose()
    finally:
        os.umask(old)


# --- Memory: a real server process, two 100 MB uploads --------------------------------------------------------


def _classifier(extra: list[onnx.NodeProto], inits: list[TensorProto]) -> bytes:
    """A valid classifier (pool, 6 scores, softmax) whose pooled features get ``bias``, computed by ``extra``."""
    x, y = _io()
    w = helper.make_tensor("w", TensorProto.FLOAT, [3, 6], [1.0] * 18)
    nodes = [*extra,
             helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"]),
             helper.make_node("Add", ["flat", "bias"], ["flat2"]),
             helper.make_node("MatMul", ["flat2", "w"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probs"], axis=1)]  # fmt: skip
    graph = helper.make_graph(nodes, "classifier", [x], [y], [*inits, w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _big_model(megabytes: int) -> bytes:
    """A valid classifier whose one weight makes the file ``megabytes`` MB."""
    pad = helper.make_tensor("pad", TensorProto.FLOAT, [megabytes * 262_144], vals=b"\0" * (megabytes << 20), raw=True)
    return _classifier([helper.make_node("ReduceSum", ["pad"], ["bias"], keepdims=0)], [pad])


def _peak_rss(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) * 1024  # type: ignore[union-attr]


def test_two_100mb_uploads_do_not_grow_the_server(tmp_path: Path) -> None:
    """Peak RSS of a real server grows by far less than one upload while two 100 MB models are stored."""
    port = free_port()
    env = {**os.environ, "LINESIDE_DATA_DIR": str(tmp_path / "data"), "LINESIDE_BOOTSTRAP_TOKEN": BOOT,
           "LINESIDE_MONITOR_SITES": "0"}  # fmt: skip
    lineside = str(Path(sys.executable).parent / "lineside")
    server = subprocess.Popen([lineside, "control-plane", "--port", str(port)], env=env,
                              cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            for _ in range(300):
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            client.get("/models", headers=bearer(BOOT))  # routes warmed up before the baseline
            before = _peak_rss(server.pid)
            for version in ("9.1.0", "9.2.0"):
                data = _big_model(100)
                manifest = json.loads(_manifest(data)) | {"version": version}
                response = client.post("/models", files={"file": ("m.onnx", data)},
                                       data={"manifest": json.dumps(manifest)}, headers=bearer(BOOT))  # fmt: skip
                assert response.status_code == 201, response.text
                del data
            growth = _peak_rss(server.pid) - before
        print(json.dumps({"upload_mb": 100, "uploads": 2, "peak_rss_growth_mb": round(growth / 2**20, 1)}))
        assert growth < 0.25 * (100 << 20), f"the server grew by {growth / 2**20:.0f} MB for two 100 MB uploads"
    finally:
        server.terminate()
        server.wait(timeout=30)
