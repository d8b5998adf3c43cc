"""Artifact security: canonical parameter digests, chunked AEAD files, Ed25519 signatures,
the results ledger, the [security] sweep option and the CLI commands."""

import json
import os
import threading

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from bench.cli import main
from bench.security import crypto
from bench.security.artifacts import verify_run
from bench.security.crypto import EncryptionKey, SecurityError, SigningKey
from bench.security.ledger import GENESIS, Ledger, line_hash
from defenses import (
    checkpoint_bytes,
    checkpoint_parameter_digest,
    parameter_digest,
    variables_from_bytes,
)

CHUNK = 16
FAST_ARGON = {"name": "argon2id", "memory_kib": 64, "iterations": 1, "lanes": 1}


@pytest.fixture(scope="module")
def key():
    return EncryptionKey.generate()


@pytest.fixture(scope="module")
def signer():
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return SigningKey(Ed25519PrivateKey.generate())


@pytest.fixture(scope="module")
def other_signer():
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return SigningKey(Ed25519PrivateKey.generate())


def _variables(dtype=jnp.float32, w=None):
    w = np.arange(6, dtype=np.float32).reshape(2, 3) / 7 if w is None else w
    return {"params": {"dense": {"kernel": jnp.asarray(w, dtype), "bias": jnp.zeros(3, dtype)}},
            "batch_stats": {"mean": jnp.ones(3, jnp.float32)}}


def _stage(fn):
    with pytest.raises(SecurityError) as e:
        fn()
    assert "\n" not in str(e.value) and str(e.value).startswith(e.value.stage + ": ")
    return e.value.stage


# --------------------------------------------------------------------------- parameter digest

def test_parameter_digest_is_canonical_and_sensitive():
    v = _variables()
    d = parameter_digest(v)
    # dict order does not matter; nested and flat trees with equal paths agree
    reordered = {"batch_stats": v["batch_stats"],
                 "params": {"dense": {"bias": v["params"]["dense"]["bias"],
                                      "kernel": v["params"]["dense"]["kernel"]}}}
    assert parameter_digest(reordered) == d
    flat = {"params/dense/kernel": v["params"]["dense"]["kernel"],
            "params/dense/bias": v["params"]["dense"]["bias"],
            "batch_stats/mean": v["batch_stats"]["mean"]}
    assert parameter_digest(flat) == d
    # and the digest of the checkpoint file is that of the variables in it
    assert checkpoint_parameter_digest(checkpoint_bytes(v, {"x": 1})) == d
    assert checkpoint_parameter_digest(checkpoint_bytes(v, {"x": 2})) == d  # metadata is not params
    w = np.asarray(v["params"]["dense"]["kernel"]).copy()
    w1 = w.copy()
    w1[1, 2] = np.nextafter(w1[1, 2], np.float32(9))  # one ulp of one weight
    changed = {
        "value": _variables(w=w1),
        "dtype": _variables(dtype=jnp.bfloat16, w=np.round(w)),
        "shape": {**v, "params": {"dense": {**v["params"]["dense"], "kernel": w.reshape(3, 2)}}},
        "path": {**v, "params": {"dense2": v["params"]["dense"]}},
        "extra leaf": {**v, "extra": {"x": jnp.zeros(0)}},
    }
    digests = {name: parameter_digest(t) for name, t in changed.items()}
    assert d not in digests.values() and len(set(digests.values())) == len(digests)
    # values equal as numbers but different dtypes must differ too
    assert parameter_digest({"a": np.zeros(2, np.float32)}) != parameter_digest(
        {"a": np.zeros(2, np.int32)})


def test_bfloat16_checkpoint_round_trip_is_bit_identical(key):
    v = _variables(dtype=jnp.bfloat16, w=np.linspace(-3, 3, 6).reshape(2, 3))
    blob = checkpoint_bytes(v, {"model": "m"})
    enc = crypto.encrypt_bytes(blob, key, "m.safetensors", chunk_size=64)
    plain = crypto.decrypt_bytes(enc, key, name="m.safetensors")
    assert plain == blob
    back, meta = variables_from_bytes(plain, like=v)
    k = back["params"]["dense"]["kernel"]
    assert k.dtype == ml_dtypes.bfloat16 and meta == {"model": "m"}
    assert np.asarray(k).tobytes() == np.asarray(v["params"]["dense"]["kernel"]).tobytes()
    assert parameter_digest(back) == parameter_digest(v)


# --------------------------------------------------------------------------- AEAD files

@pytest.mark.parametrize("n", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 5])
def test_round_trip_bit_identical(key, n):
    data = os.urandom(n)
    enc = crypto.encrypt_bytes(data, key, "f", chunk_size=CHUNK)
    header, _, offset = crypto.read_header(enc)
    chunks = max(1, -(-n // CHUNK))
    assert len(enc) == offset + n + 16 * chunks  # one tag per chunk, nothing else
    assert crypto.decrypt_bytes(enc, key) == data


def test_two_encryptions_differ(key):
    data = b"same plaintext" * 4
    a, b = (crypto.encrypt_bytes(data, key, "f", chunk_size=CHUNK) for _ in range(2))
    ha, hb = crypto.read_header(a)[0], crypto.read_header(b)[0]
    assert ha["salt"] != hb["salt"] and ha["nonce"] != hb["nonce"]
    assert ha["key_id"] == hb["key_id"]
    oa, ob = crypto.read_header(a)[2], crypto.read_header(b)[2]
    assert a[oa:] != b[ob:] and a[oa:oa + 16] != b[ob:ob + 16]
    assert crypto.decrypt_bytes(a, key) == crypto.decrypt_bytes(b, key) == data


@pytest.fixture(scope="module")
def small_file(key):
    data = bytes(range(40))  # 3 chunks: 16 + 16 + 8
    return data, crypto.encrypt_bytes(data, key, "small", chunk_size=CHUNK)


def test_every_single_byte_change_is_detected(key, small_file):
    _, enc = small_file
    offset = crypto.read_header(enc)[2]
    stages = {}
    for i in range(len(enc)):
        for delta in (0x01, 0x80, 0xff):
            bad = bytearray(enc)
            bad[i] ^= delta
            stage = _stage(lambda: crypto.decrypt_bytes(bytes(bad), key))
            if i >= offset:  # chunks and tags: authentication
                assert stage == "tag", (i, delta)
            else:  # magic, length, header: malformed, another key id, or authentication
                assert stage in ("header", "key", "tag"), (i, delta)
            stages[stage] = stages.get(stage, 0) + 1
    assert set(stages) == {"header", "key", "tag"}  # each path is exercised


def test_truncation_appending_and_reordering_are_detected(key, small_file):
    data, enc = small_file
    offset = crypto.read_header(enc)[2]
    for n in range(len(enc)):  # every truncation, at chunk boundaries too
        assert _stage(lambda: crypto.decrypt_bytes(enc[:n], key)) in ("header", "tag")
    assert _stage(lambda: crypto.decrypt_bytes(enc[:offset + 2 * 32], key)) == "tag"
    step = CHUNK + 16
    c = [enc[offset + i * step:offset + (i + 1) * step] for i in range(3)]
    assert enc == enc[:offset] + b"".join(c)
    for body in (c[1] + c[0] + c[2],          # swapped chunks
                 c[0] + c[0] + c[2],          # a chunk repeated
                 c[0] + c[1],                 # the final chunk dropped
                 c[0] + c[2],                 # a middle chunk dropped
                 b"".join(c) + b"\0",         # one byte appended
                 b"".join(c) + c[2],          # a whole chunk appended
                 b"".join(c) + os.urandom(step)):
        assert _stage(lambda: crypto.decrypt_bytes(enc[:offset] + body, key)) == "tag"


def test_wrong_key_is_reported_before_decryption_and_writes_nothing(key, small_file, tmp_path):
    _, enc = small_file
    wrong = EncryptionKey.generate()
    assert _stage(lambda: crypto.decrypt_bytes(enc, wrong)) == "key"
    offset = crypto.read_header(enc)[2]
    garbled = enc[:offset] + bytes(len(enc) - offset)  # chunks destroyed: still a key error
    assert _stage(lambda: crypto.decrypt_bytes(garbled, wrong)) == "key"
    src, dst = tmp_path / "f.enc", tmp_path / "f"
    src.write_bytes(enc)
    assert _stage(lambda: crypto.decrypt_file(src, dst, wrong)) == "key"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.enc"]
    dst.write_bytes(b"existing")
    for bad in (wrong, key):
        if bad is key:
            src.write_bytes(enc[:-1])
        with pytest.raises(SecurityError):
            crypto.decrypt_file(src, dst, bad, overwrite=True)
        assert dst.read_bytes() == b"existing"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "f.enc"]


def test_passphrase_kdfs_and_key_sources(tmp_path, monkeypatch):
    data = b"weights" * 9
    for kdf in (FAST_ARGON, {"name": "scrypt", "n": 1024, "r": 8, "p": 1}):
        pk = EncryptionKey.from_passphrase("correct horse", kdf=kdf)
        enc = crypto.encrypt_bytes(data, pk, "f", chunk_size=CHUNK)
        assert crypto.read_header(enc)[0]["kdf"] == kdf
        assert crypto.decrypt_bytes(enc, EncryptionKey.from_passphrase("correct horse")) == data
        assert _stage(lambda: crypto.decrypt_bytes(
            enc, EncryptionKey.from_passphrase("wrong horse"))) == "key"
        assert _stage(lambda: crypto.decrypt_bytes(enc, EncryptionKey.generate())) == "key"
    # a forged header asking for unbounded KDF memory is refused before any derivation
    header, raw, offset = crypto.read_header(enc)
    forged = crypto.canonical_json({**header, "kdf": {**header["kdf"], "n": 1 << 30}})
    bad = crypto.MAGIC + len(forged).to_bytes(4, "big") + forged + enc[offset:]
    assert _stage(lambda: crypto.decrypt_bytes(bad, pk)) == "header"
    # key file: only its owner may read it; environment variable: same text
    k = EncryptionKey.generate()
    path = tmp_path / "enc.key"
    crypto.write_new(path, k.text().encode(), mode=0o600)
    assert EncryptionKey.from_file(path).secret == k.secret
    os.chmod(path, 0o640)
    assert _stage(lambda: EncryptionKey.from_file(path)) == "key"
    monkeypatch.setenv(crypto.ENV_ENCRYPTION_KEY, k.text())
    assert EncryptionKey.from_env().secret == k.secret
    monkeypatch.setenv(crypto.ENV_ENCRYPTION_KEY, "not a key")
    assert _stage(EncryptionKey.from_env) == "key"


# --------------------------------------------------------------------------- signatures

@pytest.fixture
def signed_checkpoint(tmp_path, signer):
    path = tmp_path / "m.standard.abc.safetensors"
    path.write_bytes(checkpoint_bytes(_variables(), {"model": "mlp", "defense": "standard",
                                                     "data": "digits"}))
    crypto.sign_checkpoint(path, signer, ids={"config_id": "cfg"}, code_version="v1")
    return path


def test_signature_verifies_and_states_what_was_signed(signed_checkpoint, signer, other_signer):
    st, plain = crypto.verify_checkpoint(signed_checkpoint, [other_signer.public, signer.public])
    assert plain == signed_checkpoint.read_bytes()
    assert st["file_sha256"] == crypto.sha256_file(signed_checkpoint)
    assert st["parameters_sha256"] == parameter_digest(_variables())
    assert st["ids"] == {"model": "mlp", "defense": "standard", "data": "digits",
                         "config_id": "cfg"}
    assert st["code_version"] == "v1" and st["signed_at"].endswith("Z")
    # only the given keys are trusted
    assert _stage(lambda: crypto.verify_checkpoint(signed_checkpoint, [other_signer.public])) \
        == "key"
    assert _stage(lambda: crypto.verify_checkpoint(signed_checkpoint, [])) == "key"


def test_every_single_byte_change_of_the_signature_file_is_detected(signed_checkpoint, signer):
    sig = crypto.signature_path(signed_checkpoint)
    good, data = sig.read_bytes(), signed_checkpoint.read_bytes()
    seen = set()
    for i in range(len(good)):
        for delta in (0x01, 0x20):  # 0x20: hex digits to upper case, the same bytes to fromhex
            bad = bytearray(good)
            bad[i] ^= delta
            seen.add(_stage(lambda: crypto.verify_checkpoint(
                signed_checkpoint, [signer.public], data=data, signature=bytes(bad))))
    assert seen <= {"signature", "key"} and "signature" in seen
    # equal JSON in other bytes (whitespace, a trailing space) is refused too: the file is
    # exactly the canonical envelope, so no byte of it can change unnoticed
    for bad in (good.replace(b'":', b'": ', 1), good[:-1] + b" \n", good[:-1] + b"\r\n"):
        sig.write_bytes(bad)
        assert _stage(lambda: crypto.verify_checkpoint(signed_checkpoint, [signer.public])) \
            == "signature"
    sig.write_bytes(good)
    crypto.verify_checkpoint(signed_checkpoint, [signer.public])


def test_changed_checkpoint_and_moved_signature_fail(signed_checkpoint, signer, other_signer):
    data = signed_checkpoint.read_bytes()
    for i in (0, 9, len(data) // 2, len(data) - 1):  # header length, header JSON, tensors
        bad = bytearray(data)
        bad[i] ^= 0x01
        signed_checkpoint.write_bytes(bytes(bad))
        assert _stage(lambda: crypto.verify_checkpoint(signed_checkpoint, [signer.public])) \
            == "digest"
    signed_checkpoint.write_bytes(data)
    # the signature of one checkpoint next to another one (same name too) does not verify
    other = signed_checkpoint.parent / "other" / signed_checkpoint.name
    other.parent.mkdir()
    other.write_bytes(checkpoint_bytes(_variables(w=np.ones((2, 3))), {"model": "mlp"}))
    crypto.signature_path(other).write_bytes(crypto.signature_path(signed_checkpoint).read_bytes())
    assert _stage(lambda: crypto.verify_checkpoint(other, [signer.public])) == "digest"
    # a forged statement for the other file, claiming a trusted key's id: signature fails
    env = json.loads(crypto.signature_path(other).read_bytes())
    forged = other_signer.sign({**env["statement"], "file_sha256": crypto.sha256_file(other)})
    forged["key_id"] = signer.key_id
    crypto.signature_path(other).write_bytes(crypto.envelope_bytes(forged))
    assert _stage(lambda: crypto.verify_checkpoint(other, [signer.public])) == "signature"
    os.remove(crypto.signature_path(other))
    assert _stage(lambda: crypto.verify_checkpoint(other, [signer.public])) == "signature"


def test_encrypted_checkpoint_signature_and_parameter_digest(tmp_path, signer, key):
    plain = checkpoint_bytes(_variables(), {"model": "mlp"})
    path = tmp_path / "m.safetensors.enc"
    path.write_bytes(crypto.encrypt_bytes(plain, key, "m.safetensors"))
    with pytest.raises(SecurityError, match="^key: .*encrypted"):
        crypto.sign_checkpoint(path, signer)
    crypto.sign_checkpoint(path, signer, key=key)
    st, got = crypto.verify_checkpoint(path, [signer.public])  # without the key: signature only
    assert got is None and st["encrypted"] and st["parameters_sha256"] == parameter_digest(
        _variables())
    assert crypto.verify_checkpoint(path, [signer.public], key=key)[1] == plain
    # swapped under another checkpoint's name: the name bound in its header does not match
    moved = tmp_path / "n.safetensors.enc"
    moved.write_bytes(path.read_bytes())
    assert _stage(lambda: crypto.plaintext_of(moved, moved.read_bytes(), key)) == "header"


# --------------------------------------------------------------------------- the ledger

def _fake_run(root, n=6):
    """A run directory with n finished cells (record + mask), no JAX needed."""
    (root / "cells").mkdir(parents=True)
    (root / "masks").mkdir()
    ids = []
    for i in range(n):
        cid = f"m.d.pgd-linf.eps0.{i}.h{i}"
        mask = np.arange(10) % (i + 2) == 0
        np.save(root / "masks" / f"{cid}.npy", mask, allow_pickle=False)
        rec = {"cell_id": cid, "model": "m", "defense": "d", "attack": "pgd", "norm": "linf",
               "eps": i / 10, "examples": 10, "correct": int(mask.sum()),
               "robust_acc": float(mask.mean()), "checkpoint": "abc", "config_id": "cfg",
               "code_version": "v"}
        (root / "cells" / f"{cid}.json").write_text(json.dumps(rec))
        ids.append(cid)
    _remanifest(root)
    return ids


def _remanifest(root):
    """What someone who edits files and then the (unsigned) manifest would do."""
    from bench.store.manifest import Manifest

    (root / "manifest.json").unlink(missing_ok=True)
    Manifest(root).record({p: p.read_bytes() for d in ("cells", "masks")
                           for p in (root / d).glob("*")})


def _ledger(tmp_path, signer=None, n=6):
    root = tmp_path / "run"
    ids = _fake_run(root, n)
    book = Ledger(root)
    book.append([{"type": "run", "config_id": "cfg", "code_version": "v", "started": "t",
                  "signed_by": ""}], signer)
    assert book.add_cells(ids[:3], signer) == 3
    assert book.add_cells(ids, signer) == 3  # only the new ones
    assert book.add_cells(ids, signer) == 0
    return root, book


def _rewrite(book, lines):
    book.path.write_bytes(b"".join(line + b"\n" for line in lines))


def _chain_error(root, trusted=None):
    with pytest.raises(SecurityError) as e:
        verify_run(root, trusted)
    return str(e.value)


def test_ledger_lines_are_canonical_chained_and_float_free(tmp_path):
    root, book = _ledger(tmp_path)
    lines = book.lines()
    assert len(lines) == 7
    prev = GENESIS
    for i, line in enumerate(lines):
        e = json.loads(line)
        assert e["seq"] == i and e["prev"] == prev and crypto.canonical_json(e) == line
        assert not any(isinstance(v, float) for v in e.values())
        prev = line_hash(line)
    cell = json.loads(lines[2])
    assert cell["eps"] == "0.1" and cell["correct"] == 4 and cell["examples"] == 10
    head = json.loads(book.head_path.read_bytes())
    assert head["statement"]["length"] == 7 and head["statement"]["head"] == prev
    with pytest.raises(TypeError, match="float"):
        crypto.canonical_json({"a": [1, {"b": 0.5}]})
    out = verify_run(root)
    assert any("unsigned" in s for s in out) and any("6 cells" in s for s in out)


def _edit(line, **changes):
    return crypto.canonical_json({**json.loads(line), **changes})


@pytest.mark.parametrize("signed", [False, True])
def test_ledger_tampering_is_caught_at_the_entry(tmp_path, signer, signed):
    root, book = _ledger(tmp_path, signer if signed else None)
    trusted = [signer.public] if signed else None
    good = book.lines()
    n = len(good)
    verify_run(root, trusted)

    def caught(lines, match):
        _rewrite(book, lines)
        msg = _chain_error(root, trusted)
        assert msg.startswith("chain: ") and match in msg, msg
        _rewrite(book, good)

    caught(good[:3] + [_edit(good[3], correct=9)] + good[4:], "entry 3 (line 4) was edited")
    caught(good[:3] + [good[3] + b" "] + good[4:], "entry 3 (line 4) is not canonical")
    caught(good[:3] + good[4:], "entry 3 (line 4) holds seq 4")           # deleted
    caught(good[:3] + [good[4], good[3]] + good[5:], "entry 3 (line 4) holds seq 4")  # reordered
    caught(good[:-1] + [_edit(good[-1], correct=0)], f"entry {n - 1} (line {n}) was edited")
    caught(good[:-1], f"entry {n - 1} is missing")                        # last line deleted
    forged = crypto.canonical_json({**json.loads(good[-1]), "seq": n, "prev": line_hash(good[-1])})
    caught(good + [forged], f"entry {n} (line {n + 1}) was appended")     # appended, chained
    # an edited cell or mask, a cell added outside the ledger, a deleted cell
    cell = json.loads(good[2])["cell_id"]
    rec = root / "cells" / f"{cell}.json"
    text = rec.read_text()
    rec.write_text(text.replace('"correct": 4', '"correct": 5'))
    assert _chain_error(root, trusted).startswith(f"manifest: cells/{cell}.json differs")
    _remanifest(root)  # the manifest is rewritten to match: the ledger still catches it
    assert _chain_error(root, trusted).startswith(f"digest: cells/{cell}.json differs from "
                                                  f"ledger entry 2")
    rec.write_text(text)
    _remanifest(root)
    (root / "cells" / "new.json").write_text("{}")
    assert _chain_error(root, trusted).startswith("manifest: cells/new.json is not listed")
    _remanifest(root)
    assert _chain_error(root, trusted).startswith("digest: cell new is not in the ledger")
    os.remove(root / "cells" / "new.json")
    os.remove(rec)
    _remanifest(root)
    assert "missing from cells/" in _chain_error(root, trusted)
    rec.write_text(text)
    _remanifest(root)
    verify_run(root, trusted)
    # a changed head
    head = book.head_path.read_bytes()
    env = json.loads(head)
    env["statement"]["length"] = n - 1
    book.head_path.write_bytes(crypto.envelope_bytes(env))
    msg = _chain_error(root, trusted)
    assert msg.startswith("signature: ") if signed else "appended after the head" in msg
    # a signed head replaced by an unsigned one, or checked against another key
    env = {**json.loads(head), "key_id": "", "signature": ""}
    book.head_path.write_bytes(crypto.envelope_bytes(env))
    if signed:
        assert _chain_error(root, trusted).startswith("signature: ")
    book.head_path.write_bytes(head)
    verify_run(root, trusted)


def test_signed_ledger_head_needs_a_trusted_key_and_keeps_its_signature(tmp_path, signer,
                                                                        other_signer):
    root, book = _ledger(tmp_path, signer)
    assert any("NOT checked" in s for s in verify_run(root))
    assert _chain_error(root, [other_signer.public]).startswith("key: ")
    # an append without the key would drop the signature: refused, nothing written
    before = book.path.read_bytes()
    with pytest.raises(SecurityError, match="^key: .*signed"):
        book.append([{"type": "run"}], None)
    assert book.path.read_bytes() == before
    # a ledger that no longer matches its head is not appended to
    _rewrite(book, book.lines()[:-1])
    with pytest.raises(Exception, match="does not match its head"):
        book.append([{"type": "run"}], signer)


def test_concurrent_appends_interleave_whole_entries(tmp_path):
    root = tmp_path / "run"
    root.mkdir()
    errors = []

    def worker(w):
        try:
            book = Ledger(root)
            for i in range(15):
                book.append([{"type": "run", "worker": w, "i": i}])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    (root / "cells").mkdir()
    (root / "masks").mkdir()
    _remanifest(root)
    verify_run(root)
    entries = Ledger(root).entries()
    assert len(entries) == 60
    for w in range(4):
        assert [e["i"] for e in entries if e["worker"] == w] == list(range(15))


# --------------------------------------------------------------------------- the CLI

def test_cli_keys_sign_verify_encrypt_decrypt(tmp_path, capsys, monkeypatch):
    kd = tmp_path / "keys"
    assert main(["keys", "new", str(kd)]) == 0
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in kd.iterdir()} == {
        "signing.key": "0o600", "signing.pub": "0o644", "encryption.key": "0o600"}
    assert main(["keys", "new", str(kd)]) == 2  # never overwritten
    ck = tmp_path / "m.safetensors"
    ck.write_bytes(checkpoint_bytes(_variables(), {"model": "mlp"}))
    pub, sk, ek = str(kd / "signing.pub"), str(kd / "signing.key"), str(kd / "encryption.key")
    capsys.readouterr()

    def fails(argv, stage):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"robustax: error: {stage}: ") and err.count("\n") == 1, err

    fails(["verify", str(ck), "--trust", pub], "signature")  # unsigned
    assert main(["sign", str(ck), "--key", sk]) == 0
    assert main(["verify", str(ck), "--trust", pub]) == 0
    assert capsys.readouterr().out.startswith("sign")
    fails(["verify", str(ck)], "key")  # nothing trusted
    data = ck.read_bytes()
    ck.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    fails(["verify", str(ck), "--trust", pub], "digest")
    ck.write_bytes(data)
    assert main(["encrypt", str(ck), "--key", ek, "--chunk-size", "100"]) == 0
    enc = tmp_path / "m.safetensors.enc"
    assert main(["decrypt", str(enc), "--key", ek, "--out", str(tmp_path / "back")]) == 0
    assert (tmp_path / "back").read_bytes() == data
    (tmp_path / "back").write_bytes(b"mine")
    assert main(["decrypt", str(enc), "--key", ek, "--out", str(tmp_path / "back")]) == 2
    assert (tmp_path / "back").read_bytes() == b"mine"  # an existing destination is kept
    capsys.readouterr()
    other = tmp_path / "other"
    assert main(["keys", "new", str(other)]) == 0
    capsys.readouterr()
    fails(["decrypt", str(enc), "--key", str(other / "encryption.key"), "--out",
           str(tmp_path / "x")], "key")
    e = enc.read_bytes()
    enc.write_bytes(e[:-20])
    fails(["decrypt", str(enc), "--key", ek, "--out", str(tmp_path / "x")], "tag")
    assert not (tmp_path / "x").exists()
    monkeypatch.setenv("ROBUSTAX_PASSPHRASE", "pw")
    monkeypatch.setattr(crypto, "ARGON2_DEFAULT", FAST_ARGON)
    assert main(["encrypt", str(ck), "--passphrase", "--out", str(tmp_path / "p.enc")]) == 0
    assert main(["decrypt", str(tmp_path / "p.enc"), "--passphrase"]) == 0
    assert (tmp_path / "p").read_bytes() == data
    # a passphrase-protected signing key; signing keys from the environment; key file modes
    pk = tmp_path / "pkeys"
    assert main(["keys", "new", str(pk), "--passphrase"]) == 0
    assert crypto.is_encrypted((pk / "signing.key").read_bytes())
    assert main(["sign", str(ck), "--key", str(pk / "signing.key")]) == 0
    assert main(["verify", str(ck), "--trust", str(pk / "signing.pub")]) == 0
    capsys.readouterr()
    monkeypatch.setenv("ROBUSTAX_PASSPHRASE", "not it")
    fails(["sign", str(ck), "--key", str(pk / "signing.key")], "key")
    monkeypatch.setenv(crypto.ENV_SIGNING_KEY, (kd / "signing.key").read_text())
    assert main(["sign", str(ck)]) == 0
    assert main(["verify", str(ck), "--trust", pub]) == 0
    capsys.readouterr()
    os.chmod(kd / "signing.key", 0o644)
    fails(["sign", str(ck), "--key", sk], "key")


# --------------------------------------------------------------------------- a secured sweep

def test_run_flags_set_the_security_table_without_changing_the_config_id():
    from bench.cli import _parser
    from bench.security.commands import apply_run_flags
    from bench.sweep.config import load_config

    cfg = load_config("bench/configs/default.toml")
    args = _parser().parse_args(["run", "x.toml", "--signing-key", "k/signing.key", "--trust",
                                 "a.pub", "--trust", "b.pub"])
    sec = apply_run_flags(cfg, args)
    assert sec.security.signing_key == "k/signing.key" and sec.security.trust == ("a.pub", "b.pub")
    assert sec.security.encryption_key is None and sec.config_id() == cfg.config_id()
    assert apply_run_flags(cfg, _parser().parse_args(["run", "x.toml"])) is cfg


def test_secured_sweep_signs_encrypts_and_refuses_tampered_checkpoints(tmp_path, capsys):
    kd = tmp_path / "keys"
    assert main(["keys", "new", str(kd)]) == 0
    cfg = tmp_path / "s.toml"
    cfg.write_text(f"""
name = "s"
[data]
name = "digits"
eval_examples = 20
train_examples = 64
[[models]]
name = "mlp"
width = 8
[[defenses]]
name = "standard"
epochs = 1
batch_size = 32
[[attacks]]
name = "fgsm"
eps = [0.1]
[security]
signing_key = "{kd / 'signing.key'}"
encryption_key = "{kd / 'encryption.key'}"
""")
    from bench.sweep.config import load_config
    from bench.sweep.runner import run_sweep

    out = tmp_path / "run"
    run_sweep(load_config(cfg), out, progress=False)  # (the CLI's `run` adds only the report)
    files = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert len(files) == 2 and files[0].endswith(".safetensors.enc") and files[1].endswith(".sig")
    enc = out / "checkpoints" / files[0]
    assert b"params/" not in enc.read_bytes()  # no plaintext weights on disk
    capsys.readouterr()
    assert main(["verify", str(out), "--trust", str(kd / "signing.pub"), "--encryption-key",
                 str(kd / "encryption.key")]) == 0
    assert "signature verified" in capsys.readouterr().out
    # a tampered checkpoint is refused when the sweep needs it again
    for p in (out / "cells").iterdir():
        p.unlink()
    data = bytearray(enc.read_bytes())
    data[-5] ^= 1
    enc.write_bytes(bytes(data))
    with pytest.raises(SecurityError, match="^digest: .*not the file its signature covers"):
        run_sweep(load_config(cfg), out, progress=False)
