"""Files only this node's user may read: 0600 files in 0700 folders, whatever the umask.

The agent keeps its node token, the slices' broker passwords (in the cached desired state) and
tenants' model files on the edge server's disk, where other users and services run too. A file
created with a mode and then ``chmod``-ed is readable in between, so files are created with their
mode (``os.open``), and ``fchmod`` covers an older file that kept a looser one. Writes go to a
``.part`` file that replaces the target, so a reader never sees half a file.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

FILE_MODE = 0o600
DIR_MODE = 0o700


def private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) as 0700, or tighten it to 0700 if it exists; returns it."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    try:
        os.chmod(path, DIR_MODE)  # mkdir's mode is masked by the umask, and an existing folder keeps its own
    except PermissionError:  # another user's folder (e.g. made by root): usable, but not ours to tighten
        log.warning("%s belongs to another user; its mode stays %o: make it 0700 and this user's", path,
                    stat.S_IMODE(path.stat().st_mode))  # fmt: skip
    return path


def write_private(path: Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` as a 0600 file, atomically (``path`` is replaced, never rewritten)."""
    partial = path.with_name(path.name + ".part")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)  # a .part left by an older version keeps its mode through O_CREAT
        with os.fdopen(fd, "wb") as out:
            fd = -1  # the file object owns it now
            out.write(data.encode() if isinstance(data, str) else data)
    finally:
        if fd != -1:
            os.close(fd)
    partial.replace(path)


def tighten(folder: Path) -> None:
    """Make what an older agent left under ``folder`` private too: folders 0700, files 0600."""
    private_dir(folder)
    for path in folder.rglob("*"):
        if path.is_symlink():
            continue  # chmod would follow it to whatever it points at
        os.chmod(path, DIR_MODE if path.is_dir() else FILE_MODE)
