"""Checkpoints as safetensors (no pickle): flat ``a/b/c`` keys, JSON metadata, atomic writes."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import traverse_util
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from bench.errors import RobustaxError

_META_KEY = "robustax"


def save_checkpoint(path: str | Path, variables: Any, metadata: dict | None = None) -> None:
    """Writes ``variables`` (a nested dict of arrays) to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = traverse_util.flatten_dict(jax.device_get(variables), sep="/")
    tensors = {k: np.ascontiguousarray(np.asarray(v)) for k, v in flat.items()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={_META_KEY: json.dumps(metadata or {}, sort_keys=True)})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_checkpoint(path: str | Path, like: Any | None = None) -> tuple[dict, dict]:
    """Reads ``(variables, metadata)``; with ``like``, checks the tree structure and shapes."""
    path = Path(path)
    try:
        tensors = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            meta = json.loads((f.metadata() or {}).get(_META_KEY, "{}"))
    except (SafetensorError, OSError, ValueError) as e:
        raise RobustaxError(f"checkpoint {path} cannot be read ({str(e).splitlines()[0]}); "
                            f"delete it to retrain") from None
    variables = traverse_util.unflatten_dict(tensors, sep="/")
    if like is not None:
        want = {k: np.shape(v) for k, v in traverse_util.flatten_dict(like, sep="/").items()}
        got = {k: v.shape for k, v in tensors.items()}
        if want != got:
            diff = sorted(set(want) ^ set(got)) or [k for k in want if want[k] != got[k]]
            raise RobustaxError(f"checkpoint {path} does not match the model (differs at "
                                f"{diff[0]!r}); delete it to retrain")
    return variables, meta
