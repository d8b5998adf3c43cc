"""The one writer of the run directory, and the names files get in it.

Every artifact robustax writes (checkpoints, cells, masks, records, tables, plots, keys,
ledger) goes through :func:`atomic_write_bytes`; every label that becomes part of a file name
goes through :func:`slug`. Imports nothing of robustax.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def atomic_write_bytes(path: Path, data: bytes, *, mode: int | None = None,
                       overwrite: bool = True) -> None:
    """The one writer of every artifact (checkpoints, cells, masks, records, tables, plots):
    readers see the old file or the new, never half of one, and the new one survives a crash
    (file and directory entry are fsync'd). An OSError names ``path`` (a full disk says
    so on ``write``, with no file name of its own). ``mode``: the new file's permissions (keys:
    0600, set before a byte is written); ``overwrite=False`` raises ``FileExistsError`` instead
    of replacing an existing ``path`` (which is then left untouched)."""
    try:
        _atomic_write(path, data, mode, overwrite)
    except OSError as e:
        if e.filename is None or str(e.filename).endswith(".tmp"):
            raise OSError(e.errno, e.strerror or str(e), str(path)) from None
        raise


def _atomic_write(path: Path, data: bytes, mode: int | None, overwrite: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # atomic, and fails if path exists
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def mask_bytes(mask: np.ndarray) -> bytes:
    """The .npy bytes of a per-example mask as stored in masks/ (bool, no pickle)."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(mask, dtype=bool), allow_pickle=False)
    return buf.getvalue()


def json_bytes(obj: Any) -> bytes:
    """The bytes robustax writes for a JSON artifact (sorted keys, indented, newline)."""
    return (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode()



_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,39}")


def slug(label: str, n: int = 40) -> str:
    """The file-name form of a label: the label itself when it is already safe (ASCII
    letters, digits, ``-`` and ``_``, not starting with ``-``/``_``, at most 40 characters),
    else its safe characters (at most 24) plus ``~`` and 8 hex digits of its sha256. Never a
    path (no ``/``, ``..``, leading dot, control or non-ASCII characters), and one-to-one:
    two labels never share a file name (``~`` marks the hashed form, which a safe label cannot
    contain). The label itself stays in the records."""
    if _SAFE.fullmatch(label) and len(label) <= n:
        return label
    safe = re.sub(r"[^A-Za-z0-9_-]+", "_", label).strip("_-")[:min(n, 24)].strip("_-")
    return f"{safe or 'x'}~{hashlib.sha256(label.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"


def move_aside(path: Path) -> Path:
    """Renames a damaged file to ``<name>.corrupt`` (atomically; kept for a look, never read
    again) and returns the new path."""
    aside = Path(path).with_name(Path(path).name + ".corrupt")
    os.replace(path, aside)
    return aside
