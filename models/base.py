"""Initialising a model and turning it into the pure ``logits_fn(variables, x)`` attacks take."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp


def init_variables(module: nn.Module, key: jax.Array, image_shape: tuple[int, ...]) -> dict:
    """Initialise ``module`` for images of ``image_shape`` (H, W, C); a plain dict of collections."""
    shape = tuple(image_shape)
    if len(shape) != 3 or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                                  for d in shape):
        raise ValueError(f"image shape must be three positive integers (height, width, channels), "
                         f"got {shape!r}")
    return flax.core.unfreeze(_jitted_init(module, key, shape))


@functools.partial(jax.jit, static_argnums=(0, 2))
def _jitted_init(module: nn.Module, key: jax.Array, shape: tuple[int, ...]) -> Any:
    # One XLA compilation beats compiling each initialiser op eagerly, and equal (hashable)
    # modules reuse it, e.g. when a sweep initialises the same model with several seeds.
    return module.init(key, jnp.zeros((1,) + shape, jnp.float32), train=False)


def make_logits_fn(module: nn.Module) -> Callable[[Any, jax.Array], jax.Array]:
    """A pure ``logits(variables, x)`` in evaluation mode (running BatchNorm statistics); jit-able."""

    def logits(variables: Any, x: jax.Array) -> jax.Array:
        return module.apply(variables, x, train=False)

    return logits
