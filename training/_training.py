"""Training internals (PyTorch): the CNN, the training loop and ONNX export.

Imported only by ``training.train`` after its arguments are parsed, so that
``--help`` works without PyTorch installed.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from contracts.manifest import DecisionRule, InputSpec, ModelManifest, OutputSpec, Preprocess, sha256_of
from models import BUNDLED_MANIFEST, synth
from training import dataset
from training.calibration import calibrate_threshold

log = logging.getLogger("training.train")

INPUT_SIZE = 128
OPSET = 17
MEAN = (0.45, 0.45, 0.45)
STD = (0.25, 0.25, 0.25)


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class PartNet(nn.Module):
    """Compact CNN (~45 M multiply-adds at 128x128). Global max pooling keeps tiny defects visible."""

    def __init__(self, n_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _block(3, 16, 2),
            _block(16, 16, 1),
            _block(16, 32, 2),
            _block(32, 32, 1),
            _block(32, 64, 2),
            _block(64, 64, 1),
            _block(64, 128, 2),
            _block(128, 128, 1),
        )
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(256, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        pooled = torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1)
        return self.head(pooled)


class WithSoftmax(nn.Module):
    """What is exported: probabilities, so runtime code needs no knowledge of logits."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x), dim=1)


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


def _predict(net: nn.Module, images: np.ndarray, batch: int = 256) -> np.ndarray:
    net.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            out.append(torch.softmax(net(_to_tensor(images[i : i + batch])), 1).numpy())
    return np.concatenate(out)


def train(args: argparse.Namespace) -> None:
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    size = (INPUT_SIZE, INPUT_SIZE)
    started = time.monotonic()
    train_set = dataset.cached(dataset.TRAIN_SEED, args.train_size, size, args.cache_dir)
    val_set = dataset.cached(dataset.VALIDATION_SEED, args.val_size, size, args.cache_dir)
    log.info("data ready in %.0fs", time.monotonic() - started)

    net = PartNet(len(synth.CLASSES))
    if args.init:
        net.load_state_dict(torch.load(args.init))
        log.info("starting from weights %s", args.init)
    steps = args.epochs * (len(train_set.labels) // args.batch)
    optimizer = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=steps, pct_start=0.1)
    loss_fn = nn.CrossEntropyLoss()
    rng = np.random.default_rng(args.seed)
    for epoch in range(args.epochs):
        net.train()
        order = rng.permutation(len(train_set.labels))
        total, t0 = 0.0, time.monotonic()
        for b in range(len(order) // args.batch):
            idx = np.sort(order[b * args.batch : (b + 1) * args.batch])
            x = _to_tensor(train_set.images[idx])
            if rng.random() < 0.5:  # robots mount cameras either way round
                x = torch.flip(x, dims=[2, 3])
            y = torch.from_numpy(train_set.labels[idx])
            optimizer.zero_grad()
            loss = loss_fn(net(x), y)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach())
        probs = _predict(net, val_set.images)
        accuracy = float((probs.argmax(1) == val_set.labels).mean())
        threshold, recall, frr = calibrate_threshold(1.0 - probs[:, 0], val_set.labels == 0)
        log.info(
            "epoch %d/%d loss %.3f val accuracy %.3f fail_recall %.3f frr %.3f (t=%.2f) %.0fs",
            epoch + 1, args.epochs, total / max(b + 1, 1), accuracy, recall, frr, threshold, time.monotonic() - t0,
        )  # fmt: skip
    threshold, recall, frr = calibrate_threshold(1.0 - _predict(net, val_set.images)[:, 0], val_set.labels == 0)
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), args.cache_dir / "part-inspector-weights.pt")
    export(net, args.out_dir, threshold, args.version)
    log.info(
        "done in %.0fs; threshold %.2f (val fail_recall %.3f, frr %.3f)",
        time.monotonic() - started, threshold, recall, frr,
    )  # fmt: skip


def export(net: nn.Module, out_dir: Path, threshold: float, version: str) -> ModelManifest:
    """Export ``net`` to ONNX with a dynamic batch axis and write its manifest."""
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / "part-inspector.onnx"
    wrapped = WithSoftmax(net).eval()
    dummy = torch.zeros(2, 3, INPUT_SIZE, INPUT_SIZE)
    torch.onnx.export(
        wrapped,
        (dummy,),
        str(onnx_path),
        input_names=["image"],
        output_names=["probs"],
        dynamic_axes={"image": {0: "batch"}, "probs": {0: "batch"}},
        opset_version=OPSET,
        dynamo=False,
    )
    manifest = ModelManifest(
        schema_version=1,
        name="part-inspector",
        version=version,
        file=onnx_path.name,
        sha256=sha256_of(onnx_path),
        opset=OPSET,
        input=InputSpec(name="image", layout="NCHW", dtype="float32", color="RGB", height=INPUT_SIZE, width=INPUT_SIZE),
        preprocess=Preprocess(resize="bilinear", scale=1 / 255, mean=MEAN, std=STD),
        output=OutputSpec(name="probs", kind="probabilities"),
        labels=synth.CLASSES,
        decision=DecisionRule(fail_classes=synth.CLASSES[1:], threshold=threshold),
    )
    manifest_path = out_dir / BUNDLED_MANIFEST.name
    manifest_path.write_text(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n")
    log.info("wrote %s (%d bytes) and %s", onnx_path, onnx_path.stat().st_size, manifest_path)
    return manifest
