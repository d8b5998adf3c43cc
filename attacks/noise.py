"""Uniform noise in the ε-ball: the floor every real attack must beat.

Not an attack anyone should report as robustness, but the sanity check Carlini et al. (2019)
ask for: a white-box attack that breaks fewer examples than random noise of the same budget is
broken, or the model masks its gradient. Each of ``samples`` draws is uniform in the ε-ball
∩ [0, 1] around x (``threat.random_init``: the cube for L∞, the ball for L2 and L1); per
example the first draw that fools the model wins, else the highest-loss one. Cost: ``samples``
forward passes.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax

from attacks import base, checks, losses, threat


@dataclasses.dataclass(frozen=True)
class Noise:
    """Uniform random noise of norm at most ε (``samples`` draws, the best per example).

    Attributes:
      norm: threat model, ``linf``, ``l2`` or ``l1``.
      samples: independent draws per example.
    """

    numerics: ClassVar[int] = 1

    norm: str = "linf"
    samples: int = 1

    def __post_init__(self):
        checks.check_choice("norm", self.norm, threat.NORMS)
        checks.check_positive("samples", self.samples)

    @base.compiled
    def __call__(self, logits_fn, params, x, y, eps, key, target=None):
        del target

        def one(k):
            z = threat.random_init(k, x, eps, self.norm)
            logits = logits_fn(params, z)
            return z, base.score(losses.is_adversarial(logits, y, False),
                                 losses.cross_entropy(logits, y))

        zs, scores = jax.vmap(one)(jax.random.split(key, self.samples))
        return jax.lax.stop_gradient(base.best_over_restarts(zs, scores))
