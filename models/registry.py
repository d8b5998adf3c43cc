"""Model registry: names -> modules, option checking, construction and evaluation helpers.

Every user-facing mistake (unknown name or option, wrong type, bad size) raises a one-line
:class:`ConfigError` before any JAX work is done.
"""

import dataclasses
import functools
import math
import typing
from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from bench.errors import ConfigError
from bench.registry import Registry
from models.cnn import CNN
from models.mlp import MLP
from models.preact_resnet import PreActResNet18
from models.wide_resnet import WideResNet

MODELS = Registry("model")

# Fields every model has; set by build_model's keyword arguments, not by options.
_RESERVED = ("num_classes", "mean", "std", "parent", "name")


def register(name: str, cls: type[nn.Module]) -> type[nn.Module]:
    """Add a model class under `name`; a second registration of the same name is a bug."""
    return MODELS.register(name, cls)


register("mlp", MLP)
register("cnn", CNN)
register("preact-resnet18", PreActResNet18)
register("wide-resnet", WideResNet)


def _model_class(name: str) -> type[nn.Module]:
    return MODELS[name]


def model_options(name: str) -> dict[str, tuple[type, Any]]:
    """User-settable fields of model `name` as {option: (annotation, default)}."""
    cls = _model_class(name)
    hints = typing.get_type_hints(cls)
    return {
        f.name: (hints[f.name], f.default)
        for f in dataclasses.fields(cls)
        if f.name not in _RESERVED
    }


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_option(model: str, option: str, annotation: Any, minimum: int, value: Any) -> Any:
    """Return `value` converted to `annotation` (lists -> tuples), or raise ConfigError."""
    where = f"model {model!r} option {option!r}"
    if annotation is int:
        if not _is_int(value):
            raise ConfigError(f"{where} must be an integer, got {_short(value)} ({type(value).__name__})")
        if value < minimum:
            raise ConfigError(f"{where} must be an integer >= {minimum}, got {value}")
        return value
    if annotation is float:
        if not (_is_int(value) or isinstance(value, float)):
            raise ConfigError(f"{where} must be a number, got {_short(value)} ({type(value).__name__})")
        return float(value)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {_short(value)} ({type(value).__name__})")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {_short(value)} ({type(value).__name__})")
        return value
    if typing.get_origin(annotation) is tuple and typing.get_args(annotation)[1:] == (...,):
        item = typing.get_args(annotation)[0]
        if item is not int:
            raise TypeError(f"{where}: unsupported annotation {annotation}")  # programming error
        if not isinstance(value, (list, tuple)) or not value or not all(_is_int(v) for v in value):
            raise ConfigError(
                f"{where} must be a non-empty list of integers, got {_short(value)} ({type(value).__name__})"
            )
        if min(value) < minimum:
            raise ConfigError(f"{where} must contain integers >= {minimum}, got {_short(list(value))}")
        return tuple(value)
    raise TypeError(f"{where}: unsupported annotation {annotation}")  # programming error


def _channel_stats(label: str, value: Any) -> tuple[float, ...]:
    """A per-channel mean/std as a tuple of finite floats (a single number means all channels)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = (value,)
    if (
        not isinstance(value, (list, tuple))
        or not value
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        or not all(math.isfinite(v) for v in value)
    ):
        raise ConfigError(f"model {label} must be a non-empty list of finite numbers (one per channel), got {_short(value)}")
    return tuple(float(v) for v in value)


def build_model(name: str, *, num_classes: int, mean: Any, std: Any, **options: Any) -> nn.Module:
    """Construct model `name` with validated options; unspecified options keep their defaults."""
    cls = _model_class(name)
    known = model_options(name)
    minima = {f.name: f.metadata.get("min", 1) for f in dataclasses.fields(cls)}
    for option in options:
        if option not in known:
            listed = ", ".join(sorted(known)) or "(none)"
            raise ConfigError(f"model {name!r} has no option {option!r}; options: {listed}")
    checked = {
        option: _check_option(name, option, known[option][0], minima[option], value)
        for option, value in options.items()
    }
    if not _is_int(num_classes) or num_classes < 1:
        raise ConfigError(f"model num_classes must be a positive integer, got {_short(num_classes)}")
    mean = _channel_stats("mean", mean)
    std = _channel_stats("std", std)
    if len(mean) != len(std) and 1 not in (len(mean), len(std)):
        raise ConfigError(f"model mean has {len(mean)} values but std has {len(std)}; give one per channel for both")
    if min(std) <= 0:
        raise ConfigError(f"model std values must be positive, got {_short(list(std))}")
    return cls(num_classes=num_classes, mean=mean, std=std, **checked)


def init_variables(module: nn.Module, key: jax.Array, image_shape: tuple[int, ...]) -> dict:
    """Initialise `module` for images of `image_shape` (H, W, C); a plain dict of collections."""
    shape = tuple(image_shape)
    if len(shape) != 3 or not all(_is_int(d) and d > 0 for d in shape):
        raise ConfigError(f"image shape must be three positive integers (height, width, channels), got {shape!r}")
    return flax.core.unfreeze(_jitted_init(module, key, shape))


@functools.partial(jax.jit, static_argnums=(0, 2))
def _jitted_init(module: nn.Module, key: jax.Array, shape: tuple[int, ...]) -> Any:
    # One XLA compilation beats compiling each initialiser op eagerly, and equal (hashable)
    # modules reuse it, e.g. when a sweep initialises the same model with several seeds.
    return module.init(key, jnp.zeros((1,) + shape, jnp.float32), train=False)


def make_logits_fn(module: nn.Module) -> Callable[[Any, jax.Array], jax.Array]:
    """A pure `logits(variables, x)` in evaluation mode (running BatchNorm statistics); jit-able."""

    def logits(variables: Any, x: jax.Array) -> jax.Array:
        return module.apply(variables, x, train=False)

    return logits


def _format_default(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


def describe_models() -> list[tuple[str, str]]:
    """(name, one-line description with options and defaults) for every model, sorted by name."""
    rows = []
    for name in sorted(MODELS):
        doc = (MODELS[name].__doc__ or "").strip().splitlines()
        summary = doc[0].strip() if doc else MODELS[name].__name__
        opts = ", ".join(f"{k}={_format_default(d)}" for k, (_, d) in model_options(name).items())
        rows.append((name, f"{summary} Options: {opts or '(none)'}."))
    return rows
