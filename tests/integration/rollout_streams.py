"""What the rollout tests share: a deliberately broken model, uploading it, and robots streaming frames."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import threading
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper

from contracts.wire import ErrorReply, Result
from models import BUNDLED_MANIFEST
from robots.sdk import FrameLost, RobotClient
from tests.integration.cp_fixtures import ControlPlane, ok


def fails_every_part() -> bytes:
    """A classifier-shaped ONNX graph whose six scores are always equal: P(any defect) = 5/6, so every part
    fails under the bundled manifest's rule (a deliberately broken model)."""
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 128, 128])
    y = helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 6])
    w = helper.make_tensor("w", TensorProto.FLOAT, [3, 6], np.zeros((3, 6), np.float32).ravel().tolist())
    nodes = [
        helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(nodes, "fails-every-part", [x], [y], [w])
    out = io.BytesIO()
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), out)
    return out.getvalue()


def upload(cp: ControlPlane, data: bytes, name: str, version: str) -> dict:
    manifest = json.loads(BUNDLED_MANIFEST.read_text())
    manifest.update(name=name, version=version, sha256=hashlib.sha256(data).hexdigest())
    files = {"file": (f"{name}.onnx", data)}
    return ok(cp.client.post("/models", files=files, data={"manifest": json.dumps(manifest)}, headers=cp.a.it), 201)


@dataclass
class Stream:
    """One robot sending frames one after another, each awaited (the SDK resends what gets no answer)."""

    client: RobotClient
    frame: bytes
    answers: list[Result | ErrorReply] = field(default_factory=list)
    lost: int = 0
    sent: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    pause_s: float = 0.1

    def run(self) -> None:
        while not self.stop.is_set():
            self.sent += 1
            try:
                self.answers.append(self.client.inspect(self.frame, timeout_s=10, retries=5))
            except FrameLost:
                self.lost += 1
            self.stop.wait(self.pause_s)

    def verdicts(self) -> list[Result]:
        """The answers that are verdicts, in the order the frames were sent."""
        return [a for a in self.answers if isinstance(a, Result)]

    def models(self) -> list[str]:
        """The model named by each verdict, in the order the frames were sent."""
        return [a.model for a in self.verdicts()]

    def runs(self) -> list[str]:
        """The models that answered, one entry per unbroken run of their verdicts."""
        return [model for model, _ in itertools.groupby(self.models())]
