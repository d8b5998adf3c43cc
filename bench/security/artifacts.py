"""How a sweep protects its artifacts (``[security]``) and how a run directory is verified.

:class:`Artifacts` holds the keys of a sweep: checkpoints it writes are signed and/or
encrypted, checkpoints it reads must verify against the trusted keys, and the results
ledger's head is signed. :func:`verify_run` is ``robustax verify RUN_DIR``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bench.security.crypto import (
    EncryptionKey,
    SecurityError,
    SigningKey,
    checkpoint_statement,
    encrypt_bytes,
    envelope_bytes,
    load_public_key,
    parse_envelope,
    plaintext_of,
    sha256_file,
    sha256_hex,
    signature_path,
    verify_checkpoint,
    verify_envelope,
)
from bench.security.ledger import HEAD, LEDGER, Ledger, verify_chain, verify_head
from bench.store.manifest import Manifest
from defenses.checkpoint import checkpoint_parameter_digest

ENC = ".enc"


def load_encryption_key(spec: str) -> EncryptionKey:
    """``env:VAR``, ``passphrase`` (ROBUSTAX_PASSPHRASE, or asked in a terminal) or a path."""
    if spec.startswith("env:"):
        return EncryptionKey.from_env(spec[4:])
    if spec == "passphrase":
        return EncryptionKey.from_passphrase()
    return EncryptionKey.from_file(Path(spec).expanduser())


def load_signing_key(spec: str) -> SigningKey:
    """``env:VAR`` (the PEM text) or a path to a ``signing.key``."""
    if spec.startswith("env:"):
        return SigningKey.from_env(spec[4:])
    return SigningKey.from_file(Path(spec).expanduser())


@dataclass
class Artifacts:
    """The keys of a sweep; with none, checkpoints are plain, unsigned and trusted as read."""

    signer: SigningKey | None = None
    key: EncryptionKey | None = None
    trusted: list = field(default_factory=list)

    @classmethod
    def from_config(cls, sec) -> Artifacts:
        """From a :class:`bench.sweep.config.SecurityConfig`; every key is loaded now, so a bad key
        stops the run before anything is computed."""
        signer = load_signing_key(sec.signing_key) if sec.signing_key else None
        key = load_encryption_key(sec.encryption_key) if sec.encryption_key else None
        trusted = [load_public_key(Path(p).expanduser()) for p in sec.trust]
        if signer is not None and not trusted:
            trusted = [signer.public]
        return cls(signer, key, trusted)

    def find(self, checkpoints: Path, file_name: str) -> Path | None:
        """The stored checkpoint: plain, or encrypted (``<name>.enc``); None if neither."""
        for p in (checkpoints / file_name, checkpoints / (file_name + ENC)):
            if p.is_file():
                return p
        return None

    def save_checkpoint(self, run, file_name: str, plaintext: bytes, *, ids: dict,
                        code_version: str, ledger: Ledger | None = None) -> str:
        """Writes a checkpoint into ``run`` (a :class:`bench.store.records.RunDir`, so the manifest
        lists it): encrypted when a key is set (plaintext never touches the disk then), its
        signature first when a signing key is set, then its ledger entry. Returns the sha256 of
        the stored bytes."""

        params = checkpoint_parameter_digest(plaintext)
        path = run.checkpoints / (file_name + ENC if self.key is not None else file_name)
        data = encrypt_bytes(plaintext, self.key, file_name) if self.key is not None else plaintext
        if self.signer is not None:  # the signature first: a crash leaves no unsigned checkpoint
            envelope = self.signer.sign(checkpoint_statement(
                path, data, params, encrypted=self.key is not None, ids=ids,
                code_version=code_version))
            run.store(signature_path(path), envelope_bytes(envelope))
        run.store(path, data)
        if ledger is not None:
            ledger.add_checkpoint(path, params, self.signer)
        return sha256_hex(data)

    def load_checkpoint(self, path: Path, data: bytes | None = None) -> bytes:
        """The safetensors bytes of a stored checkpoint (``data``: its bytes, if read
        already), in memory: verified against the trusted keys when there are any (an unsigned
        or altered checkpoint is refused), decrypted when encrypted."""
        data = path.read_bytes() if data is None else data
        if self.trusted:
            _, plain = verify_checkpoint(path, self.trusted, key=self.key, data=data)
        else:
            plain = plaintext_of(path, data, self.key)
        if plain is None:
            raise SecurityError("key", f"{path} is encrypted; set [security] encryption_key to "
                                       f"the key it was written with")
        return plain

    def check_trusted(self, path: Path) -> None:
        """Before a run writes anything: a stored checkpoint it may load carries a signature by
        a trusted key, when there are trusted keys (its bytes are checked against the
        signature when it is loaded)."""
        if not self.trusted:
            return
        sig = signature_path(path)
        if not sig.is_file():
            raise SecurityError("signature", f"{path} has no signature ({sig.name} is missing) "
                                             f"and the run trusts signed checkpoints only; sign "
                                             f"it with `robustax sign {path} --key KEY` or "
                                             f"delete it to retrain")
        verify_envelope(parse_envelope(sig.read_bytes(), str(sig)), self.trusted, str(sig))

    def parameters_digest(self, path: Path) -> str:
        """The canonical parameter digest of a stored checkpoint ("" when it is encrypted and
        there is no key to read it)."""

        plain = plaintext_of(path, path.read_bytes(), self.key)
        try:
            return "" if plain is None else checkpoint_parameter_digest(plain)
        except ValueError:
            return ""


def checkpoint_files(root: Path) -> list[Path]:
    d = root / "checkpoints"
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if p.is_file() and not p.name.startswith(".")
                  and (p.name.endswith(".safetensors") or p.name.endswith(".safetensors" + ENC)))


def verify_run(root: str | Path, trusted: list | None = None,
               key: EncryptionKey | None = None) -> list[str]:
    """Checks a run directory: the ledger's chain and head (and its signature when ``trusted``
    keys are given), then every cell, mask and checkpoint on disk against its latest ledger
    entry, then every checkpoint signature (against ``trusted``). Returns the report lines;
    the first failure raises a one-line :class:`SecurityError` naming its stage and entry."""
    root = Path(root)
    if not (root / "cells").is_dir():
        raise SecurityError("digest", f"{root} is not a run directory (no cells/); pass the "
                                      f"--out directory of a `robustax run`")
    ledger = Ledger(root)
    if not ledger.exists():
        raise SecurityError("chain", f"{root} has no {ledger.path.name}: it was made before the "
                                     f"ledger existed; rerun `robustax run CONFIG --out {root}` "
                                     f"(finished cells are kept) to record them")
    lines = []
    lines.extend(_manifest(root))
    entries = verify_chain(ledger)
    status = verify_head(ledger, trusted)
    lines.append(f"ledger: {len(entries)} entries, chain intact, head matches")
    lines.append(status)

    latest: dict = {}
    for e in entries:
        name = e.get("cell_id") if e.get("type") == "cell" else e.get("file")
        if e.get("type") in ("cell", "checkpoint"):
            latest[e["type"], name] = e
    n_cells = 0
    for p in sorted((root / "cells").glob("*.json")):
        cid = p.stem
        e = latest.get(("cell", cid))
        if e is None:
            raise SecurityError("digest", f"cell {cid} is not in the ledger (added to cells/ "
                                          f"outside a run)")
        mask = root / "masks" / f"{cid}.npy"
        if not mask.is_file() or sha256_file(mask) != e["mask_sha256"]:
            raise SecurityError("digest", f"masks/{cid}.npy differs from ledger entry {e['seq']} "
                                          f"(changed or missing)")
        if sha256_file(p) != e["record_sha256"]:
            raise SecurityError("digest", f"cells/{cid}.json differs from ledger entry "
                                          f"{e['seq']} (the record was edited)")
        n_cells += 1
    for (kind, name), e in latest.items():
        if kind == "cell" and not (root / "cells" / f"{name}.json").is_file():
            raise SecurityError("digest", f"cell {name} of ledger entry {e['seq']} is missing "
                                          f"from cells/ (deleted)")
    n_ckpt, n_signed = 0, 0
    for p in checkpoint_files(root):
        e = latest.get(("checkpoint", p.name))
        if e is None:
            raise SecurityError("digest", f"checkpoint {p.name} is not in the ledger")
        if sha256_file(p) != e["file_sha256"]:
            raise SecurityError("digest", f"checkpoints/{p.name} differs from ledger entry "
                                          f"{e['seq']} (the weights file changed)")
        n_ckpt += 1
        if signature_path(p).is_file() and trusted:
            verify_checkpoint(p, trusted, key=key)
            n_signed += 1
    lines.append(f"artifacts: {n_cells} cells (record + mask) and {n_ckpt} checkpoints match the "
                 f"ledger")
    unsigned_sigs = sum(signature_path(p).is_file() for p in checkpoint_files(root)) - n_signed
    if n_signed:
        lines.append(f"checkpoints: {n_signed} signatures verified against the trusted keys")
    if unsigned_sigs:
        lines.append(f"checkpoints: {unsigned_sigs} signatures NOT checked (pass --trust PUB)")
    no_sig = sum(not signature_path(p).is_file() for p in checkpoint_files(root))
    if no_sig:
        lines.append(f"checkpoints: {no_sig} without a signature of their own (covered by the "
                     f"ledger's file digests only)")
    return lines


def _manifest(root: Path) -> list[str]:
    """Every file the manifest lists must be there with its digest (``manifest`` stage);
    files it does not list are reported, and fail under cells/, masks/ and checkpoints/.
    The ledger files are not listed: the ledger is checked by its own chain and head."""

    m = Manifest(root)
    if m.state != "ok":
        raise SecurityError("manifest", f"{m.path} is {m.state}: the run predates manifests or "
                                        f"it was damaged; rerun `robustax run CONFIG --out "
                                        f"{root}` to rebuild it from the files that pass checks")
    skip = {LEDGER, HEAD}
    listed = {k: v for k, v in m.files.items() if k not in skip}
    for rel in sorted(listed):
        p = root / rel
        if not p.is_file():
            raise SecurityError("manifest", f"{rel} is listed in {m.path.name} but missing")
        if sha256_file(p) != listed[rel]["sha256"]:
            raise SecurityError("manifest", f"{rel} differs from its digest in {m.path.name} "
                                            f"(changed after it was written)")
    unlisted = sorted(
        p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
        and p.name not in (m.path.name, *skip) and not p.name.endswith(".corrupt")
        and p.relative_to(root).as_posix() not in m.files)
    for rel in unlisted:
        if rel.split("/")[0] in ("cells", "masks", "checkpoints"):
            raise SecurityError("manifest", f"{rel} is not listed in {m.path.name} (not written "
                                            f"by robustax as it is)")
    out = [f"manifest: {len(listed)} files match their digests"]
    if unlisted:
        shown = ", ".join(unlisted[:4]) + (", …" if len(unlisted) > 4 else "")
        out.append(f"manifest: {len(unlisted)} other files are not listed (not written by "
                   f"robustax; not checked): {shown}")
    return out


def describe_statement(statement: dict) -> str:
    ids = statement.get("ids", {})
    what = "/".join(str(ids[k]) for k in ("model", "defense", "data") if k in ids)
    return (f"{statement.get('file')}: {what or 'checkpoint'}, parameters "
            f"{statement.get('parameters_sha256', '')[:12]}…, code {statement.get('code_version')}"
            f", signed {statement.get('signed_at')}")


