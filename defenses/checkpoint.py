"""Checkpoints as safetensors (no pickle): flat ``a/b/c`` keys and JSON metadata.

The library turns variables into bytes and back; writing them to disk (atomically, with a
digest) is the run directory's job in ``bench``, so encrypted or signed forms can wrap the
same bytes without ever writing plaintext.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import numpy as np
from flax import traverse_util
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

_META_KEY = "robustax"


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
