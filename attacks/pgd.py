"""Projected gradient descent (Madry et al., 2018; BIM without random start).

The loop is a ``lax.fori_loop`` of steepest-ascent steps (an optax rule) and projections.
Every iterate's logits come for free with its gradient, so the kernel keeps, per example,
the first iterate that fools the model (else the highest-objective one); restarts are a
``vmap`` axis and the best restart per example wins. Cost: steps × restarts forward +
input-gradient passes and one extra forward. The kept point's logits are returned with it
(:meth:`PGD.run_scored`), so the sweep engine scores it without another forward pass.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from attacks import base, checks, fastpath, losses, threat
from attacks import steps as step_rules


@dataclasses.dataclass(frozen=True)
class PGD:
    """PGD (Madry et al.) / BIM: iterated steepest ascent, projected onto the ε-ball ∩ [0, 1].

    Attributes:
      norm: threat model, ``linf``, ``l2`` or ``l1``.
      steps: iterations per restart.
      restarts: independent runs; the best per example is returned.
      rel_step_size: step size as a fraction of ε (default 2.5 / steps, Madry et al.).
      step_size: absolute step size; overrides ``rel_step_size`` when set.
      random_start: start from a uniform point of the ball (PGD) or from x (BIM).
      loss: ``ce``, ``margin`` or ``dlr`` (see attacks/losses.py).
      targeted: push towards a target class instead of away from the label.
      target: how targets are picked when ``targeted``: ``random`` or ``least-likely``.
      unroll: loop unrolling. ``0`` (auto) unrolls fully on CPU up to 50 steps and not at
        all otherwise. XLA:CPU runs a plain convolution's input gradient ~10× slower inside
        a while loop; robustax's models use ``models.layers.Conv``, which avoids that, so
        rolled loops are as fast for them (measured: PGD-20 1.70 s rolled and unrolled), but
        a user's model with ``flax.linen.Conv`` is not, hence unrolling where compile time
        allows.
    """

    numerics: ClassVar[int] = 2  # 2: DLR's plateau gradient exactly zero (losses.dlr)

    norm: str = "linf"
    steps: int = 10
    restarts: int = 1
    rel_step_size: float | None = None
    step_size: float | None = None
    random_start: bool = True
    loss: str = "ce"
    targeted: bool = False
    target: str = "random"
    unroll: int = 0

    def __post_init__(self):
        checks.check_choice("norm", self.norm, threat.NORMS)
        checks.check_choice("loss", self.loss, losses.LOSSES)
        checks.check_choice("target", self.target, losses.TARGET_MODES)
        checks.check_count("steps", self.steps, checks.MAX_STEPS)
        checks.check_count("restarts", self.restarts, checks.MAX_RESTARTS)
        checks.check_positive("unroll", self.unroll, allow_zero=True)
        for name in ("rel_step_size", "step_size"):
            if getattr(self, name) is not None:
                checks.check_positive(name, getattr(self, name))

    def _step_size(self, e):
        if self.step_size is not None:
            return jnp.full_like(e, self.step_size)
        rel = self.rel_step_size if self.rel_step_size is not None else 2.5 / self.steps
        return rel * e

    def _one_run(self, logits_fn, params, x, labels, eps, key, y=None):
        y = labels if y is None else y  # the true labels (labels: the targets when targeted)
        e = threat.per_example(eps, x)
        rule = step_rules.steepest_ascent(self.norm, self._step_size(e))

        def obj_and_logits(z):
            logits = logits_fn(params, z)
            per_ex = losses.objective(logits, labels, self.loss, self.targeted)
            return jnp.sum(per_ex), (per_ex, logits)

        grad_fn = jax.grad(obj_and_logits, has_aux=True)
        x0 = threat.random_init(key, x, eps, self.norm) if self.random_start else x
        never = jnp.full(x.shape[:1], -1, jnp.int32)
        # The kept point's logits travel with it (NaN until a point is kept: a model whose
        # every logit is NaN leaves them NaN, and the engine's finiteness check reports it).
        k = jax.eval_shape(lambda z: logits_fn(params, z), x0).shape[-1]
        no_logits = jnp.full(x.shape[:1] + (k,), jnp.nan, jnp.float32)
        init = (x0, rule.init(x0), x0, jnp.full(x.shape[:1], -jnp.inf, x.dtype), no_logits,
                never)

        def body(i, carry):
            z, opt_state, x_best, s_best, l_best, first = carry
            g, (obj, logits) = grad_fn(z)
            success = losses.is_adversarial(logits, labels, self.targeted)
            # The record is the mask's event, misclassified (targeted: at any class but y).
            first = jnp.where((first < 0) & (jnp.argmax(logits, -1) != y), i, first)
            x_best, s_best, l_best = base.keep_better(
                (x_best, s_best, l_best),
                (z, base.score(success, obj), logits.astype(jnp.float32)))
            update, opt_state = rule.update(g, opt_state)
            z = threat.project(z + update, x, eps, self.norm)
            return z, opt_state, x_best, s_best, l_best, first

        cpu = jax.default_backend() == "cpu"
        unroll = self.unroll or (self.steps if cpu and self.steps <= 50 else 1)
        z, _, x_best, s_best, l_best, first = jax.lax.fori_loop(0, self.steps, body, init,
                                                                 unroll=unroll)
        logits = logits_fn(params, z)
        success = losses.is_adversarial(logits, labels, self.targeted)
        first = jnp.where((first < 0) & (jnp.argmax(logits, -1) != y), self.steps, first)
        last = base.score(success, losses.objective(logits, labels, self.loss, self.targeted))
        return (*base.keep_better((x_best, s_best, l_best),
                                  (z, last, logits.astype(jnp.float32))), first)

    @base.compiled
    def run_scored(self, logits_fn, params, x, y, eps, key, target=None):
        """``(x_adv, {"first_fooled_step": int32 [B]}, logits)``: per example, the first
        iterate that the model misclassified (the mask's event, targeted or not; 0: the
        start, ``k``: after ``k`` steps, the earliest over restarts; -1: none did), so one
        run gives robust accuracy after every number of steps of this schedule (the step size
        stays that of ``steps``); ``logits``: the model's logits at ``x_adv``, computed with
        its gradient (no extra pass)."""
        logits_fn = fastpath.fast(logits_fn)
        k_target, k_runs = jax.random.split(key)
        labels = losses.attack_labels(self, logits_fn, params, x, y, k_target, target)
        keys = jax.random.split(k_runs, self.restarts)
        if self.restarts == 1:
            x_adv, _, logits, first = self._one_run(logits_fn, params, x, labels, eps, keys[0],
                                                    y)
        else:
            xs, scores, all_logits, firsts = jax.vmap(
                lambda k: self._one_run(logits_fn, params, x, labels, eps, k, y))(keys)
            x_adv = base.best_over_restarts(xs, scores)
            logits = base.best_over_restarts(all_logits, scores)
            big = jnp.iinfo(jnp.int32).max
            first = jnp.min(jnp.where(firsts < 0, big, firsts), axis=0)
            first = jnp.where(first == big, -1, first)
        return (jax.lax.stop_gradient(x_adv), {"first_fooled_step": first},
                jax.lax.stop_gradient(logits))

    def run(self, logits_fn, params, x, y, eps, key, target=None):
        """``(x_adv, {"first_fooled_step": int32 [B]})``: :meth:`run_scored` without the
        logits."""
        return self.run_scored(logits_fn, params, x, y, eps, key, target)[:2]

    def __call__(self, logits_fn, params, x, y, eps, key, target=None):
        return self.run(logits_fn, params, x, y, eps, key, target)[0]
