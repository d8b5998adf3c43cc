"""Artifact security: keys, chunked AEAD encryption and Ed25519 signatures.

Every primitive comes from the ``cryptography`` package (AES-256-GCM, HKDF-SHA256,
Argon2id or scrypt, Ed25519); this module only fixes formats and checks.

**Encrypted files** (``*.enc``)::

    MAGIC (8 bytes) | header length (4 bytes, big-endian) | header (canonical JSON) | chunks

The header holds the format version, the AEAD, the file's name, the chunk size, a fresh
random salt and nonce, the key id and how the key was obtained (a key file, or a passphrase
through Argon2id/scrypt with its parameters). The per-file key is HKDF(master key, salt);
chunk ``i`` is sealed with nonce ``nonce XOR i`` and associated data ``header | i | final``,
so an edited header, a swapped, dropped or appended chunk, and truncation (the last chunk
left is not marked final) all fail authentication. The key id (HKDF of the master key) is
compared before any decryption, so a wrong key is reported as a wrong key. Decryption
happens in memory; nothing is written unless every chunk authenticated.

**Signatures** are Ed25519 over a canonical JSON *statement* (no floats), stored beside the
file as ``<file>.sig``; a verifier looks the signer up by key id among the public keys it
was given and trusts nothing else.

Every failure is a :class:`SecurityError` whose message starts with its stage: ``key``,
``header``, ``tag``, ``signature`` or ``digest``.
"""

from __future__ import annotations

import datetime
import getpass
import hashlib
import hmac
import json
import os
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from bench.errors import RobustaxError
from bench.store.io import atomic_write_bytes
from defenses.checkpoint import _metadata, checkpoint_parameter_digest

try:  # cryptography >= 44
    from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
except ImportError:  # pragma: no cover - older cryptography: scrypt only
    Argon2id = None

MAGIC = b"RBXAEAD\x01"
FORMAT = 1
AEAD_NAME = "AES-256-GCM"
TAG = 16
DEFAULT_CHUNK = 1 << 20          # 1 MiB plaintext per AEAD call (one call is limited to 2**31 - 1)
MAX_CHUNK = (1 << 31) - 1 - TAG
KEY_BYTES = 32
KEY_FILE_PREFIX = "robustax-encryption-key-v1 "
SIGNATURE_CONTEXT = b"robustax-signature-v1\n"
ENV_ENCRYPTION_KEY = "ROBUSTAX_ENCRYPTION_KEY"
ENV_SIGNING_KEY = "ROBUSTAX_SIGNING_KEY"
ENV_PASSPHRASE = "ROBUSTAX_PASSPHRASE"
# passphrase KDFs: defaults (OWASP's Argon2id m=64 MiB t=3 p=4 costs ~0.3 s here) and the most a
# header may ask for, so a forged header cannot make a reader spend unbounded memory or time
ARGON2_DEFAULT = {"name": "argon2id", "memory_kib": 65536, "iterations": 3, "lanes": 4}
SCRYPT_DEFAULT = {"name": "scrypt", "n": 1 << 17, "r": 8, "p": 1}
_ARGON2_MAX_KIB, _ARGON2_MAX_T, _SCRYPT_MAX_N = 1 << 21, 64, 1 << 21


class SecurityError(RobustaxError):
    """A key, header, tag, signature or digest check failed; ``stage`` says which."""

    def __init__(self, stage: str, message: str):
        super().__init__(f"{stage}: {message}")
        self.stage = stage


# ----------------------------------------------------------------------------- helpers

def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8; floats are refused (hashed data holds integers and
    strings only, so it never depends on float formatting)."""
    def check(o, where="$"):
        if isinstance(o, float):
            raise TypeError(f"{where} is a float ({o!r}); hashed and signed data holds integers "
                            f"and strings only")
        if isinstance(o, dict):
            for k, v in o.items():
                if not isinstance(k, str):
                    raise TypeError(f"{where} has a non-string key {k!r}")
                check(v, f"{where}.{k}")
        elif isinstance(o, (list, tuple)):
            for i, v in enumerate(o):
                check(v, f"{where}[{i}]")
    check(obj)
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def loads_canonical(data: bytes) -> dict | None:
    """The JSON object in ``data`` when ``data`` is exactly its :func:`canonical_json` form
    (so no byte can change unnoticed); None for anything else."""
    try:
        obj = json.loads(data)
        return obj if isinstance(obj, dict) and canonical_json(obj) == data else None
    except (ValueError, TypeError, UnicodeDecodeError):
        return None


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_new(path: str | Path, data: bytes, *, mode: int = 0o644, overwrite: bool = False) -> None:
    """Writes ``data`` to ``path`` in one step (the one atomic writer, with ``mode`` set before
    any byte is written), refusing an existing ``path`` unless ``overwrite``. A failure leaves
    no partial file and an existing destination untouched."""

    try:
        atomic_write_bytes(Path(path), data, mode=mode, overwrite=overwrite)
    except FileExistsError:
        raise RobustaxError(f"{path} exists; remove it or choose another destination (it was "
                            f"left untouched)") from None


def _read_secret_file(path: str | Path, what: str) -> bytes:
    """A key file's bytes, refused unless only its owner can read it (mode 0600 or 0400)."""
    path = Path(path).expanduser()
    try:
        st = path.stat()
    except OSError:
        raise SecurityError("key", f"{what} {path} does not exist; create one with `robustax "
                                   f"keys new DIR`") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecurityError("key", f"{what} {path} is readable by others (mode "
                                   f"{stat.S_IMODE(st.st_mode):04o}); run `chmod 600 {path}`")
    return path.read_bytes()


def _passphrase(passphrase: str | bytes | None, what: str) -> bytes:
    if passphrase is None:
        passphrase = os.environ.get(ENV_PASSPHRASE)
    if passphrase is None and sys.stdin.isatty():
        passphrase = getpass.getpass(f"passphrase for {what}: ")
    if not passphrase:
        raise SecurityError("key", f"{what} needs a passphrase; set {ENV_PASSPHRASE} (or run "
                                   f"in a terminal to be asked)")
    return passphrase.encode() if isinstance(passphrase, str) else passphrase


# ----------------------------------------------------------------------------- encryption keys

@dataclass(frozen=True)
class EncryptionKey:
    """A 32-byte secret (from a key file or an environment variable), or a passphrase that
    Argon2id/scrypt stretches with each file's salt. ``kdf``: the passphrase KDF parameters
    used when encrypting (defaults: Argon2id if available, else scrypt)."""

    secret: bytes | None = field(default=None, repr=False)
    passphrase: bytes | None = field(default=None, repr=False)
    kdf: dict | None = None
    source: str = "key"

    def __post_init__(self):
        if (self.secret is None) == (self.passphrase is None):
            raise ValueError("an EncryptionKey holds a secret or a passphrase, not both or neither")
        if self.secret is not None and len(self.secret) != KEY_BYTES:
            raise SecurityError("key", f"{self.source} holds {len(self.secret)} bytes, not "
                                       f"{KEY_BYTES}; create one with `robustax keys new DIR`")

    @classmethod
    def generate(cls) -> EncryptionKey:
        return cls(secret=os.urandom(KEY_BYTES), source="a new key")

    @classmethod
    def from_text(cls, text: str, source: str) -> EncryptionKey:
        import base64
        import binascii

        text = text.strip()
        if text.startswith(KEY_FILE_PREFIX):
            text = text[len(KEY_FILE_PREFIX):]
        try:
            secret = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise SecurityError("key", f"{source} is not a robustax encryption key (expected "
                                       f"'{KEY_FILE_PREFIX.strip()} <base64>')") from None
        return cls(secret=secret, source=source)

    @classmethod
    def from_file(cls, path: str | Path) -> EncryptionKey:
        data = _read_secret_file(path, "encryption key file")
        try:
            return cls.from_text(data.decode(), f"encryption key file {path}")
        except UnicodeDecodeError:
            raise SecurityError("key", f"{path} is not a robustax encryption key file") from None

    @classmethod
    def from_env(cls, var: str = ENV_ENCRYPTION_KEY) -> EncryptionKey:
        if not os.environ.get(var):
            raise SecurityError("key", f"environment variable {var} is not set; set it to the "
                                       f"contents of an encryption key file")
        return cls.from_text(os.environ[var], f"environment variable {var}")

    @classmethod
    def from_passphrase(cls, passphrase: str | bytes | None = None, kdf: dict | None = None,
                        what: str = "encryption") -> EncryptionKey:
        return cls(passphrase=_passphrase(passphrase, what), kdf=kdf, source="passphrase")

    def text(self) -> str:
        import base64

        return KEY_FILE_PREFIX + base64.b64encode(self.secret).decode() + "\n"

    def new_kdf(self) -> dict:
        if self.secret is not None:
            return {"name": "key"}
        if self.kdf is not None:
            return dict(self.kdf)
        return dict(ARGON2_DEFAULT if Argon2id is not None else SCRYPT_DEFAULT)

    def master(self, kdf: dict, salt: bytes) -> bytes:
        """The master key for a file: the secret itself, or the passphrase stretched with the
        file's salt by the KDF named in its header."""
        name = kdf.get("name")
        if self.secret is not None:
            if name != "key":
                raise SecurityError("key", f"the file was encrypted with a passphrase ({name}); "
                                           f"pass the passphrase, not a key file")
            return self.secret
        if name == "key":
            raise SecurityError("key", "the file was encrypted with a key file, not a passphrase; "
                                       "pass that key file")
        if name == "argon2id":
            if Argon2id is None:
                raise SecurityError("key", "the file needs Argon2id; upgrade `cryptography` "
                                           "(>= 44)")
            return Argon2id(salt=salt, length=KEY_BYTES, iterations=kdf["iterations"],
                            lanes=kdf["lanes"], memory_cost=kdf["memory_kib"]).derive(
                                self.passphrase)
        if name == "scrypt":
            return Scrypt(salt=salt, length=KEY_BYTES, n=kdf["n"], r=kdf["r"],
                          p=kdf["p"]).derive(self.passphrase)
        raise SecurityError("header", f"unknown key derivation {name!r}")


def _hkdf(master: bytes, salt: bytes | None, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(master)


def key_id(master: bytes) -> str:
    """A public name of a master key (HKDF output: reveals nothing about the key)."""
    return _hkdf(master, None, b"robustax key id v1", 16).hex()


# ----------------------------------------------------------------------------- AEAD files

def _aad(header: bytes, index: int, final: bool) -> bytes:
    return MAGIC + len(header).to_bytes(4, "big") + header + index.to_bytes(8, "big") + (
        b"\x01" if final else b"\x00")


def _nonce(base: bytes, index: int) -> bytes:
    return bytes(a ^ b for a, b in zip(base, index.to_bytes(12, "big")))


def is_encrypted(data: bytes) -> bool:
    return data[:len(MAGIC)] == MAGIC


def encrypt_bytes(plaintext: bytes, key: EncryptionKey, name: str, *,
                  chunk_size: int = DEFAULT_CHUNK) -> bytes:
    """The encrypted file (see the module docstring) of ``plaintext``, named ``name``."""
    if not 1 <= chunk_size <= MAX_CHUNK:
        raise ValueError(f"chunk_size = {chunk_size} must be in [1, {MAX_CHUNK}]")
    salt, nonce = os.urandom(32), os.urandom(12)
    kdf = key.new_kdf()
    master = key.master(kdf, salt)
    header = canonical_json({
        "format": FORMAT, "aead": AEAD_NAME, "name": name, "chunk_size": chunk_size,
        "salt": salt.hex(), "nonce": nonce.hex(), "key_id": key_id(master), "kdf": kdf})
    aead = AESGCM(_hkdf(master, salt, b"robustax aead file key v1", KEY_BYTES))
    pieces = [plaintext[i:i + chunk_size] for i in range(0, len(plaintext), chunk_size)] or [b""]
    out = [MAGIC, len(header).to_bytes(4, "big"), header]
    for i, piece in enumerate(pieces):
        final = i == len(pieces) - 1
        out.append(aead.encrypt(_nonce(nonce, i), piece, _aad(header, i, final)))
    return b"".join(out)


def read_header(data: bytes, where: str = "the file") -> tuple[dict, bytes, int]:
    """(header, its bytes, offset of the first chunk) of an encrypted file; a malformed or
    unsupported header raises the ``header`` stage."""
    if not is_encrypted(data):
        raise SecurityError("header", f"{where} is not a robustax encrypted file (bad magic)")
    if len(data) < len(MAGIC) + 4:
        raise SecurityError("header", f"{where} is truncated inside its header")
    n = int.from_bytes(data[len(MAGIC):len(MAGIC) + 4], "big")
    start = len(MAGIC) + 4
    raw = data[start:start + n]
    if n > 65536 or len(raw) != n:
        raise SecurityError("header", f"{where} has a damaged header length")
    header = loads_canonical(raw)
    if header is None:
        raise SecurityError("header", f"{where} has a damaged header (not canonical JSON)")
    if header.get("format") != FORMAT or header.get("aead") != AEAD_NAME:
        raise SecurityError("header", f"{where} has format {header.get('format')!r} / "
                                      f"{header.get('aead')!r}; this robustax reads format "
                                      f"{FORMAT} ({AEAD_NAME})")
    try:
        cs, kdf = header["chunk_size"], header["kdf"]
        salt, nonce = bytes.fromhex(header["salt"]), bytes.fromhex(header["nonce"])
        bytes.fromhex(header["key_id"])
        assert isinstance(header["name"], str) and isinstance(kdf, dict)
        assert type(cs) is int and 1 <= cs <= MAX_CHUNK and len(salt) == 32 and len(nonce) == 12
        if kdf["name"] == "argon2id":
            assert all(type(kdf[k]) is int and kdf[k] >= 1 for k in ("memory_kib", "iterations",
                                                                     "lanes"))
            assert kdf["memory_kib"] <= _ARGON2_MAX_KIB and kdf["iterations"] <= _ARGON2_MAX_T
        elif kdf["name"] == "scrypt":
            assert all(type(kdf[k]) is int and kdf[k] >= 1 for k in ("n", "r", "p"))
            assert kdf["n"] <= _SCRYPT_MAX_N and kdf["r"] * kdf["p"] <= 64
        else:
            assert kdf == {"name": "key"}
    except (KeyError, ValueError, TypeError, AssertionError):
        raise SecurityError("header", f"{where} has a damaged or unsupported header field") \
            from None
    return header, raw, start + n


def decrypt_bytes(data: bytes, key: EncryptionKey, *, name: str | None = None,
                  where: str = "the file") -> bytes:
    """The plaintext of an encrypted file, in memory, after every chunk authenticated.

    ``name``: the name the file must carry (a renamed or swapped file fails). Checks, in
    order: header (``header``), key id (``key``: before any decryption), every chunk's tag
    with its index and final flag (``tag``)."""
    header, raw, offset = read_header(data, where)
    salt, nonce = bytes.fromhex(header["salt"]), bytes.fromhex(header["nonce"])
    master = key.master(header["kdf"], salt)
    mine = key_id(master)
    if not hmac.compare_digest(mine, header["key_id"]):
        raise SecurityError("key", f"wrong key: {where} was encrypted with key id "
                                   f"{header['key_id'][:12]}…, the given key ({key.source}) "
                                   f"has {mine[:12]}…; pass the key it was encrypted with")
    if name is not None and header["name"] != name:
        raise SecurityError("header", f"{where} holds {header['name']!r}, not {name!r} (a "
                                      f"renamed or swapped file)")
    aead = AESGCM(_hkdf(master, salt, b"robustax aead file key v1", KEY_BYTES))
    body, step = memoryview(data)[offset:], header["chunk_size"] + TAG
    starts = list(range(0, len(body), step)) or [0]
    out = []
    for i, s in enumerate(starts):
        piece = bytes(body[s:s + step])
        final = i == len(starts) - 1
        try:
            if len(piece) < TAG:
                raise InvalidTag
            out.append(aead.decrypt(_nonce(nonce, i), piece, _aad(raw, i, final)))
        except InvalidTag:
            raise SecurityError("tag", f"chunk {i + 1} of {len(starts)} of {where} failed "
                                       f"authentication: the file was modified, truncated, "
                                       f"extended or its chunks reordered") from None
    return b"".join(out)


def encrypt_file(src: str | Path, dst: str | Path, key: EncryptionKey, *,
                 chunk_size: int = DEFAULT_CHUNK, overwrite: bool = False) -> None:
    src, dst = Path(src), Path(dst)
    name = src.name
    write_new(dst, encrypt_bytes(src.read_bytes(), key, name, chunk_size=chunk_size),
              overwrite=overwrite)


def decrypt_file(src: str | Path, dst: str | Path, key: EncryptionKey, *,
                 overwrite: bool = False) -> None:
    """Decrypts ``src`` in memory and writes ``dst`` (mode 0600) only once every chunk
    authenticated: a failure writes nothing and leaves an existing ``dst`` untouched."""
    plaintext = decrypt_bytes(Path(src).read_bytes(), key, where=str(src))
    write_new(dst, plaintext, mode=0o600, overwrite=overwrite)


# ----------------------------------------------------------------------------- signing keys

def public_key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return sha256_hex(b"robustax ed25519 key id v1\0" + raw)[:32]


@dataclass(frozen=True)
class SigningKey:
    """An Ed25519 private key and where it came from."""

    private: Ed25519PrivateKey = field(repr=False)
    source: str = "signing key"

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()

    @property
    def key_id(self) -> str:
        return public_key_id(self.public)

    @classmethod
    def from_pem(cls, data: bytes, source: str, passphrase: str | bytes | None = None
                 ) -> SigningKey:
        if is_encrypted(data):  # a passphrase-protected key file: our AEAD around the PEM
            data = decrypt_bytes(data, EncryptionKey.from_passphrase(passphrase, what=source),
                                 where=source)
        try:
            private = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            raise SecurityError("key", f"{source} is not a PEM private key") from None
        if not isinstance(private, Ed25519PrivateKey):
            raise SecurityError("key", f"{source} is not an Ed25519 key")
        return cls(private, source)

    @classmethod
    def from_file(cls, path: str | Path, passphrase: str | bytes | None = None) -> SigningKey:
        return cls.from_pem(_read_secret_file(path, "signing key file"),
                            f"signing key file {path}", passphrase)

    @classmethod
    def from_env(cls, var: str = ENV_SIGNING_KEY, passphrase=None) -> SigningKey:
        if not os.environ.get(var):
            raise SecurityError("key", f"environment variable {var} is not set; set it to the "
                                       f"contents of a signing.key file")
        return cls.from_pem(os.environ[var].encode(), f"environment variable {var}", passphrase)

    def sign(self, statement: dict) -> dict:
        """The signature envelope of ``statement``: ``{statement, key_id, signature}``."""
        sig = self.private.sign(SIGNATURE_CONTEXT + canonical_json(statement))
        return {"statement": statement, "key_id": self.key_id, "signature": sig.hex()}


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    path = Path(path).expanduser()
    try:
        public = serialization.load_pem_public_key(path.read_bytes())
    except OSError:
        raise SecurityError("key", f"public key file {path} does not exist; pass a signing.pub "
                                   f"written by `robustax keys new`") from None
    except (ValueError, TypeError):
        raise SecurityError("key", f"{path} is not a PEM public key") from None
    if not isinstance(public, Ed25519PublicKey):
        raise SecurityError("key", f"{path} is not an Ed25519 public key")
    return public


def envelope_bytes(envelope: dict) -> bytes:
    return canonical_json(envelope) + b"\n"


def parse_envelope(data: bytes, where: str) -> dict:
    """A signature envelope from its file bytes, which must be exactly canonical (so no byte
    of the file can change without failing)."""
    env = loads_canonical(data[:-1]) if data.endswith(b"\n") else None  # envelope_bytes' form
    ok = (env is not None and set(env) == {"statement", "key_id", "signature"}
          and isinstance(env["statement"], dict) and isinstance(env["signature"], str)
          and isinstance(env["key_id"], str))
    if not ok:
        raise SecurityError("signature", f"{where} is damaged (not a canonical signature "
                                         f"envelope)")
    return env


def verify_envelope(envelope: dict, trusted: list[Ed25519PublicKey], where: str) -> dict:
    """The statement of a signature envelope, if a trusted key signed it. The signer is looked
    up by key id among ``trusted`` only (``key`` stage), then the signature checked
    (``signature`` stage)."""
    by_id = {public_key_id(k): k for k in trusted}
    public = by_id.get(envelope["key_id"])
    if public is None:
        known = ", ".join(k[:12] + "…" for k in by_id) or "none given"
        raise SecurityError("key", f"{where} is signed by key id {envelope['key_id'][:12]}…, "
                                   f"which is not a trusted key ({known}); pass the signer's "
                                   f"public key with --trust")
    try:
        sig = bytes.fromhex(envelope["signature"])
        if sig.hex() != envelope["signature"]:
            raise ValueError
        public.verify(sig, SIGNATURE_CONTEXT + canonical_json(envelope["statement"]))
    except (InvalidSignature, ValueError, TypeError):
        raise SecurityError("signature", f"{where} does not verify against trusted key "
                                         f"{envelope['key_id'][:12]}… (the statement or the "
                                         f"signature was altered)") from None
    return envelope["statement"]


# ----------------------------------------------------------------------------- checkpoints

def signature_path(path: str | Path) -> Path:
    return Path(f"{path}.sig")


def checkpoint_statement(path: str | Path, data: bytes, parameters_sha256: str, *,
                         encrypted: bool, ids: dict | None = None,
                         code_version: str = "") -> dict:
    """What a checkpoint signature asserts: this file (name and SHA-256 of its bytes as
    stored), these parameters (canonical digest), made by these model/defense/data/config
    ids and code version, signed at this time."""
    ids = {k: str(v) for k, v in (ids or {}).items() if v is not None}
    return {"type": "robustax/checkpoint/v1", "file": Path(path).name,
            "file_sha256": sha256_hex(data), "parameters_sha256": parameters_sha256,
            "encrypted": bool(encrypted), "ids": ids, "code_version": code_version,
            "signed_at": utc_now()}


def plaintext_of(path: Path, data: bytes, key: EncryptionKey | None) -> bytes | None:
    """The safetensors bytes of a checkpoint file (decrypted in memory when it is encrypted and
    a key is given; None when it is encrypted and no key is)."""
    if not is_encrypted(data):
        return data
    if key is None:
        return None
    return decrypt_bytes(data, key, name=path.name.removesuffix(".enc"), where=str(path))


def sign_checkpoint(path: str | Path, signer: SigningKey, *, key: EncryptionKey | None = None,
                    ids: dict | None = None, code_version: str = "",
                    data: bytes | None = None, parameters_sha256: str | None = None) -> dict:
    """Signs a checkpoint file and writes ``<path>.sig`` (replacing an older one)."""

    path = Path(path)
    data = path.read_bytes() if data is None else data
    if parameters_sha256 is None:
        plain = plaintext_of(path, data, key)
        if plain is None:
            raise SecurityError("key", f"{path} is encrypted; pass its encryption key to "
                                       f"compute the parameter digest it is signed with")
        try:
            parameters_sha256 = checkpoint_parameter_digest(plain)
            meta = _metadata(plain)
        except ValueError as e:
            raise SecurityError("digest", f"{path}: {e}") from None
        ids = {**{k: meta[k] for k in ("model", "defense", "data") if k in meta}, **(ids or {})}
    envelope = signer.sign(checkpoint_statement(path, data, parameters_sha256,
                                                encrypted=is_encrypted(data), ids=ids,
                                                code_version=code_version))
    write_new(signature_path(path), envelope_bytes(envelope), overwrite=True)
    return envelope


def verify_checkpoint(path: str | Path, trusted: list[Ed25519PublicKey], *,
                      key: EncryptionKey | None = None, data: bytes | None = None,
                      signature: bytes | None = None) -> tuple[dict, bytes | None]:
    """Checks ``<path>.sig`` against ``trusted`` keys, then the file's SHA-256 and, when the
    plaintext is at hand (not encrypted, or ``key`` given), its parameter digest.

    ``data`` and ``signature``: the file's and its ``.sig``'s bytes, if read already.
    Returns (statement, plaintext or None). Never writes anything.
    """

    path = Path(path)
    sig = signature_path(path)
    if signature is None and not sig.is_file():
        raise SecurityError("signature", f"{path} has no signature ({sig.name} is missing); "
                                         f"sign it with `robustax sign {path} --key KEY`")
    signature = sig.read_bytes() if signature is None else signature
    statement = verify_envelope(parse_envelope(signature, str(sig)), trusted, str(sig))
    data = path.read_bytes() if data is None else data
    if statement.get("type") != "robustax/checkpoint/v1":
        raise SecurityError("signature", f"{sig} signs a {statement.get('type')!r}, not a "
                                         f"checkpoint")
    if statement.get("file_sha256") != sha256_hex(data) or statement.get("file") != path.name:
        raise SecurityError("digest", f"{path} is not the file its signature covers (SHA-256 or "
                                      f"name differs: the file changed, or the signature "
                                      f"belongs to another file)")
    plain = plaintext_of(path, data, key)
    if plain is not None:
        try:
            digest = checkpoint_parameter_digest(plain)
        except ValueError as e:
            raise SecurityError("digest", f"{path}: {e}") from None
        if digest != statement.get("parameters_sha256"):
            raise SecurityError("digest", f"{path}: the parameters' digest differs from the "
                                          f"signed one")
    return statement, plain
