"""Write a file under a temporary name in its folder, then rename it into place, so a
reader never sees a partial output: it finds the previous file, or none, or the whole
new one. Standard library only (the web process imports it without PyTorch)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def _fsync(path: str | os.PathLike, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """Call ``write(tmp_path)`` then rename ``tmp_path`` to ``path`` (mode 0640: outputs
    hold patient data, readable by their owner and its group only).

    The temporary file is hidden (``.<name>.<random><suffixes>``, so a glob such as
    ``*.nii.gz`` does not pick it up) and keeps ``path``'s suffixes (writers such as
    nibabel choose the format from them). It is flushed to disk before the rename, and
    the rename itself after, so a power cut leaves the old file or the new one. If
    ``write`` (or anything before the rename) raises, the temporary file is removed and
    ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o640)  # mkstemp makes 0600; the group (a backup user) may read
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    try:
        _fsync(path.parent, directory=True)
    except OSError:  # some file systems cannot sync a folder; the file itself is whole
        pass
    return path
