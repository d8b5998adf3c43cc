"""FGSM (Goodfellow et al., 2015) and R+FGSM with a random start (Tramèr et al., 2018)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from attacks import base, checks, fastpath, losses, threat


@dataclasses.dataclass(frozen=True)
class FGSM:
    """FGSM / R+FGSM: one steepest-ascent step of size ε (or (1 − start_frac)·ε after a random start).

    Attributes:
      norm: threat model, ``linf``, ``l2`` or ``l1``.
      loss: ``ce``, ``margin`` or ``dlr`` (see attacks/losses.py).
      random_start: start from x + start_frac·ε·(random unit direction), as in R+FGSM.
      start_frac: the share of ε spent on the random start.
      targeted: push towards a target class instead of away from the label.
      target: how targets are picked when ``targeted``: ``random`` or ``least-likely``.
    """

    numerics: ClassVar[int] = 2  # 2: DLR's plateau gradient exactly zero (losses.dlr)

    norm: str = "linf"
    loss: str = "ce"
    random_start: bool = False
    start_frac: float = 0.5
    targeted: bool = False
    target: str = "random"

    def __post_init__(self):
        checks.check_choice("norm", self.norm, threat.NORMS)
        checks.check_choice("loss", self.loss, losses.LOSSES)
        checks.check_choice("target", self.target, losses.TARGET_MODES)
        checks.check_range("start_frac", self.start_frac, 0.0, 1.0, closed_high=False)

    @base.compiled
    def __call__(self, logits_fn, params, x, y, eps, key, target=None):
        logits_fn = fastpath.fast(logits_fn)
        k_start, k_target = jax.random.split(key)
        labels = losses.attack_labels(self, logits_fn, params, x, y, k_target, target)

        def obj(z):
            return jnp.sum(losses.objective(logits_fn(params, z), labels, self.loss, self.targeted))

        e = threat.per_example(eps, x)
        x0, step = x, e
        if self.random_start:
            noise = jax.random.normal(k_start, x.shape, x.dtype)
            x0 = threat.project(x + self.start_frac * e * threat.steepest_direction(noise, self.norm),
                                x, eps, self.norm)
            step = (1.0 - self.start_frac) * e
        g = jax.grad(obj)(x0)
        x_adv = threat.project(x0 + step * threat.steepest_direction(g, self.norm), x, eps, self.norm)
        return jax.lax.stop_gradient(x_adv)
