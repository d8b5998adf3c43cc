"""What every attack shares: the kernel signature and the best-iterate bookkeeping."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ClassVar, Protocol, runtime_checkable

import jax
import jax.numpy as jnp

from attacks import threat

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


@runtime_checkable
class Recording(Protocol):
    """A gradient or query attack that also returns per-example records:
    ``run(logits_fn, params, x, y, eps, key) -> (x_adv, info)`` (the step at which each example
    was first fooled, queries used, the cascade stage that broke it), from which the checklist
    draws its curves. Its ``__call__`` returns ``run(...)[0]``."""

    def run(self, logits_fn: LogitsFn, params: Any, x: jax.Array, y: jax.Array,
            eps: jax.Array, key: jax.Array, target: jax.Array | None = None) -> tuple: ...


@runtime_checkable
class Scored(Protocol):
    """A :class:`Recording` attack that also returns the model's logits at the point it
    returns, as it computed them while searching: ``run_scored(logits_fn, params, x, y, eps,
    key) -> (x_adv, info, logits)`` with ``logits = logits_fn(params, x_adv)`` ([B, K]; NaN
    where the attack never evaluated its point). An evaluator that scores on the function the
    attack ran on needs no second forward pass over the adversarial points."""

    def run_scored(self, logits_fn: LogitsFn, params: Any, x: jax.Array, y: jax.Array,
                   eps: jax.Array, key: jax.Array, target: jax.Array | None = None
                   ) -> tuple: ...


@runtime_checkable
class Cascade(Protocol):
    """An attack made of stages (AutoAttack): ``stages() -> [(name, attack), ...]``, which an
    evaluator may run one after the other on the points still robust, with the same result."""

    def stages(self) -> list[tuple[str, Any]]: ...


@runtime_checkable
class ModelBlind(Protocol):
    """A transformation that never looks at the model (common corruptions):
    ``transform(x, eps, key) -> x'`` with ``eps`` its severity. Not adversarial: an example
    counts as correct when the model classifies ``x'`` correctly, whatever it does on ``x``,
    and ``x'`` need not lie in any ball around ``x`` (only in [0, 1])."""

    def transform(self, x: jax.Array, eps: jax.Array, key: jax.Array) -> jax.Array: ...


@runtime_checkable
class Trainable(Protocol):
    """A generator attack (AdvGAN): a recipe that is ``fit`` on a training split against a
    model and then ``bind``-ed to its trained variables, which gives an ordinary attack."""

    def init(self, key: jax.Array, x: jax.Array) -> Any: ...

    def fit(self, logits_fn: LogitsFn, params: Any, x_train: Any, y_train: Any, key: jax.Array,
            on_epoch: Callable | None = None) -> Any: ...

    def bind(self, variables: Any) -> Attack: ...


def compiled(method: Callable) -> Callable:
    """Runs an attack's entry point ``method(self, logits_fn, *arrays)`` as one compiled
    program when it is called from plain Python, and inline when it is traced.

    Called with concrete arrays (``attacks.PGD(steps=20)(logits_fn, params, x, y, eps, key)``),
    the attack is jitted once per (attack, ``logits_fn``) and the executable reused for later
    batches of the same shapes; run eagerly instead, JAX would compile the attack's loop anew
    at every call (measured: PGD-10 on the 28x28 ``cnn`` at batch 256, 2.85 s per eager call
    against 1.47 s compiled). Inside ``jit``/``vmap``/``grad`` (any argument is a tracer) the
    method is traced as written, so the sweep engine's programs are unchanged. An attack or
    ``logits_fn`` that cannot be hashed runs as written. At most 32 compiled attacks are kept
    (least recently used first out), so a loop over fresh lambdas cannot grow memory without end.
    """

    @functools.wraps(method)
    def call(self, logits_fn, *args, **kwargs):
        if any(isinstance(a, jax.core.Tracer) for a in jax.tree.leaves((args, kwargs))):
            return method(self, logits_fn, *args, **kwargs)
        try:
            fn = _jitted(method, self, logits_fn)
        except TypeError:  # unhashable: no cache key, run as written
            return method(self, logits_fn, *args, **kwargs)
        return fn(*args, **kwargs)

    return call


@functools.lru_cache(maxsize=32)
def _jitted(method: Callable, attack: Any, logits_fn: LogitsFn) -> Callable:
    return jax.jit(functools.partial(method, attack, logits_fn))


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
    """Per example, keeps ``(x, score, *rest)`` of the better of ``best`` and ``cand`` (by
    score; ``rest``: arrays that go with the point, such as its logits)."""
    x_best, s_best, *rest_best = best
    x_cand, s_cand, *rest_cand = cand
    better = s_cand > s_best

    def pick(c, b):
        return jnp.where(better.reshape((-1,) + (1,) * (b.ndim - 1)), c, b)

    return (pick(x_cand, x_best), jnp.where(better, s_cand, s_best),
            *(pick(c, b) for c, b in zip(rest_cand, rest_best, strict=True)))


def best_over_restarts(xs: jax.Array, scores: jax.Array) -> jax.Array:
    """Per example, the restart with the highest score; ``xs`` is [R, B, ...], ``scores`` [R, B]."""
    idx = jnp.argmax(scores, axis=0)
    return jnp.take_along_axis(xs, idx.reshape((1, -1) + (1,) * (xs.ndim - 2)), axis=0)[0]



def bisect_segment(x: jax.Array, x_adv: jax.Array, steps: int,
                   still_adversarial: Callable[[jax.Array, int], jax.Array],
                   project: Callable[[jax.Array], jax.Array] = lambda z: z) -> jax.Array:
    """The point closest to ``x`` on the segment ``[x, x_adv]`` that ``still_adversarial(z,
    i)`` (bool [B]; ``i``: the bisection step) accepts, after ``steps`` bisection steps on
    t ∈ [0, 1], per example; ``x_adv`` itself (t = 1) must be accepted or equal ``x``.
    Every probed point, and the result, goes through ``project``."""
    step = x_adv - x

    def body(i, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        ok = still_adversarial(project(x + threat.per_example(mid, x) * step), i)
        return jnp.where(ok, lo, mid), jnp.where(ok, mid, hi)

    ones = jnp.ones(x.shape[:1], x.dtype)
    _, hi = jax.lax.fori_loop(0, steps, body, (jnp.zeros_like(ones), ones))
    return project(x + threat.per_example(hi, x) * step)


def within_budget(x_adv: jax.Array, dist: jax.Array, x: jax.Array, eps: jax.Array,
                  norm: str) -> jax.Array:
    """A minimum-norm attack at a fixed budget: per example ``x_adv`` where both its recorded
    ``dist`` and its ``norm`` distance to ``x`` are ≤ ε (scalar or [B]), else ``x``."""
    e = threat.per_example(eps, x).reshape(-1)
    inside = (dist <= e) & (threat.distance(x_adv, x, norm) <= e)
    return jnp.where(inside.reshape((-1,) + (1,) * (x.ndim - 1)), x_adv, x)


class MinimumNorm:
    """Mixin of the minimum-norm attacks (C&W, DeepFool, FAB). They define
    ``minimize(logits_fn, params, x, y, key, target=None) -> (x_adv, dist)``; called as a
    fixed-budget attack they return :func:`within_budget` of it. The sweep engine runs
    ``minimize`` once and scores every ε from the one minimal example (``minimum_norm``)."""

    minimum_norm: ClassVar[bool] = True

    @compiled
    def __call__(self, logits_fn, params, x, y, eps, key, target=None):
        x_adv, dist = self.minimize(logits_fn, params, x, y, key, target)
        return within_budget(x_adv, dist, x, eps, self.norm)
