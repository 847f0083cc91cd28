"""Receive a multipart model upload as a stream: the file part goes straight to a 0600 temporary file
in the data directory, hashed as it arrives and refused as soon as it passes the size cap.

Why not FastAPI's ``UploadFile``: Starlette parses the whole body before the route runs, with no cap
on file parts, spooling them into the system temp folder; the route then read the file whole into
memory (two 100 MB uploads grew the server by 200 MB). Here the route authenticates the caller and
takes a validation slot first, a ``Content-Length`` over the cap is refused before one byte is read,
and the server holds at most about one megabyte of an upload in memory at a time.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from control_plane.db import private_dir
from control_plane.errors import InvalidUpload

FORM_OVERHEAD_BYTES = 1 << 20
"""Room for the form's other fields (the manifest) and the multipart framing, beyond the file itself."""
MAX_FIELD_BYTES = 256 * 1024
MAX_PARTS = 8
FLUSH_BYTES = 1 << 20


@dataclass
class Upload:
    """A received upload: the file (the caller deletes or moves it), its hash and size, the other fields."""

    path: Path
    sha256: str = ""
    size: int = 0
    fields: dict[str, str] = field(default_factory=dict)


class _Receiver:
    """python-multipart callbacks: the file part's bytes are queued for ``flush``, other fields kept."""

    def __init__(self, file_field: str, max_file_bytes: int, out: Any) -> None:
        self.file_field, self.max_file_bytes, self.out = file_field, max_file_bytes, out
        self.hash = hashlib.sha256()
        self.size, self.parts, self.files = 0, 0, 0
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.fields: dict[str, str] = {}
        self._header, self._value, self._disposition = b"", b"", b""
        self._name: str | None = None
        self._is_file, self._data = False, bytearray()

    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise _form_error(f"more than {MAX_PARTS} form fields")
        self._disposition, self._name, self._is_file, self._data = b"", None, False, bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        if self._header.lower() == b"content-disposition":
            self._disposition = self._value
        self._header, self._value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        self._is_file = self._name == self.file_field
        if self._is_file:
            self.files += 1
            if self.files > 1:
                raise _form_error(f"more than one {self.file_field!r} part")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if not self._is_file:
            if len(self._data) + len(chunk) > MAX_FIELD_BYTES:
                raise _form_error(f"field {self._name!r} is over {MAX_FIELD_BYTES} bytes")
            self._data.extend(chunk)
            return
        self.size += len(chunk)
        if self.size > self.max_file_bytes:
            raise too_large(self.max_file_bytes)
        self.pending.append(chunk)
        self.pending_bytes += len(chunk)

    def on_part_end(self) -> None:
        if not self._is_file and self._name:
            self.fields[self._name] = self._data.decode("utf-8", "replace")

    def flush(self) -> None:
        """Hash and write the queued bytes (called in a worker thread: disk I/O stays off the event loop)."""
        for chunk in self.pending:
            self.hash.update(chunk)
            self.out.write(chunk)
        self.pending, self.pending_bytes = [], 0


def too_large(max_file_bytes: int) -> InvalidUpload:
    return InvalidUpload(f"model file is over the {max_file_bytes}-byte limit (LINESIDE_MAX_MODEL_BYTES)",
                         reason="too_large")  # fmt: skip


def _form_error(problem: str) -> InvalidUpload:
    return InvalidUpload(f"send multipart/form-data with the model as 'file' and its manifest as 'manifest': {problem}",
                         reason="form")  # fmt: skip


def _boundary(request: Request, max_file_bytes: int) -> bytes:
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > max_file_bytes + FORM_OVERHEAD_BYTES:
        raise too_large(max_file_bytes)
    kind, options = parse_options_header(request.headers.get("content-type", ""))
    if kind != b"multipart/form-data":
        raise _form_error(f"the body is {kind.decode('latin-1')[:60] or 'not a form'}")
    if not options.get(b"boundary"):
        raise _form_error("the Content-Type has no boundary")
    return options[b"boundary"]


async def receive(request: Request, folder: Path, *, max_file_bytes: int, file_field: str = "file") -> Upload:
    """Stream the body into a new 0600 file in ``folder`` (0700); the caller owns the file afterwards."""
    boundary = _boundary(request, max_file_bytes)
    fd, name = tempfile.mkstemp(dir=private_dir(folder), prefix="upload-", suffix=".part")
    upload = Upload(Path(name))
    try:
        with os.fdopen(fd, "wb") as out:
            receiver = _Receiver(file_field, max_file_bytes, out)
            parser = MultipartParser(boundary, {attr: getattr(receiver, attr) for attr in dir(receiver)
                                                if attr.startswith("on_")})  # type: ignore[arg-type]  # fmt: skip
            async for chunk in request.stream():
                parser.write(chunk)
                if receiver.pending_bytes >= FLUSH_BYTES:
                    await run_in_threadpool(receiver.flush)
            parser.finalize()
            await run_in_threadpool(receiver.flush)
        if receiver.files != 1:
            raise _form_error(f"no {file_field!r} part")
    except FormParserError as e:
        upload.path.unlink(missing_ok=True)
        raise _form_error("the multipart body is malformed") from e
    except BaseException:  # refused, malformed or the client went away: no file is left behind
        upload.path.unlink(missing_ok=True)
        raise
    upload.sha256, upload.size, upload.fields = receiver.hash.hexdigest(), receiver.size, receiver.fields
    return upload
