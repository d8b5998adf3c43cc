"""Small building blocks shared by the models."""

from collections.abc import Sequence

import jax.numpy as jnp

from bench.errors import ConfigError


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


def normalize(x: jnp.ndarray, mean: Sequence[float], std: Sequence[float]) -> jnp.ndarray:
    """Per-channel ``(x - mean) / std`` on the last axis, in float32.

    Models call this first so that attacks work in [0, 1] pixel space. ``mean`` and ``std``
    hold one value per channel, or one value for all channels.
    """
    x = jnp.asarray(x, jnp.float32)
    channels = x.shape[-1]
    for label, values in (("mean", mean), ("std", std)):
        if len(values) not in (1, channels):
            raise ConfigError(
                f"model {label} has {len(values)} values but the images have {channels} "
                f"channel(s); give one value per channel"
            )
    mean_arr = jnp.asarray(mean, jnp.float32)
    std_arr = jnp.asarray(std, jnp.float32)
    return (x - mean_arr) / std_arr
