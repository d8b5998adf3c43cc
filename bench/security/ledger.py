"""The results ledger: an append-only, hash-chained record of a run directory's results.

``ledger.jsonl`` holds one canonical JSON object per line (sorted keys, no whitespace, no
floats: counts are integers, ε is its decimal string). Line ``i`` carries ``seq = i`` and
``prev``, the SHA-256 of line ``i - 1``'s bytes (of :data:`GENESIS` for the first line), so an
edited, deleted or reordered line breaks the chain at that entry. ``ledger.head.json`` holds
the head, ``{length, head}`` (the number of lines and the hash of the last), signed with
Ed25519 when the run has a signing key: a line appended or dropped at the end, or an edited
last line, no longer matches it. Appends hold a file lock, so concurrent runs into one
directory interleave whole entries.

Entries: ``run`` (one per invocation: config id, code version, time), ``checkpoint`` (file,
SHA-256 of its bytes as stored, canonical parameter digest) and ``cell`` (ids, ``examples``
and ``correct`` as integers, SHA-256 of the mask and of the record file). The latest entry
for a cell or checkpoint must match the files on disk.

What it proves and what it does not: see the README section "Artifact security".
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from filelock import FileLock, Timeout

from bench.errors import RobustaxError
from bench.security.crypto import (
    SecurityError,
    SigningKey,
    canonical_json,
    envelope_bytes,
    loads_canonical,
    parse_envelope,
    sha256_file,
    utc_now,
    verify_envelope,
    write_new,
)
from bench.store.io import atomic_write_bytes
from bench.store.ledger_view import HEAD, LEDGER

LOCK = ".ledger.lock"
GENESIS = hashlib.sha256(b"robustax ledger v1").hexdigest()
HEAD_TYPE = "robustax/ledger-head/v1"


def line_hash(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def eps_text(eps: float) -> str:
    """ε as it is hashed: the shortest decimal string that reads back to the same float."""
    return repr(float(eps))


def cell_entry(root: Path, record: dict) -> dict:
    """The ledger entry of a finished cell, from its record and its files on disk."""
    cid = record["cell_id"]
    return {"type": "cell", "cell_id": cid, "model": record["model"],
            "defense": record["defense"], "attack": record["attack"], "norm": record["norm"],
            "eps": eps_text(record["eps"]), "examples": int(record["examples"]),
            "correct": int(record["correct"]), "checkpoint": str(record.get("checkpoint", "")),
            "config_id": str(record.get("config_id", "")),
            "checkpoint_sha256": str(record.get("checkpoint_sha256", "")),
            "code_version": str(record.get("code_version", "")),
            "mask_sha256": sha256_file(root / "masks" / f"{cid}.npy"),
            "record_sha256": sha256_file(root / "cells" / f"{cid}.json")}


def checkpoint_entry(path: Path, parameters_sha256: str) -> dict:
    return {"type": "checkpoint", "file": path.name, "file_sha256": sha256_file(path),
            "parameters_sha256": parameters_sha256}


def _unsigned_head(statement: dict) -> dict:
    return {"statement": statement, "key_id": "", "signature": ""}


class Ledger:
    """The ledger of one run directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.path = self.root / LEDGER
        self.head_path = self.root / HEAD

    def exists(self) -> bool:
        return self.path.is_file()

    def lines(self) -> list[bytes]:
        if not self.path.is_file():
            return []
        data = self.path.read_bytes()
        if not data:
            return []
        parts = data.split(b"\n")
        if parts[-1] == b"":  # a torn last line (no newline) is kept: the chain check names it
            parts.pop()
        return parts

    def entries(self) -> list[dict]:
        return [json.loads(line) for line in self.lines()]

    def read_head(self) -> dict | None:
        if not self.head_path.is_file():
            return None
        return parse_envelope(self.head_path.read_bytes(), str(self.head_path))

    def latest(self) -> dict[tuple[str, str], tuple[int, dict]]:
        """(type, cell id or file name) -> (seq, entry) of the latest entry of each."""
        out = {}
        for e in self.entries():
            name = e.get("cell_id") if e.get("type") == "cell" else e.get("file")
            if name is not None:
                out[e["type"], name] = (e["seq"], e)
        return out

    def append(self, entries: list[dict], signer: SigningKey | None = None,
               timeout: float = 60.0) -> None:
        """Appends ``entries`` (chained) and rewrites the head, holding the ledger's lock.

        Refuses (before writing) when the ledger no longer matches its head, and when the head
        is signed but this append has no signing key (it would silently drop the signature)."""
        if not entries:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            with FileLock(str(self.root / LOCK), timeout=timeout):
                self._append_locked(entries, signer)
        except Timeout:
            raise RobustaxError(f"{self.root / LOCK} stayed locked for {timeout:g} s (another "
                                f"run is appending); retry when it has finished") from None

    def _append_locked(self, entries: list[dict], signer: SigningKey | None) -> None:
        lines = self.lines()
        self.check_appendable(signer, lines, chain=False)
        if lines:
            try:
                last = json.loads(lines[-1])
                seq, prev = last["seq"] + 1, line_hash(lines[-1])
            except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                raise RobustaxError(f"the last line of {self.path} is damaged (a write cut "
                                    f"short?); run `robustax verify {self.root}`") from None
        else:
            seq, prev = 0, GENESIS
        new = []
        for e in entries:
            line = canonical_json({**e, "seq": seq, "prev": prev})
            new.append(line)
            seq, prev = seq + 1, line_hash(line)
        with open(self.path, "ab") as f:
            f.write(b"".join(line + b"\n" for line in new))
            f.flush()
            os.fsync(f.fileno())
        statement = {"type": HEAD_TYPE, "length": seq, "head": prev, "updated": utc_now()}
        envelope = signer.sign(statement) if signer is not None else _unsigned_head(statement)
        write_new(self.head_path, envelope_bytes(envelope), overwrite=True)

    def check_appendable(self, signer: SigningKey | None, lines: list[bytes] | None = None,
                         chain: bool = True) -> None:
        """Refuses, writing nothing, to extend a ledger that robustax could not sign honestly:
        a damaged chain (``chain``: every line checked), lines after its head (added by hand,
        or by a run killed between its two writes), a head that does not match, a signed head
        and no ``signer``, or a head signed by another key than ``signer``. Each refusal is one
        line naming the entries that are intact and the command that recovers."""
        lines = self.lines() if lines is None else lines
        if not lines and not self.head_path.is_file():
            return  # a new ledger
        if chain:
            entries, problem = chain_problem(lines)
            if problem:
                raise SecurityError("chain", f"{self.path}: {problem}; "
                                             f"{self.repair_hint(len(entries), _signed(self))}")
        if not self.head_path.is_file():
            raise SecurityError("chain", f"{self.head_path} is missing, so nothing vouches for "
                                         f"the end of {self.path.name}; check it with `robustax "
                                         f"verify {self.root}`, then `robustax ledger repair "
                                         f"{self.root}` writes a head over its intact entries")
        head = self.read_head()
        n, h = head["statement"].get("length"), head["statement"].get("head")
        signed = bool(head["signature"])
        if not isinstance(n, int) or not isinstance(h, str) or n < 0:
            raise SecurityError("chain", f"{self.head_path} is not a ledger head; "
                                         f"{self.repair_hint(len(lines), signed)}")
        if n > len(lines) or (n and line_hash(lines[n - 1]) != h):
            what = (f"the head covers {n} entries, the file holds {len(lines)}" if n > len(lines)
                    else f"entry {n - 1} is not the one the head covers")
            intact = len(chain_problem(lines[:n])[0])
            raise SecurityError("chain", f"{self.path} does not match its head ({what}); "
                                         f"{self.repair_hint(intact, signed)}")
        if len(lines) > n:
            raise SecurityError("chain", f"{self.path} holds {len(lines) - n} entries after its "
                                         f"head (entries {n}–{len(lines) - 1}) that robustax did "
                                         f"not sign (added by hand, or a run killed while "
                                         f"appending); check them with `robustax verify "
                                         f"{self.root}`, then `robustax ledger repair "
                                         f"{self.root}` sets them aside (the {n} entries the "
                                         f"head covers are kept)")
        if not signed:
            return
        if signer is None:
            raise SecurityError("key", f"the ledger head of {self.root} is signed (key id "
                                       f"{head['key_id'][:12]}…); configure [security] "
                                       f"signing_key (or --signing-key) to append to it")
        if head["key_id"] != signer.key_id:
            raise SecurityError("key", f"the ledger head of {self.root} is signed by key id "
                                       f"{head['key_id'][:12]}…, not by this run's signing key "
                                       f"{signer.key_id[:12]}…; pass the key that signed it, "
                                       f"or another --out")
        verify_envelope(head, [signer.public], str(self.head_path))

    def repair_hint(self, intact: int, signed: bool = False) -> str:
        """The recovery of a damaged ledger: which entries are intact, and the command."""
        kept = ("no entry is intact" if intact == 0 else "entry 0 is intact" if intact == 1
                else f"entries 0–{intact - 1} are intact")
        key = " --signing-key KEY" if signed else ""
        return (f"{kept}: `robustax ledger repair {self.root}{key}` keeps them and sets the "
                f"file aside as {self.path.name}.corrupt, then rerun `robustax run CONFIG --out "
                f"{self.root}` to record the finished cells again")

    def repair(self, signer: SigningKey | None = None) -> str:
        """Keeps the longest prefix of the ledger that robustax can still vouch for (the
        entries its head covers, when they are intact; else the intact chain, under a new head
        signed by ``signer``, which must be the key of a signed head), sets the original file
        aside as ``ledger.jsonl.corrupt`` and returns what it did, in one line."""
        with FileLock(str(self.root / LOCK), timeout=60):
            lines = self.lines()
            keep, head = len(chain_problem(lines)[0]), None
            if self.head_path.is_file():
                try:
                    head = self.read_head()
                except SecurityError:
                    head = None  # unreadable: replaced below
            signed = bool(head and head["signature"])
            n = head["statement"].get("length") if head else None
            covered = (isinstance(n, int) and 0 <= n <= keep
                       and (n == 0 or line_hash(lines[n - 1]) == head["statement"].get("head")))
            if covered:
                keep = n
            if covered and keep == len(lines):
                return f"{self.path} matches its head ({keep} entries): nothing to repair"
            if not covered and signed:
                if signer is None:
                    raise SecurityError("key", f"the head of {self.root} was signed (key id "
                                               f"{head['key_id'][:12]}…) and must be signed "
                                               f"again over the intact entries; pass "
                                               f"--signing-key with that key")
                if signer.key_id != head["key_id"]:
                    raise SecurityError("key", f"the head of {self.root} was signed by key id "
                                               f"{head['key_id'][:12]}…, not by the given key "
                                               f"{signer.key_id[:12]}…; pass the key that "
                                               f"signed it")
            aside = self.path.with_name(self.path.name + ".corrupt")
            i = 1
            while aside.exists():
                aside = self.path.with_name(f"{self.path.name}.corrupt.{i}")
                i += 1
            atomic_write_bytes(aside, self.path.read_bytes() if self.path.is_file() else b"",
                               overwrite=False)
            atomic_write_bytes(self.path, b"".join(line + b"\n" for line in lines[:keep]))
            if not covered:
                statement = {"type": HEAD_TYPE, "length": keep,
                             "head": line_hash(lines[keep - 1]) if keep else GENESIS,
                             "updated": utc_now()}
                env = signer.sign(statement) if signer is not None else _unsigned_head(statement)
                write_new(self.head_path, envelope_bytes(env), overwrite=True)
        why = "the entries its head covers" if covered else (
            "its intact entries, under a new " + ("signed " if signer else "") + "head")
        return (f"kept {keep} of the {len(lines)} entries of {self.path} ({why}); the "
                f"original is kept as {aside.name}; rerun `robustax run CONFIG --out "
                f"{self.root}` to record the finished cells again (cells that differ from the "
                f"kept entries are recomputed)")

    def add_cells(self, cell_ids, signer: SigningKey | None = None) -> int:
        """Appends an entry for each finished cell (record and mask on disk) that is not in the
        ledger as it is now (new cells, or cells recomputed since); returns how many."""
        latest = self.latest()
        todo = []
        for cid in cell_ids:
            record_path = self.root / "cells" / f"{cid}.json"
            if not (record_path.is_file() and (self.root / "masks" / f"{cid}.npy").is_file()):
                continue
            entry = cell_entry(self.root, json.loads(record_path.read_text()))
            have = latest.get(("cell", cid))
            if have is None or _body(have[1]) != entry:
                todo.append(entry)
        self.append(todo, signer)
        return len(todo)

    def add_checkpoint(self, path: Path, parameters_sha256: str,
                       signer: SigningKey | None = None) -> bool:
        """Appends a checkpoint entry unless the ledger already has this file as it is."""
        entry = checkpoint_entry(path, parameters_sha256)
        have = self.latest().get(("checkpoint", path.name))
        if have is not None and _body(have[1]) == entry:
            return False
        self.append([entry], signer)
        return True


def _body(entry: dict) -> dict:
    return {k: v for k, v in entry.items() if k not in ("seq", "prev")}


def chain_problem(lines: list[bytes]) -> tuple[list[dict], str | None]:
    """(the entries of the intact prefix, the problem of the first bad line or None): every
    line canonical JSON, ``seq`` equal to its position, ``prev`` the previous line's hash."""
    entries, prev = [], GENESIS
    for i, line in enumerate(lines):
        e = loads_canonical(line)
        if e is None:
            cut = " or cut short" if i == len(lines) - 1 else ""
            return entries, (f"ledger entry {i} (line {i + 1}) is not canonical JSON: it was "
                             f"edited{cut}")
        if e.get("seq") != i:
            return entries, (f"ledger entry {i} (line {i + 1}) holds seq {e.get('seq')!r}: "
                             f"entries were deleted, inserted or reordered at entry {i}")
        if e.get("prev") != prev:
            if i == 0:
                return entries, ("ledger entry 0 does not start the chain: it was edited or "
                                 "entries before it deleted")
            return entries[:-1], (f"ledger entry {i - 1} (line {i}) was edited: entry {i} "
                                  f"records another hash for it")
        entries.append(e)
        prev = line_hash(line)
    return entries, None


def verify_chain(ledger: Ledger) -> list[dict]:
    """The entries, after checking every line (:func:`chain_problem`). Raises the ``chain``
    stage naming the first bad entry, the intact ones and the recovery."""
    entries, problem = chain_problem(ledger.lines())
    if problem:
        raise SecurityError("chain", f"{problem}; {ledger.repair_hint(len(entries), _signed(ledger))}")
    return entries


def _signed(ledger: Ledger) -> bool:
    try:
        return bool(ledger.head_path.is_file() and ledger.read_head()["signature"])
    except SecurityError:
        return False


def verify_head(ledger: Ledger, trusted: list | None) -> str:
    """Checks the head against the ledger (and its signature when ``trusted`` keys are given).
    Returns a line describing the head's signature status."""
    lines = ledger.lines()
    if not ledger.head_path.is_file():
        raise SecurityError("head", f"{ledger.head_path} is missing: the ledger's end cannot be "
                                    f"checked; `robustax ledger repair {ledger.root}` writes a "
                                    f"head over its intact entries")
    env = ledger.read_head()
    st = env["statement"]
    if env["signature"] or env["key_id"]:
        if trusted:
            verify_envelope(env, trusted, str(ledger.head_path))
            status = f"head: signed by trusted key {env['key_id'][:12]}…, signature verified"
        else:
            status = (f"head: signed by key id {env['key_id'][:12]}…, signature NOT checked "
                      f"(pass --trust PUB to check it)")
    else:
        if trusted:
            raise SecurityError("signature", f"{ledger.head_path} is unsigned, but --trust was "
                                             f"given: the run was not signed, or its head was "
                                             f"replaced")
        status = ("head: unsigned (digests and chain checked; anyone who can write the run "
                  "directory could rewrite both)")
    if st.get("type") != HEAD_TYPE or not isinstance(st.get("length"), int) or \
            not isinstance(st.get("head"), str):
        raise SecurityError("head", f"{ledger.head_path} is not a ledger head")
    n, signed = st["length"], bool(env["signature"])
    if len(lines) > n:
        raise SecurityError("chain", f"ledger entry {n} (line {n + 1}) was appended after the "
                                     f"head (which covers {n} entries); `robustax ledger repair "
                                     f"{ledger.root}` sets entries {n}–{len(lines) - 1} aside")
    if len(lines) < n:
        raise SecurityError("chain", f"ledger entry {len(lines)} is missing: the head covers {n} "
                                     f"entries, the ledger holds {len(lines)} (deleted from its "
                                     f"end); {ledger.repair_hint(len(lines), signed)}")
    if n and line_hash(lines[n - 1]) != st["head"]:
        raise SecurityError("chain", f"ledger entry {n - 1} (line {n}) was edited: the head "
                                     f"records another hash for it; "
                                     f"{ledger.repair_hint(n - 1, signed)}")
    return status
