"""Train the bundled part-inspection CNN on generated parts and export it to ONNX.

Needs the ``train`` extra (PyTorch, CPU build; ``make train`` installs it); nothing
at runtime does.

    python -m training.train --help
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from models import BUNDLED_MANIFEST


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.train", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--train-size", type=int, default=16000, help="generated training frames")
    parser.add_argument("--val-size", type=int, default=2000, help="generated validation frames")
    parser.add_argument("--epochs", type=int, default=22, help="passes over the training set")
    parser.add_argument("--batch", type=int, default=64, help="batch size")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (one-cycle)")
    parser.add_argument("--threads", type=int, default=2, help="PyTorch CPU threads")
    parser.add_argument("--seed", type=int, default=0, help="seed for weights and batch order")
    parser.add_argument("--version", default="1.0.0", help="version written to the manifest")
    parser.add_argument("--out-dir", type=Path, default=BUNDLED_MANIFEST.parent, help="where to write the model")
    parser.add_argument("--init", type=Path, help="start from these PyTorch weights (fine-tuning)")
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache/datasets"), help="rendered data cache")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        from training._training import train
    except ImportError as e:
        sys.exit(f"training needs PyTorch: pip install -e '.[train]' (or run make train): {e}")
    train(args)


if __name__ == "__main__":
    main()
