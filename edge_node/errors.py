"""Errors raised by the edge node.

Hierarchy::

    EdgeNodeError                 anything the edge node refuses or cannot do
    ├── FrameError                one frame cannot be inspected; carries a wire ``code``
    │   ├── BadImage              not decodable as the image it claims to be
    │   ├── TooLarge              over the byte or pixel limits
    │   └── UnsupportedFormat     neither JPEG nor PNG
    ├── ModelError                the model cannot be loaded or run
    │   ├── ModelIntegrityError   the file does not match its manifest (hash, input)
    │   └── ProviderUnavailable   a requested execution provider is not installed
    ├── ClusterUnavailable        no Ray connection (not started yet, or shut down)
    └── SliceDeployFailed         Serve gave up deploying a slice (its message says why)

A ``FrameError`` is the robot's problem and is answered on the errors topic;
a ``ModelError`` is the operator's problem and stops the replica from starting.
"""

from __future__ import annotations

from contracts.wire import ErrorCode


class EdgeNodeError(Exception):
    """Base class of every error the edge node raises on purpose."""


class FrameError(EdgeNodeError):
    """A frame that cannot be inspected. ``code`` is the stable wire code."""

    code: ErrorCode = ErrorCode.BAD_IMAGE

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class BadImage(FrameError):
    code = ErrorCode.BAD_IMAGE


class TooLarge(FrameError):
    code = ErrorCode.TOO_LARGE


class UnsupportedFormat(FrameError):
    code = ErrorCode.UNSUPPORTED_FORMAT


class ModelError(EdgeNodeError):
    """The model cannot be loaded or run on this node."""


class ModelIntegrityError(ModelError):
    """The model file or its manifest is inconsistent; re-download or re-register it."""


class ProviderUnavailable(ModelError):
    """A configured execution provider is not available in this onnxruntime build."""


class ClusterUnavailable(EdgeNodeError):
    """Ray is not connected: ``cluster.start`` was not called, or ``cluster.stop`` already ran."""


class SliceDeployFailed(EdgeNodeError):
    """Serve reports DEPLOY_FAILED for a slice (e.g. its replicas fail to start)."""
