"""``robustax keys new | sign | verify | encrypt | decrypt``: artifact security commands.

Every failure is a one-line :class:`~bench.security.crypto.SecurityError` naming its stage (key,
header, tag, signature, digest, chain), printed by the CLI with exit status 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.errors import RobustaxError
from bench.security import crypto
from bench.security.artifacts import (
    describe_statement,
    load_encryption_key,
    load_signing_key,
    verify_run,
)
from bench.security.crypto import ENV_ENCRYPTION_KEY, EncryptionKey, SecurityError
from bench.security.ledger import Ledger
from bench.store.manifest import FILE_NAME, Manifest
from bench.store.provenance import code_version
from bench.store.records import run_lock

COMMANDS = ("keys", "sign", "verify", "encrypt", "decrypt", "ledger")


def add_parsers(sub) -> None:
    keys = sub.add_parser("keys", help="create a signing key pair and an encryption key")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    new = ksub.add_parser("new", help="write DIR/signing.key (0600), DIR/signing.pub and "
                                      "DIR/encryption.key (0600)")
    new.add_argument("dir")
    new.add_argument("--passphrase", action="store_true",
                     help="protect signing.key with a passphrase (ROBUSTAX_PASSPHRASE, or asked)")

    sign = sub.add_parser("sign", help="sign a checkpoint: writes PATH.sig")
    sign.add_argument("path")
    sign.add_argument("--key", help="signing.key (default: $ROBUSTAX_SIGNING_KEY)")
    sign.add_argument("--encryption-key", help="encryption key of an encrypted checkpoint "
                                               "(a file, env:VAR or passphrase)")

    verify = sub.add_parser("verify", help="verify a signed checkpoint, or a whole run directory "
                                           "(manifest, artifact digests, ledger chain and head)")
    verify.add_argument("path", help="a checkpoint (with PATH.sig) or a run directory")
    verify.add_argument("--trust", action="append", default=[], metavar="PUB",
                        help="a trusted public key (signing.pub); repeatable")
    verify.add_argument("--encryption-key", help="also decrypt (in memory) and check the "
                                                 "parameters of encrypted checkpoints")

    ledger = sub.add_parser("ledger", help="repair a run directory's results ledger")
    lsub = ledger.add_subparsers(dest="ledger_command", required=True)
    repair = lsub.add_parser("repair", help="keep the entries of ledger.jsonl that robustax can "
                                            "still vouch for, set the file aside as "
                                            "ledger.jsonl.corrupt (then rerun to record the "
                                            "finished cells again)")
    repair.add_argument("run_dir")
    repair.add_argument("--signing-key", metavar="KEY",
                        help="the key that signed the head (needed when the head must be "
                             "signed again: entries it covers were lost)")

    for name, what in (("encrypt", "encrypt a file (AES-256-GCM, chunked); writes PATH.enc"),
                       ("decrypt", "decrypt a file after authenticating every chunk")):
        p = sub.add_parser(name, help=what)
        p.add_argument("path")
        p.add_argument("--out", help="destination (default: PATH.enc / PATH without .enc); an "
                                     "existing file is never replaced unless --force")
        p.add_argument("--key", help="encryption key file, env:VAR (default: "
                                     "$ROBUSTAX_ENCRYPTION_KEY)")
        p.add_argument("--passphrase", action="store_true",
                       help="use a passphrase (ROBUSTAX_PASSPHRASE, or asked) instead of a key")
        p.add_argument("--force", action="store_true", help="replace an existing destination")
        if name == "encrypt":
            p.add_argument("--chunk-size", type=int, default=1 << 20,
                           help="plaintext bytes per AEAD chunk (default 1 MiB)")


def add_run_flags(run) -> None:
    """``robustax run`` flags that set (override) the config's ``[security]`` table."""
    run.add_argument("--signing-key", metavar="KEY",
                     help="sign checkpoints and the ledger head (signing.key or env:VAR)")
    run.add_argument("--encryption-key", metavar="KEY",
                     help="encrypt checkpoints (encryption.key, env:VAR or passphrase)")
    run.add_argument("--trust", action="append", metavar="PUB",
                     help="refuse checkpoints not signed by this key (repeatable)")


def apply_run_flags(cfg, args):
    """The config with ``[security]`` fields replaced by the ``run`` flags given."""
    import dataclasses

    sec = cfg.security
    changes = {k: v for k, v in (("signing_key", args.signing_key),
                                 ("encryption_key", args.encryption_key),
                                 ("trust", tuple(args.trust) if args.trust else None))
               if v is not None}
    if not changes:
        return cfg
    return dataclasses.replace(cfg, security=dataclasses.replace(sec, **changes))


def _encryption_key(spec: str | None, passphrase: bool = False):
    import os

    if passphrase:
        return EncryptionKey.from_passphrase()
    if spec:
        return load_encryption_key(spec)
    if os.environ.get(ENV_ENCRYPTION_KEY):
        return EncryptionKey.from_env()
    raise SecurityError("key", f"no encryption key: pass --key FILE (from `robustax keys new`), "
                               f"--passphrase, or set {ENV_ENCRYPTION_KEY}")


def _file(path: str, what: str = "file") -> Path:
    p = Path(path)
    if not p.is_file():
        raise RobustaxError(f"{what} {path} does not exist; pass an existing file")
    return p


def main(args: argparse.Namespace) -> None:
    if args.command == "keys":
        _keys_new(Path(args.dir), args.passphrase)
    elif args.command == "ledger":
        root = Path(args.run_dir)
        if not (root / "cells").is_dir() or not Ledger(root).path.is_file():
            raise RobustaxError(f"{root} is not a run directory with a ledger (no cells/ or "
                                f"ledger.jsonl); pass the --out directory of a `robustax run`")
        signer = load_signing_key(args.signing_key) if args.signing_key else None
        with run_lock(root, "ledger repair"):
            print(Ledger(root).repair(signer))
    elif args.command == "sign":
        path = _file(args.path, "checkpoint")
        signer = load_signing_key(args.key) if args.key else crypto.SigningKey.from_env()
        key = _encryption_key(args.encryption_key) if args.encryption_key else None

        env = crypto.sign_checkpoint(path, signer, key=key, ids=_run_ids(path),
                                     code_version=code_version())
        _record_in_manifest(crypto.signature_path(path))
        print(f"signed {describe_statement(env['statement'])}")
        print(f"wrote {crypto.signature_path(path)} (key id {signer.key_id[:12]}…)")
    elif args.command == "verify":
        trusted = [crypto.load_public_key(p) for p in args.trust]
        key = _encryption_key(args.encryption_key) if args.encryption_key else None
        path = Path(args.path)
        if path.is_dir():
            for line in verify_run(path, trusted, key):
                print(line)
            print(f"ok: {path} verified")
        else:
            _file(args.path, "checkpoint")
            if not trusted:
                raise crypto.SecurityError("key", "no trusted key: pass --trust PUB (the "
                                                  "signer's signing.pub); nothing else is trusted")
            statement, plain = crypto.verify_checkpoint(path, trusted, key=key)
            print(f"ok: {describe_statement(statement)}")
            if plain is None:
                print("parameters not checked: the file is encrypted (pass --encryption-key)")
    elif args.command == "encrypt":
        src = _file(args.path)
        dst = Path(args.out) if args.out else Path(f"{src}.enc")
        if not 1 <= args.chunk_size <= crypto.MAX_CHUNK:
            raise crypto.SecurityError("header", f"--chunk-size {args.chunk_size} must be in "
                                                 f"[1, {crypto.MAX_CHUNK}]")
        crypto.encrypt_file(src, dst, _encryption_key(args.key, args.passphrase),
                            chunk_size=args.chunk_size, overwrite=args.force)
        print(f"wrote {dst}")
    elif args.command == "decrypt":
        src = _file(args.path)
        if args.out:
            dst = Path(args.out)
        elif src.name.endswith(".enc"):
            dst = src.with_name(src.name[:-4])
        else:
            raise crypto.SecurityError("header", f"{src} does not end in .enc; pass --out")
        crypto.decrypt_file(src, dst, _encryption_key(args.key, args.passphrase),
                            overwrite=args.force)
        print(f"wrote {dst} (every chunk authenticated)")


def _record_in_manifest(path: Path) -> None:
    """A file added to a run directory's checkpoints/ goes into its manifest."""

    root = path.resolve().parent.parent
    if path.resolve().parent.name == "checkpoints" and (root / FILE_NAME).is_file():
        Manifest(root).record({path.resolve(): path.read_bytes()})


def _run_ids(path: Path) -> dict:
    """The config id of the run directory a checkpoint lies in, if it lies in one."""
    import json

    cfg = path.resolve().parent.parent / "config.json"
    if path.resolve().parent.name == "checkpoints" and cfg.is_file():
        try:
            return {"config_id": str(json.loads(cfg.read_text()).get("config_id", ""))}
        except (ValueError, UnicodeDecodeError):
            return {}
    return {}


def _keys_new(d: Path, passphrase: bool) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


    targets = [d / "signing.key", d / "signing.pub", d / "encryption.key"]
    for t in targets:
        if t.exists():
            raise crypto.SecurityError("key", f"{t} exists; keys are never overwritten, choose "
                                              f"another DIR")
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    if passphrase:
        pem = crypto.encrypt_bytes(pem, crypto.EncryptionKey.from_passphrase(what="signing.key"),
                                   "signing.key")
    pub = private.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    d.mkdir(parents=True, exist_ok=True)
    crypto.write_new(targets[0], pem, mode=0o600)
    crypto.write_new(targets[1], pub, mode=0o644)
    crypto.write_new(targets[2], crypto.EncryptionKey.generate().text().encode(), mode=0o600)
    signer = crypto.SigningKey(private)
    print(f"wrote {targets[0]} (0600{', passphrase-protected' if passphrase else ''}), "
          f"{targets[1]} and {targets[2]} (0600)")
    print(f"signing key id {signer.key_id}; give {targets[1]} to whoever verifies")
