"""The run manifest: a content digest of every file robustax writes into a run directory.

``manifest.json`` (at the run directory's root) maps each file's path, relative to the root
and written with ``/``, to the sha256 of its bytes and their count::

    {"format": "robustax-manifest/1", "algorithm": "sha256",
     "files": {"cells/<id>.json": {"sha256": "<64 hex>", "bytes": 1234}, ...}}

Every artifact (checkpoints, cell records, masks, records.csv, plan.json, config.json,
environment.json, tables, plots) is written through :meth:`Manifest.write`: the entry is
recorded *before* the file is renamed into place, so a file on disk that the manifest does not
list, or lists with another digest, was never written by robustax as it is (damaged, edited or
copied in); a listed file that is missing is a write that a crash cut short. Readers verify
with :meth:`Manifest.problem` and recompute (or stop with a one-line error) on any mismatch.

The manifest itself is rewritten atomically on every update; it is re-read first when another
writer (another :class:`Manifest` object on the same directory) changed it, so objects in one
process never overwrite each other's entries. Processes are kept apart by the run lock
(:func:`bench.store.records.run_lock`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

from bench.store.io import atomic_write_bytes

FILE_NAME = "manifest.json"
FORMAT = "robustax-manifest/1"


def sha256_bytes(data: bytes) -> str:
    """The hex sha256 of ``data`` (the digest every manifest entry and cell record holds)."""
    return hashlib.sha256(data).hexdigest()


class Manifest:
    """The digests of one run directory's files, backed by ``<root>/manifest.json``.

    ``state`` after loading: ``"ok"`` (read), ``"missing"`` (no manifest.json: a new run
    directory, or one written by robustax before manifests) or ``"corrupt"`` (unreadable;
    the caller decides, see :meth:`bench.store.records.RunDir.adopt`).
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self.path = self.root / FILE_NAME
        self.files: dict[str, dict] = {}
        self.state = "missing"
        self._stamp = None
        self._load()

    # -- reading ----------------------------------------------------------------------------
    def _file_stamp(self):
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _load(self) -> None:
        stamp = self._file_stamp()
        if stamp is None:
            self.files, self.state, self._stamp = {}, "missing", None
            return
        try:
            doc = json.loads(self.path.read_bytes().decode("utf-8"))
            files = doc["files"]
            if doc.get("format") != FORMAT or not isinstance(files, dict) or not all(
                    isinstance(v, dict) and isinstance(v.get("sha256"), str) for v in files.values()):
                raise ValueError("not a robustax manifest")
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            self.files, self.state, self._stamp = {}, "corrupt", stamp
            return
        self.files, self.state, self._stamp = files, "ok", stamp

    def _refresh(self) -> None:
        if self._file_stamp() != self._stamp:
            self._load()

    def rel(self, path: Path | str) -> str:
        """The manifest key of ``path`` (a path under the run directory, or already a key):
        relative to the run directory, ``/``-separated."""
        p = Path(path)
        try:
            return p.relative_to(self.root).as_posix()
        except ValueError:
            pass
        if p.is_absolute():  # raises ValueError for a path outside the run directory
            return p.resolve().relative_to(self.root.resolve()).as_posix()
        return p.as_posix()

    def get(self, path: Path | str) -> dict | None:
        """The entry ``{"sha256": ..., "bytes": n}`` of ``path``, or None if it is not listed."""
        self._refresh()
        return self.files.get(self.rel(path))

    def digest(self, path: Path | str) -> str | None:
        """The recorded sha256 of ``path``, or None if it is not listed."""
        entry = self.get(path)
        return None if entry is None else entry["sha256"]

    def problem(self, path: Path | str, data: bytes) -> str | None:
        """None if ``data`` (the bytes read from ``path``) is what the manifest lists, else
        a phrase saying what is wrong: ``"<path> is not listed in manifest.json"`` or
        ``"<path> differs from the digest recorded when it was written"``. Without a readable
        manifest (``state`` not ``"ok"``) nothing can be compared: None."""
        if self.state != "ok":
            self._refresh()
            if self.state != "ok":
                return None
        entry = self.get(path)
        if entry is None:
            return f"{path} is not listed in {self.path.name} (not written by this run directory)"
        if entry["sha256"] != sha256_bytes(data) or entry.get("bytes", len(data)) != len(data):
            return f"{path} differs from the digest recorded in {self.path.name} when it was written"
        return None

    def verify(self) -> list[str]:
        """Every listed file that is missing or does not match its digest, as one-line
        problems (an empty list when the run directory is intact). Unlisted files are not
        reported here (see :meth:`bench.store.records.RunDir.unlisted`)."""
        self._refresh()
        out = []
        for rel, entry in sorted(self.files.items()):
            p = self.root / rel
            try:
                data = p.read_bytes()
            except FileNotFoundError:
                out.append(f"{p} is listed in {self.path.name} but missing")
                continue
            if sha256_bytes(data) != entry["sha256"]:
                out.append(f"{p} differs from the digest recorded in {self.path.name}")
        return out

    # -- writing ----------------------------------------------------------------------------
    def record(self, entries: Mapping[str, bytes | None]) -> None:
        """Records (or, for ``None``, forgets) the digests of ``{path: bytes}`` and rewrites
        manifest.json atomically. Call it *before* writing the files themselves."""

        self._refresh()
        for path, data in entries.items():
            key = self.rel(path)
            if data is None:
                self.files.pop(key, None)
            else:
                self.files[key] = {"sha256": sha256_bytes(data), "bytes": len(data)}
        doc = {"format": FORMAT, "algorithm": "sha256",
               "files": dict(sorted(self.files.items()))}
        atomic_write_bytes(self.path, (json.dumps(doc, indent=1) + "\n").encode())
        self.state, self._stamp = "ok", self._file_stamp()

    def write(self, files: Mapping[Path, bytes]) -> None:
        """Records the digests of ``{path: bytes}``, then writes each file atomically, in
        order: the one way robustax puts an artifact into a run directory."""

        self.record(files)
        for path, data in files.items():
            atomic_write_bytes(Path(path), data)

    def remove(self, path: Path) -> None:
        """Deletes ``path`` and its entry."""
        self.record({path: None})
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
