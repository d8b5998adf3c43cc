"""Checkpoints as safetensors (no pickle): flat ``a/b/c`` keys and JSON metadata.

The library turns variables into bytes and back; writing them to disk (atomically, with a
digest) is the run directory's job in ``bench``, so encrypted or signed forms can wrap the
same bytes without ever writing plaintext.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import jax
import ml_dtypes
import numpy as np
from flax import traverse_util
from safetensors import SafetensorError, deserialize
from safetensors.numpy import save as st_save

_META_KEY = "robustax"

# safetensors dtype names -> numpy dtypes; safetensors.numpy lacks BF16, so it is mapped here
# (through ml_dtypes, which jax uses) to read bfloat16 checkpoints back bit for bit.
_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "U64": np.uint64, "I32": np.int32, "U32": np.uint32, "I16": np.int16,
    "U16": np.uint16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_, "C64": np.complex64,
}


def st_load(data: bytes) -> dict[str, np.ndarray]:
    """The tensors of a safetensors blob (safetensors' own parser; BF16 included)."""
    out = {}
    for name, view in deserialize(data):
        if view["dtype"] not in _DTYPES:
            raise ValueError(f"tensor {name!r} has dtype {view['dtype']}, which robustax does "
                             f"not read")
        out[name] = np.frombuffer(view["data"], dtype=_DTYPES[view["dtype"]]).reshape(
            view["shape"])
    return out


def parameter_digest(variables: Any) -> str:
    """The canonical SHA-256 digest of a variables tree (hex).

    Leaves are taken in sorted order of their ``a/b/c`` paths; each contributes its path, its
    dtype name, its shape and its raw little-endian C-order bytes, every field
    length-prefixed, so the digest depends on nothing but the parameters (not on dict order,
    msgpack or safetensors layout) and two different trees cannot share a byte stream.
    """
    # a nested tree and the flat ``{"a/b": leaf}`` tensors of its checkpoint give equal paths
    flat = traverse_util.flatten_dict(jax.device_get(variables), sep="/")
    h = hashlib.sha256(b"robustax-parameter-digest-v1\0")

    def field(b: bytes) -> None:
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)

    for path in sorted(flat):
        a = np.asarray(jax.device_get(flat[path]))
        a = np.ascontiguousarray(a.astype(a.dtype.newbyteorder("<"), copy=False))
        field(str(path).encode())
        field(a.dtype.name.encode())
        field(json.dumps(list(a.shape)).encode())
        field(a.tobytes())
    return h.hexdigest()


def checkpoint_parameter_digest(data: bytes) -> str:
    """:func:`parameter_digest` of the tensors in a safetensors checkpoint (raises
    ``ValueError`` for unreadable data)."""
    try:
        return parameter_digest(st_load(data))
    except (SafetensorError, ValueError) as e:
        raise ValueError(f"not a readable safetensors checkpoint ({str(e).splitlines()[0]})") \
            from None


def checkpoint_bytes(variables: Any, metadata: dict | None = None) -> bytes:
    """The safetensors encoding of ``variables`` (a nested dict of arrays) and ``metadata``."""
    flat = traverse_util.flatten_dict(jax.device_get(variables), sep="/")
    tensors = {k: np.ascontiguousarray(np.asarray(v)) for k, v in flat.items()}
    return st_save(tensors, metadata={_META_KEY: json.dumps(metadata or {}, sort_keys=True)})


def _metadata(data: bytes) -> dict:
    """The JSON metadata of a safetensors blob (its header is 8 bytes of length, then JSON)."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    return json.loads((header.get("__metadata__") or {}).get(_META_KEY, "{}"))


def variables_from_bytes(data: bytes, like: Any | None = None) -> tuple[dict, dict]:
    """Reads ``(variables, metadata)``; with ``like``, checks the tree structure and shapes.

    Raises ``ValueError`` naming the problem for unreadable data or a mismatching tree.
    """
    try:
        tensors = st_load(data)
        meta = _metadata(data)
    except (SafetensorError, ValueError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"not a readable safetensors checkpoint ({str(e).splitlines()[0]})") from None
    variables = traverse_util.unflatten_dict(tensors, sep="/")
    if like is not None:
        want = {k: np.shape(v) for k, v in traverse_util.flatten_dict(like, sep="/").items()}
        got = {k: v.shape for k, v in tensors.items()}
        if want != got:
            diff = sorted(set(want) ^ set(got)) or [k for k in want if want[k] != got[k]]
            raise ValueError(f"the checkpoint does not match the model (differs at {diff[0]!r})")
    return variables, meta
