"""Randomized input transforms as an inference wrapper, with EOT as the adaptive form.

``resize-pad`` (Xie et al., ICLR 2018, "Mitigating adversarial effects through
randomization"): every image is resized to a random ``s × s`` (``s`` uniform over the
integers in ``[⌈min_scale · H⌉, H]``, bilinear) and placed at a random offset on a zero
canvas of the original size; the reference enlarges and pads to a larger canvas, which our
fixed-input models cannot take, so we shrink and pad instead. ``noise``: Gaussian noise of
standard deviation ``sigma``, clipped to [0, 1].

Randomness is an explicit key: :meth:`RandomTransform.wrap` returns
``logits_fn(params, x, key)`` marked ``random = True`` (the convention of
``attacks.base.apply_logits``), and every example of a batch draws its own transform from
``split(key, B)``. The wrapped model may itself be a plain two-argument
``logits_fn(params, x)``. Who supplies the key (per attack query, per scored example) is the
caller's business; ``bench.sweep.engine`` derives every key from the cell's key, so a sweep is
deterministic for its seed.

The adaptive form is EOT (Athalye et al., ICML 2018), :func:`eot`: a random logits function
averaged over ``n`` draws, so any attack that differentiates it (PGD, FGSM, APGD, FAB) steps
along the average over draws of the per-draw input gradients. It averages logits, not loss
gradients: the loss gradient is taken once at the averaged logits, which makes EOT a
property of the model (every attack, unchanged) rather than of one attack's loop; APGD's
``eot_iter`` (loss-gradient averaging) can be stacked on top.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar
import math

import jax
import jax.numpy as jnp

from attacks import checks
from attacks.base import LogitsFn, apply_logits

METHODS: tuple[str, ...] = ("resize-pad", "noise")


def placement_matrix(size: int, scale: jax.Array, offset: jax.Array) -> jax.Array:
    """``[size, size]`` weights of output pixel i on input pixel j along one axis when the
    input is scaled by ``scale`` ≤ 1 and shifted by ``offset`` pixels: a triangle (bilinear)
    kernel widened by ``1 / scale`` (antialiasing), rows normalised, zero for output pixels
    whose centre falls outside the placed image. The same weights as
    ``jax.image.scale_and_translate(..., method="linear")``, as a matrix so a transform is
    two small matrix products (it compiles in a fraction of the time under ``vmap``)."""
    i = jnp.arange(size, dtype=scale.dtype)
    sample = (i + 0.5 - offset) / scale - 0.5  # input coordinate of output pixel i's centre
    dist = jnp.abs(sample[:, None] - i[None, :]) * scale  # kernel support 1 / scale
    w = jnp.maximum(0.0, 1.0 - dist)
    total = jnp.sum(w, axis=1, keepdims=True)
    w = jnp.where(total > 0, w / jnp.where(total > 0, total, 1.0), 0.0)
    return jnp.where(((sample >= -0.5) & (sample <= size - 0.5))[:, None], w, 0.0)


def resize_and_pad(x: jax.Array, key: jax.Array, min_scale: float) -> jax.Array:
    """Each image of the NHWC batch shrunk by a random factor ``s / min(H, W)`` (``s`` a
    whole number of pixels in ``[⌈min_scale · min(H, W)⌉, min(H, W)]``, bilinear with
    antialiasing) and placed at a random whole-pixel offset on a zero canvas of its own size;
    ``s = min(H, W)`` is the identity."""
    b, h, w = x.shape[0], x.shape[1], x.shape[2]
    side = min(h, w)
    low = min(max(math.ceil(min_scale * side), 1), side)

    def one(image, k):
        # One draw of three uniforms in [0, 1) (one PRNG call: under jit every call is a
        # copy of the hash function, and attacks make many queries), each turned into a
        # whole number uniformly: the size, then the offsets that keep the image inside.
        u_size, u_y, u_x = jax.random.uniform(k, (3,))
        pick = lambda u, n: jnp.minimum(jnp.floor(u * n).astype(jnp.int32), n - 1)  # noqa: E731
        s = low + pick(u_size, side - low + 1)
        scale = s.astype(image.dtype) / side  # both sides, so the aspect ratio is kept
        oy = pick(u_y, h - jnp.round(h * scale).astype(jnp.int32) + 1)
        ox = pick(u_x, w - jnp.round(w * scale).astype(jnp.int32) + 1)
        rows = placement_matrix(h, scale, oy.astype(image.dtype))
        cols = placement_matrix(w, scale, ox.astype(image.dtype))
        return jnp.einsum("ah,bw,hwc->abc", rows, cols, image)

    return jax.vmap(one)(x, jax.random.split(key, b))


def gaussian_noise(x: jax.Array, key: jax.Array, sigma: float) -> jax.Array:
    """``clip(x + sigma · N(0, 1), 0, 1)``, independent noise per pixel and example."""
    return jnp.clip(x + sigma * jax.random.normal(key, x.shape, x.dtype), 0.0, 1.0)


def eot(logits_fn: LogitsFn, draws: int) -> LogitsFn:
    """Expectation over transformation: the mean of a random ``logits_fn(params, x, key)``
    over ``draws`` keys ``split(key, draws)``. Its input gradient is the mean of the draws'
    (``draws = 1``: exactly the gradient of the draw ``split(key, 1)[0]``). The result is
    random itself (``random = True``), so callers give it fresh keys as they would the model.
    """
    def averaged(params, x, key):
        keys = jax.random.split(key, draws)
        return jnp.mean(jax.vmap(lambda k: logits_fn(params, x, k))(keys), axis=0)

    averaged.random = True
    return averaged


@dataclasses.dataclass(frozen=True)
class RandomTransform:
    """Random input transform: resize-and-pad (Xie et al. 2018) or Gaussian noise; EOT adaptive.

    Attributes:
      base: config label of the training defense whose weights it wraps.
      method: ``resize-pad`` or ``noise``.
      min_scale: ``resize-pad``: smallest side after resizing, as a fraction of the image's.
      sigma: ``noise``: standard deviation of the pixel noise.
      eot_draws: draws the adaptive (EOT) form averages per query.
    """

    numerics: ClassVar[int] = 1
    random: ClassVar[bool] = True  # its logits depend on a key (defenses.base.is_random)

    base: str = "standard"
    method: str = "resize-pad"
    min_scale: float = 0.75
    sigma: float = 0.1
    eot_draws: int = 10
    kind = "wrapper"

    def __post_init__(self):
        checks.check_choice("method", self.method, METHODS)
        checks.check_range("min_scale", self.min_scale, 0.0, 1.0)
        checks.check_positive("min_scale", self.min_scale)
        checks.check_positive("sigma", self.sigma)
        checks.check_positive("eot_draws", self.eot_draws)

    def transform(self, x: jax.Array, key: jax.Array) -> jax.Array:
        """One random draw of the transform for every image of the batch."""
        if self.method == "resize-pad":
            return resize_and_pad(x, key, self.min_scale)
        return gaussian_noise(x, key, self.sigma)

    def wrap(self, logits_fn: LogitsFn) -> LogitsFn:
        """The defended model ``f(params, x, key)`` (``random = True``): the model on one draw
        of the transform. A random wrapped model gets its own key, independent of the draw."""
        if not getattr(logits_fn, "random", False):
            def defended(params, x, key):
                return logits_fn(params, self.transform(x, key))
        else:
            def defended(params, x, key):
                k_transform, k_model = jax.random.split(key)
                return apply_logits(logits_fn, params, self.transform(x, k_transform), k_model)

        defended.random = True
        return defended

    def adaptive(self, logits_fn: LogitsFn) -> LogitsFn:
        """EOT: the defended model averaged over ``eot_draws`` draws per query."""
        return eot(self.wrap(logits_fn), self.eot_draws)
