"""The results ledger as the store reads it: the latest entry of each cell.

``ledger.jsonl`` (written and checked by :mod:`bench.security.ledger`: hash chain, signed
head) records every finished cell with the SHA-256 of its record and mask. A cell on disk
whose latest entry names other bytes was changed after the ledger recorded it, even when the
manifest was edited to match: :meth:`bench.store.records.RunDir.cell_problem` reports it, so
``run`` recomputes it and ``report`` refuses it. Lines that do not parse are skipped here; the
chain check names them (``robustax verify``, and ``robustax run`` before it appends).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from bench.errors import RobustaxError

LEDGER = "ledger.jsonl"
"""The ledger's file name in a run directory."""

HEAD = "ledger.head.json"
"""Its head (length and hash of the last line, signed when the run has a signing key)."""


class LedgerView:
    """The latest ledger entry of each cell of one run directory, re-read when the file
    changes (size, modification time or inode)."""

    def __init__(self, root: Path):
        self.path = Path(root) / LEDGER
        self._stamp: tuple | None = None
        self._cells: dict[str, dict] = {}

    def _refresh(self) -> None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._cells = None, {}
            return
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp == self._stamp:
            return
        cells = {}
        for line in self.path.read_bytes().split(b"\n"):
            try:
                e = json.loads(line)
            except (ValueError, UnicodeDecodeError):
                continue
            if isinstance(e, dict) and e.get("type") == "cell" and isinstance(
                    e.get("cell_id"), str):
                cells[e["cell_id"]] = e
        self._stamp, self._cells = stamp, cells

    def cell(self, cell_id: str) -> dict | None:
        """The latest entry of ``cell_id`` (None: not recorded, or no ledger)."""
        self._refresh()
        return self._cells.get(cell_id)


def read_head(root: Path) -> dict | None:
    """What ``ledger.head.json`` of a run directory states, as written: ``head`` (the hash of
    the ledger's last line), ``length`` (its number of lines), ``updated``, ``key_id`` (empty
    when unsigned) and ``signed``; None when the run has no head. Not checked here against the
    ledger or a key (``robustax verify`` does that); a file that is not a head is a one-line
    error."""
    path = Path(root) / HEAD
    if not path.is_file():
        return None
    try:
        envelope = json.loads(path.read_bytes().decode("utf-8"))
        statement = envelope["statement"]
        head, length = statement["head"], statement["length"]
        if not (isinstance(head, str) and re.fullmatch(r"[0-9a-f]{64}", head)
                and isinstance(length, int) and length >= 0):
            raise ValueError(head)
    except (ValueError, UnicodeDecodeError, KeyError, TypeError):
        raise RobustaxError(f"{path} is not a ledger head; run `robustax verify {root}` (and "
                            f"`robustax ledger repair {root}` if it fails)") from None
    key_id = envelope.get("key_id") or ""
    return {"head": head, "length": length, "updated": statement.get("updated"),
            "key_id": key_id if isinstance(key_id, str) else "",
            "signed": bool(envelope.get("signature"))}
