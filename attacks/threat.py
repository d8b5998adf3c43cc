"""Threat models: the ε-ball of a norm intersected with the [0, 1] box.

One projection, one random start and one steepest-ascent direction per norm, reused by
every attack. ε is an array (traced under jit), either a scalar or one value per example,
so one compiled program serves every budget and ``vmap`` runs many budgets at once.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

NORMS: tuple[str, ...] = ("linf", "l2", "l1")

_TINY = 1e-12


def per_example(eps: ArrayLike, x: jax.Array) -> jax.Array:
    """Broadcasts a scalar or per-example ε against a batch ``x`` of shape [B, ...]."""
    eps = jnp.asarray(eps, x.dtype)
    if eps.ndim == 0:
        return jnp.broadcast_to(eps, x.shape[:1]).reshape((-1,) + (1,) * (x.ndim - 1))
    return eps.reshape((-1,) + (1,) * (x.ndim - 1))


def _flat(x: jax.Array) -> jax.Array:
    return x.reshape(x.shape[0], -1)


def distance(x_adv: jax.Array, x: jax.Array, norm: str) -> jax.Array:
    """Per-example ``norm`` distance between two batches, shape [B]."""
    d = _flat(x_adv - x)
    if norm == "linf":
        return jnp.max(jnp.abs(d), axis=1)
    if norm == "l2":
        return jnp.sqrt(jnp.sum(d * d, axis=1))
    if norm == "l1":
        return jnp.sum(jnp.abs(d), axis=1)
    raise ValueError(f"unknown norm {norm!r}")


def _project_l1_ball(d: jax.Array, radius: jax.Array) -> jax.Array:
    """Euclidean projection of each row of ``d`` onto the L1 ball (Duchi et al., 2008)."""
    a = jnp.abs(d)
    u = -jnp.sort(-a, axis=1)
    css = jnp.cumsum(u, axis=1)
    k = jnp.arange(1, d.shape[1] + 1, dtype=d.dtype)
    cond = u - (css - radius) / k > 0
    rho = jnp.max(jnp.where(cond, k, 0.0), axis=1, keepdims=True)
    rho = jnp.maximum(rho, 1.0)
    theta = (jnp.take_along_axis(css, rho.astype(jnp.int32) - 1, axis=1) - radius) / rho
    proj = jnp.sign(d) * jnp.maximum(a - jnp.maximum(theta, 0.0), 0.0)
    inside = jnp.sum(a, axis=1, keepdims=True) <= radius
    return jnp.where(inside, d, proj)


def project(x_adv: jax.Array, x: jax.Array, eps: ArrayLike, norm: str) -> jax.Array:
    """Maps ``x_adv`` into the ε-ball around ``x`` and then into [0, 1].

    Clipping to the box after the ball projection never leaves the ball: the clip moves
    every coordinate towards ``x``'s, which already lies in the box.
    """
    e = per_example(eps, x)
    d = x_adv - x
    if norm == "linf":
        d = jnp.clip(d, -e, e)
    elif norm == "l2":
        n = jnp.sqrt(jnp.sum(_flat(d) ** 2, axis=1)).reshape(e.shape)
        d = d * jnp.minimum(1.0, e / jnp.maximum(n, _TINY))
    elif norm == "l1":
        d = _project_l1_ball(_flat(d), e.reshape(-1, 1)).reshape(x.shape)
    else:
        raise ValueError(f"unknown norm {norm!r}")
    return jnp.clip(x + d, 0.0, 1.0)


def steepest_direction(g: jax.Array, norm: str, l1_sparsity: float = 0.99) -> jax.Array:
    """The unit-``norm`` direction of steepest ascent for a linear function with gradient g.

    L∞: sign(g); L2: g / ‖g‖₂; L1: the sign of g on its largest-magnitude coordinates
    (the top ``1 - l1_sparsity`` fraction, at least one), scaled to unit L1 norm, as in
    the sparse L1 steps of Tramèr & Boneh (2019).
    """
    if norm == "linf":
        return jnp.sign(g)
    flat = _flat(g)
    if norm == "l2":
        # Rescale by the largest entry first: gradients of very confident examples can be
        # ~1e-15 (exact, see losses.py), and squaring them would underflow the norm.
        flat = flat / jnp.maximum(jnp.max(jnp.abs(flat), axis=1, keepdims=True),
                                  jnp.finfo(flat.dtype).tiny)
        n = jnp.sqrt(jnp.sum(flat * flat, axis=1, keepdims=True))
        return (flat / jnp.maximum(n, _TINY)).reshape(g.shape)
    if norm == "l1":
        k = max(1, int(math.ceil((1.0 - l1_sparsity) * flat.shape[1])))
        a = jnp.abs(flat)
        kth = jax.lax.top_k(a, k)[0][:, -1:]
        mask = (a >= kth) & (a > 0)
        count = jnp.maximum(jnp.sum(mask, axis=1, keepdims=True), 1)
        return (jnp.sign(flat) * mask / count).reshape(g.shape)
    raise ValueError(f"unknown norm {norm!r}")


def random_init(key: jax.Array, x: jax.Array, eps: ArrayLike, norm: str) -> jax.Array:
    """A random point of the ε-ball ∩ box around ``x``.

    L∞: uniform in the cube; L2: uniform in the ball (Gaussian direction, radius ε·U^(1/d));
    L1: a Laplace direction scaled to radius ε·U^(1/d).
    """
    e = per_example(eps, x)
    if norm == "linf":
        d = jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0) * e
    else:
        k_dir, k_rad = jax.random.split(key)
        if norm == "l2":
            z = jax.random.normal(k_dir, x.shape, x.dtype)
        elif norm == "l1":
            z = jax.random.laplace(k_dir, x.shape, x.dtype)
        else:
            raise ValueError(f"unknown norm {norm!r}")
        dim = math.prod(x.shape[1:])
        r = jax.random.uniform(k_rad, e.shape, x.dtype) ** (1.0 / dim)
        z_norm = distance(z, jnp.zeros_like(z), norm).reshape(e.shape)
        d = z / jnp.maximum(z_norm, _TINY) * r * e
    return project(x + d, x, eps, norm)
