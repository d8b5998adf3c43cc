"""Feature squeezing (Xu, Evans & Qi, NDSS 2018) as an inference wrapper, with BPDA.

The squeezer runs before the model: ``bit-depth`` rounds every pixel to ``2**bits`` grey
levels, ``median`` replaces it by the median of its ``window × window`` neighbourhood
(per channel, edges reflected as ``scipy.ndimage.median_filter(mode="reflect")`` does, the
reference implementation's filter). Rounding has a zero gradient almost everywhere and the
median's gradient reaches one pixel per window, so gradient attacks on the wrapper itself
are blunted (gradient masking). The adaptive form is BPDA (Athalye, Carlini & Wagner, ICML
2018): the forward pass is the squeezed input, the backward pass the identity,
``x + stop_gradient(squeeze(x) − x)``.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from attacks import checks
from attacks.base import LogitsFn

METHODS: tuple[str, ...] = ("bit-depth", "median")


def reduce_bit_depth(x: jax.Array, bits: int) -> jax.Array:
    """Rounds ``x`` in [0, 1] to the nearest of ``2**bits`` evenly spaced levels."""
    top = 2**bits - 1
    return jnp.round(x * top) / top


def median_filter(x: jax.Array, window: int) -> jax.Array:
    """Per-channel median over ``window × window`` neighbourhoods of an NHWC batch.

    Equals ``scipy.ndimage.median_filter(x, size=(1, w, w, 1), mode="reflect")``: the edge
    is mirrored including the edge pixel (numpy's ``symmetric``), an even window covers
    ``w // 2`` pixels before the centre and ``(w − 1) // 2`` after it, and an even count
    takes the upper of the two middle values (rank ``w² // 2``), so the output is always a
    pixel of the input. Built from ``w²`` shifted slices and one sort (no Python loop at
    run time).
    """
    if window == 1:
        return x
    before, after = window // 2, (window - 1) // 2
    h, w = x.shape[1], x.shape[2]
    padded = jnp.pad(x, ((0, 0), (before, after), (before, after), (0, 0)), mode="symmetric")
    shifted = [padded[:, i:i + h, j:j + w, :] for i in range(window) for j in range(window)]
    return jnp.sort(jnp.stack(shifted, axis=-1), axis=-1)[..., window * window // 2]


@dataclasses.dataclass(frozen=True)
class Squeeze:
    """Feature squeezing: bit-depth reduction or a median filter before the model (BPDA adaptive).

    Attributes:
      base: config label of the training defense whose weights it wraps.
      method: ``bit-depth`` or ``median``.
      bits: bit depth of ``bit-depth`` (1 to 8; 1 is a binary image).
      window: side of the ``median`` filter's square window (2 and 3 in the paper).
    """

    numerics: ClassVar[int] = 1

    base: str = "standard"
    method: str = "bit-depth"
    bits: int = 4
    window: int = 2
    kind = "wrapper"

    def __post_init__(self):
        checks.check_choice("method", self.method, METHODS)
        checks.check_range("bits", self.bits, 1, 8)
        checks.check_range("window", self.window, 1, 9)

    def squeeze(self, x: jax.Array) -> jax.Array:
        """The squeezed batch (same shape, still in [0, 1])."""
        if self.method == "bit-depth":
            return reduce_bit_depth(x, self.bits)
        return median_filter(x, self.window)

    def wrap(self, logits_fn: LogitsFn) -> LogitsFn:
        """The defended model: ``logits_fn(params, squeeze(x))``."""
        return lambda params, x: logits_fn(params, self.squeeze(x))

    def adaptive(self, logits_fn: LogitsFn) -> LogitsFn:
        """BPDA: the same logits, with the squeezer's Jacobian replaced by the identity."""
        return lambda params, x: logits_fn(params, x + jax.lax.stop_gradient(self.squeeze(x) - x))
