"""Weights a user already has: safetensors files and Orbax checkpoint directories.

A safetensors file is robustax's own (a sweep's checkpoint, ``robustax import-torch`` output)
or any flat ``path/to/leaf`` → array file (Flax's ``traverse_util.flatten_dict(..., sep="/")``);
keys may start with the collection (``params/Dense_0/kernel``, ``batch_stats/...``) or, for a
model with parameters only, leave it out (``Dense_0/kernel``). An Orbax checkpoint directory is
restored with ``orbax.checkpoint`` (any nested dict of arrays). Either way every leaf is checked
against the model before anything is evaluated: a missing leaf, an extra leaf or a shape
mismatch is a one-line :class:`~bench.errors.ConfigError` naming the leaf and the fix.
Nothing here unpickles.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from flax import traverse_util

from bench.errors import ConfigError, quiet

META_KEY = "robustax"  # defenses.checkpoint's metadata entry


def digest(path: str | Path) -> str:
    """sha256 (hex) of a file, or of a directory's files (sorted relative paths and bytes)."""
    path = Path(path)
    h = hashlib.sha256()
    if path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(str(f.relative_to(path)).encode() + b"\0")
            h.update(hashlib.sha256(f.read_bytes()).digest())
        return h.hexdigest()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_exists(path: Path, where: str) -> None:
    if not path.exists():
        raise ConfigError(f"{where}: weights file {str(path)!r} does not exist; give the path of a "
                          f".safetensors file or an Orbax checkpoint directory (relative paths "
                          f"start at the config file's folder)")
    if path.is_file() and path.suffix != ".safetensors":
        raise ConfigError(f"{where}: weights = {str(path)!r} is not a .safetensors file or an "
                          f"Orbax checkpoint directory; convert PyTorch state dicts with "
                          f"`robustax import-torch`")


def metadata(path: Path) -> dict:
    """robustax's JSON metadata of a safetensors file ({} for other files and for Orbax)."""
    if path.is_dir():
        return {}
    try:
        with path.open("rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if n > 100_000_000:
                raise ValueError("header too large")
            header = json.loads(fh.read(n))
        return json.loads((header.get("__metadata__") or {}).get(META_KEY, "{}"))
    except (OSError, ValueError, UnicodeDecodeError, AttributeError) as e:
        raise ConfigError(f"weights file {str(path)!r} is not a readable safetensors file ({e}); "
                          f"check the file (or re-export it with safetensors)") from None


def read_flat(path: Path) -> dict[str, np.ndarray]:
    """``{"path/to/leaf": array}`` of a safetensors file or an Orbax checkpoint directory."""
    if path.is_dir():
        try:
            with quiet():  # Orbax's sharding UserWarning for arrays saved from jax
                import orbax.checkpoint as ocp

                tree = ocp.PyTreeCheckpointer().restore(str(path.resolve()))
        except Exception as e:  # orbax raises many types; one line either way
            detail = " ".join(str(e).split())[:200]
            raise ConfigError(f"{str(path)!r} is not a readable Orbax checkpoint ({detail}); "
                              f"save one with orbax.checkpoint.StandardCheckpointer().save") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"Orbax checkpoint {str(path)!r} holds a {type(tree).__name__}, not "
                              f"a nested dict of arrays; save the variables dict")
        flat = traverse_util.flatten_dict(tree, sep="/")
        return {k: np.asarray(v) for k, v in flat.items()}
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return dict(load_file(str(path)))
    except (SafetensorError, OSError, ValueError) as e:
        raise ConfigError(f"weights file {str(path)!r} is not a readable safetensors file "
                          f"({str(e).splitlines()[0]}); check the file") from None


def match(flat: dict[str, np.ndarray], like: Any, source: str, model: str) -> dict:
    """The variables of ``flat`` in the structure of ``like`` (the model's initial variables),
    cast to its dtypes; a one-line ConfigError at the first missing, extra or misshapen leaf."""
    want = traverse_util.flatten_dict(like, sep="/")
    collections = {k.split("/")[0] for k in want}
    if not any(k.split("/")[0] in collections for k in flat):
        flat = {f"params/{k}": v for k, v in flat.items()}  # a params-only file
    example = next(iter(sorted(want)))
    for k in sorted(want):
        if k not in flat:
            n = sum(1 for j in want if j not in flat)
            raise ConfigError(
                f"{source} has no leaf {k!r}, which model {model} needs ({n} of {len(want)} "
                f"leaves missing); check the model's options (width, depth, ...) or name the "
                f"file's arrays by their path in the variables, e.g. {example!r}")
    for k in sorted(flat):
        if k not in want:
            raise ConfigError(f"{source} has leaf {k!r}, which model {model} does not have; the "
                              f"file is for another architecture or other options, or remove "
                              f"that array")
    out = {}
    for k, ref in want.items():
        v = np.asarray(flat[k])
        if tuple(v.shape) != tuple(np.shape(ref)):
            raise ConfigError(f"{source}: leaf {k!r} has shape {tuple(v.shape)} but model {model} "
                              f"needs {tuple(np.shape(ref))}; set the model's options (and the data "
                              f"set's classes) to those the weights were trained with")
        if not (np.issubdtype(v.dtype, np.floating) or v.dtype.kind == "V"):
            raise ConfigError(f"{source}: leaf {k!r} has dtype {v.dtype}; store weights as floats")
        v = v.astype(ref.dtype if hasattr(ref, "dtype") else np.asarray(ref).dtype)
        if not np.isfinite(v).all():
            raise ConfigError(f"{source}: leaf {k!r} contains NaN or infinite values; the weights "
                              f"are broken")
        out[k] = v
    return traverse_util.unflatten_dict(out, sep="/")


def shapes(module: Any, image_shape: tuple[int, ...]) -> dict:
    """The variables' shapes and dtypes of a flax.linen ``module`` (``jax.eval_shape``: no
    initialiser runs or compiles, which for a WideResNet takes many seconds on a CPU)."""
    import flax
    import jax
    import jax.numpy as jnp

    x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    out = jax.eval_shape(lambda x: module.init(jax.random.key(0), x, train=False), x)
    return flax.core.unfreeze(out)


def load(path: Path, like: Any, model: str, expected_digest: str | None = None) -> dict:
    """Reads and checks the weights at ``path`` for a model with initial variables ``like``.
    With ``expected_digest``, the file must still be the one the plan keyed its cells to."""
    if expected_digest is not None and digest(path) != expected_digest:
        raise ConfigError(f"weights {str(path)!r} changed while the sweep ran (sha256 differs "
                          f"from the planned one); run the sweep again")
    return match(read_flat(path), like, f"weights {str(path)!r}", model)
