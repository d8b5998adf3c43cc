"""What every attack shares: the kernel signature and the best-iterate bookkeeping."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import jax
import jax.numpy as jnp

LogitsFn = Callable[[Any, jax.Array], jax.Array]
"""``logits_fn(params, x) -> logits``: a pure function of a params pytree and a batch."""


class Attack(Protocol):
    """A frozen dataclass of static hyper-parameters with a pure call.

    ``attack(logits_fn, params, x, y, eps, key) -> x_adv``: ``x`` is a float32 NHWC batch
    in [0, 1], ``y`` int32 labels, ``eps`` a traced scalar (or per-example array). The
    result is ``stop_gradient``-ed and inside the ``norm`` ε-ball around ``x`` and [0, 1].
    Targeted attacks take optional ``target`` labels; without them they pick their own.
    """

    norm: str

    def __call__(
        self,
        logits_fn: LogitsFn,
        params: Any,
        x: jax.Array,
        y: jax.Array,
        eps: jax.Array,
        key: jax.Array,
        target: jax.Array | None = None,
    ) -> jax.Array: ...


def apply_logits(logits_fn: LogitsFn, params: Any, x: jax.Array, key: jax.Array) -> jax.Array:
    """Logits of a possibly random model: ``logits_fn(params, x, key)`` when the function is
    marked ``logits_fn.random = True`` (a randomized defense, attacked with EOT), else
    ``logits_fn(params, x)``."""
    if getattr(logits_fn, "random", False):
        return logits_fn(params, x, key)
    return logits_fn(params, x)


def score(success: jax.Array, obj: jax.Array) -> jax.Array:
    """Orders candidate examples: any success beats any failure, then higher objective."""
    return jnp.where(success, jnp.inf, obj)


def keep_better(best: tuple, cand: tuple) -> tuple:
    """Per example, keeps ``(x, score)`` of the better of ``best`` and ``cand``."""
    x_best, s_best = best
    x_cand, s_cand = cand
    better = s_cand > s_best
    mask = better.reshape((-1,) + (1,) * (x_best.ndim - 1))
    return jnp.where(mask, x_cand, x_best), jnp.where(better, s_cand, s_best)


def best_over_restarts(xs: jax.Array, scores: jax.Array) -> jax.Array:
    """Per example, the restart with the highest score; ``xs`` is [R, B, ...], ``scores`` [R, B]."""
    idx = jnp.argmax(scores, axis=0)
    return jnp.take_along_axis(xs, idx.reshape((1, -1) + (1,) * (xs.ndim - 2)), axis=0)[0]
