"""The model that ships with Lineside and the part images it is trained and tested on.

``models/bundled`` holds the ONNX file, its manifest and its model card; ``models.synth`` renders
parts (also the simulated robots' camera). Training and evaluation live in ``training``; the manifest's
schema in ``contracts.manifest``.
"""

from pathlib import Path

BUNDLED_DIR = Path(__file__).parent / "bundled"
"""Where the model that ships with Lineside lives."""

BUNDLED_MANIFEST = BUNDLED_DIR / "part-inspector.manifest.json"
"""Manifest of the bundled quality-inspection model."""
