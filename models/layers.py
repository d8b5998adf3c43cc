"""Small building blocks shared by the models.

The one exception to "models import nothing of ours": :data:`Conv` takes its convolution
from ``attacks.fastpath``, the custom-JVP convolution whose input gradient stays fast inside
``lax.fori_loop`` (see there). It is one primitive with one implementation: the fast path
emits it when it re-traces any user's model, and robustax's own models call it directly, so
their values and gradients are the same whichever way a model is run. ``attacks.fastpath``
imports nothing of ours, so this edge makes no cycle; tests/test_structure.py allows
exactly this module edge and no other. (Python runs ``attacks/__init__`` first, so importing
the models also imports the attack kernels and applies ``attacks.xla_flags``, as importing
``bench`` always did.)
"""

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from attacks.fastpath import conv


def max_pool_2x2(x: jnp.ndarray) -> jnp.ndarray:
    """2x2 stride-2 VALID max pooling of an NHWC batch.

    Same output as ``nn.max_pool(x, (2, 2), (2, 2))`` (odd H/W lose their last row/column),
    but written as ``jnp.maximum`` over the four strided slices because XLA's CPU gradient of
    ``reduce_window`` max pooling is several times slower, and attacks differentiate through it.
    At ties the gradient is shared between the tied inputs instead of going to one of them.
    """
    h, w = (x.shape[1] // 2) * 2, (x.shape[2] // 2) * 2
    x = x[:, :h, :w, :]
    top = jnp.maximum(x[:, 0::2, 0::2, :], x[:, 0::2, 1::2, :])
    bottom = jnp.maximum(x[:, 1::2, 0::2, :], x[:, 1::2, 1::2, :])
    return jnp.maximum(top, bottom)


ACTIVATIONS = {"relu": nn.relu, "swish": nn.swish}


def activation_fn(name: str):
    """``relu``, or ``swish`` = x·sigmoid(x); ValueError naming the choices otherwise."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation = {name!r} is unknown; choose one of: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def normalize(x: jnp.ndarray, mean: Sequence[float], std: Sequence[float]) -> jnp.ndarray:
    """Per-channel ``(x - mean) / std`` on the last axis, in float32.

    Models call this first so that attacks work in [0, 1] pixel space. ``mean`` and ``std``
    hold one value per channel, or one value for all channels.
    """
    x = jnp.asarray(x, jnp.float32)
    channels = x.shape[-1]
    for label, values in (("mean", mean), ("std", std)):
        if len(values) not in (1, channels):
            raise ValueError(
                f"model {label} has {len(values)} values but the images have {channels} "
                f"channel(s); give one value per channel"
            )
    mean_arr = jnp.asarray(mean, jnp.float32)
    std_arr = jnp.asarray(std, jnp.float32)
    return (x - mean_arr) / std_arr


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None):
    """``lax.conv_general_dilated`` with an input gradient that stays fast inside loops.

    Same outputs and gradients (bit-identical in tests); attacks written with ``lax.fori_loop``
    then run as fast rolled as unrolled on CPU (measured: PGD-20 rolled 2.16 s with this
    convolution, 16.8 s with ``flax.linen.Conv``). Forward mode (``jax.jvp``, ``jax.hessian``)
    works too. Grouped convolutions and non-default
    precision fall back to the plain operation.
    """
    if feature_group_count != 1 or batch_group_count != 1 or precision is not None or \
            preferred_element_type is not None:
        return jax.lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
            feature_group_count, batch_group_count, precision, preferred_element_type)
    dn = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    nd = lhs.ndim - 2
    pad = padding if isinstance(padding, str) else tuple(tuple(p) for p in padding)
    return conv(lhs, rhs, tuple(window_strides), pad, tuple(lhs_dilation or (1,) * nd),
                 tuple(rhs_dilation or (1,) * nd), dn)


Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)
"""``flax.linen.Conv`` using :func:`conv_general_dilated` (same parameters and names)."""
