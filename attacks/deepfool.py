"""DeepFool (Moosavi-Dezfooli et al., CVPR 2016): a minimum-norm attack by linearisation.

At the current point every decision function f_k = z_k − z_y (k ≠ y) is linearised with its
input gradient w_k (the full input Jacobian: K backward passes), and the step goes to the
nearest of the K − 1 hyperplanes, in the threat norm: class l = argmin |f_k| / ‖w_k‖_dual and
r = (|f_l| + 1e-4) / ‖w_l‖_dual · u, with u = w_l/‖w_l‖₂ (L2) or sign(w_l) (L∞). Steps
accumulate into r_tot and the iterate is clip(x + (1 + overshoot)·r_tot, 0, 1), as in the
reference code (github.com/LTS4/DeepFool, overshoot on the total); each example stops as soon
as it is misclassified. On an affine model with the box not binding one step lands at
(1 + overshoot)·(|f_l| + 1e-4)/‖w_l‖_dual along the optimal direction: the exact minimal
distance up to the overshoot.

Cost: up to ``steps`` × (one forward pass + K backward passes); the loop ends when every
example of the batch is fooled (usually 2–4 steps).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from attacks import base, checks, threat

_ADD = 1e-4  # the reference's push past the hyperplane, in logit units


def _dual_norm(g: jax.Array, norm: str) -> jax.Array:
    if norm == "linf":
        return jnp.sum(jnp.abs(g), axis=-1)
    return jnp.sqrt(jnp.sum(g * g, axis=-1))


@dataclasses.dataclass(frozen=True)
class DeepFool(base.MinimumNorm):
    """DeepFool: repeated steps to the nearest linearised decision boundary (L2 or L∞).

    A minimum-norm attack: :meth:`minimize` returns, per example, the adversarial example
    found and its distance; ``__call__`` keeps it where it lies inside the ε-ball.

    Attributes:
      norm: threat model, ``l2`` or ``linf``.
      steps: at most this many linearisation steps.
      overshoot: the accumulated step is scaled by 1 + overshoot (the reference's 0.02).
    """

    numerics: ClassVar[int] = 1

    norm: str = "l2"
    steps: int = 50
    overshoot: float = 0.02

    def __post_init__(self):
        checks.check_choice("norm", self.norm, ("linf", "l2"))
        checks.check_positive("steps", self.steps)
        checks.check_positive("overshoot", self.overshoot, allow_zero=True)

    def _step(self, logits_fn, params, z, y, key):
        """(logits at z, the step r [B, D] to the nearest linearised boundary)."""
        bsz = z.shape[0]
        out, vjp = jax.vjp(lambda v: base.apply_logits(logits_fn, params, v, key), z)
        k = out.shape[-1]
        one_y = jax.nn.one_hot(y, k, dtype=out.dtype)
        cot = jnp.eye(k, dtype=out.dtype)[:, None, :] - one_y[None]              # [K, B, K]
        w = jax.vmap(lambda ct: vjp(ct)[0])(cot).reshape(k, bsz, -1)            # ∇(z_k − z_y)
        f = (out - jnp.sum(out * one_y, axis=1, keepdims=True)).T                # [K, B]
        dual = _dual_norm(w, self.norm)
        ratio = jnp.abs(f) / jnp.maximum(dual, jnp.finfo(out.dtype).tiny)
        ratio = jnp.where(one_y.T > 0, jnp.inf, ratio)
        nearest = jnp.argmin(ratio, axis=0)
        f_l = jnp.take_along_axis(f, nearest[None], 0)[0]
        w_l = jnp.take_along_axis(w, nearest[:, None][None], 0)[0]
        d_l = jnp.maximum(jnp.take_along_axis(dual, nearest[None], 0)[0], jnp.finfo(out.dtype).tiny)
        size = (jnp.abs(f_l) + _ADD) / d_l
        if self.norm == "l2":
            r = (size / d_l)[:, None] * w_l
        else:
            r = size[:, None] * jnp.sign(w_l)
        return out, r

    @base.compiled
    def minimize(self, logits_fn, params, x, y, key, target=None):
        """Per example the adversarial example found and its ``norm`` distance to x.

        Returns (x_adv, dist): dist float32 [B] is ``threat.distance(x_adv, x, norm)``, 0 where
        x is misclassified already (x_adv = x), ``inf`` where ``steps`` did not suffice
        (x_adv = x).
        """
        del target  # untargeted only
        bsz = x.shape[0]
        x0 = x.reshape(bsz, -1)

        def point(r_tot):
            return jnp.clip(x0 + (1.0 + self.overshoot) * r_tot, 0.0, 1.0).reshape(x.shape)

        def cond(carry):
            i, _, active = carry
            return (i < self.steps) & jnp.any(active)

        def body(carry):
            i, r_tot, active = carry
            logits, r = self._step(logits_fn, params, point(r_tot), y, jax.random.fold_in(key, i))
            active = active & (jnp.argmax(logits, axis=-1) == y)
            r_tot = jnp.where(active[:, None], r_tot + r, r_tot)
            return i + 1, r_tot, active

        init = (jnp.int32(0), jnp.zeros_like(x0), jnp.ones((bsz,), bool))
        _, r_tot, _ = jax.lax.while_loop(cond, body, init)
        x_adv = point(r_tot)
        logits = base.apply_logits(logits_fn, params, x_adv, jax.random.fold_in(key, self.steps))
        fooled = jnp.argmax(logits, axis=-1) != y
        x_adv = jnp.where(fooled.reshape((-1,) + (1,) * (x.ndim - 1)), x_adv, x)
        dist = threat.distance(x_adv, x, self.norm).astype(jnp.float32)
        dist = jnp.where(fooled, dist, jnp.inf)
        return jax.lax.stop_gradient(x_adv), jax.lax.stop_gradient(dist)
