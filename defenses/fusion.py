"""Fusion of a clean model M1 and an adversarially trained model M2 (a member wrapper).

Clean training buys accuracy, adversarial training robustness; fusion serves both from two
trained models (``members = [M1, M2]``, clean first):

- ``mix``: a weighted mixture of their outputs, ``weight`` on M1 and ``1 − weight`` on M2
  (of probabilities or logits, as :func:`defenses.ensemble.combine`). Differentiable:
  attacks take gradients through both models, and there is no adaptive form.
- ``route``: a detector decides per example which model answers. Its score is the models'
  disagreement: ``tv``, the total-variation distance ``½‖p₁ − p₂‖₁`` of their probabilities
  (in [0, 1]), or ``argmax``, 1 where their predicted classes differ, else 0. Where the
  score exceeds ``threshold`` (a suspected attack) M2 answers, elsewhere M1. The switch has
  no gradient, so an attack on it only follows the branch it is in and never learns that
  crossing the threshold changes the answer. The adaptive form is a straight-through gate
  (BPDA-style): the forward pass is the routed output, the backward pass that of the soft
  mixture ``(1 − g) p₁ + g p₂`` with ``g = sigmoid((tv − threshold) / temperature)``.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from attacks import checks
from attacks.base import LogitsFn
from defenses.ensemble import COMBINE, check_members, combine

MODES: tuple[str, ...] = ("mix", "route")
DETECTORS: tuple[str, ...] = ("tv", "argmax")


def total_variation(z1: jax.Array, z2: jax.Array) -> jax.Array:
    """``½ Σ_k |p₁ₖ − p₂ₖ|`` per example, the probabilities' total-variation distance."""
    return 0.5 * jnp.sum(jnp.abs(jax.nn.softmax(z1, -1) - jax.nn.softmax(z2, -1)), axis=-1)


@dataclasses.dataclass(frozen=True)
class Fusion:
    """Fusion of a clean M1 and an adversarially trained M2: mixture, or routing by disagreement.

    Attributes:
      members: ``[M1, M2]``: the clean model first, the adversarially trained one second
        (training-defense labels, or ``"<model>/<defense>"`` labels as for ``ensemble``).
      mode: ``mix`` (weighted mixture) or ``route`` (M2 where the detector fires, else M1).
      weight: ``mix``: the weight of M1 (M2 gets ``1 − weight``).
      combine: ``mix``: mix ``probs`` (probabilities; returned as their log) or ``logits``.
      detector: ``route``: the disagreement score, ``tv`` or ``argmax``.
      threshold: ``route``: M2 answers where the score exceeds it.
      temperature: ``route``, adaptive form: the width of the soft gate attacks differentiate.
    """

    numerics: ClassVar[int] = 1

    members: tuple[str, ...] = ("standard", "pgd-at")
    mode: str = "mix"
    weight: float = 0.5
    combine: str = "probs"
    detector: str = "tv"
    threshold: float = 0.5
    temperature: float = 0.1
    kind = "wrapper"

    def __post_init__(self):
        check_members(self.members, 2, "the clean model M1 first, the adversarially "
                                       "trained M2 second")
        checks.check_choice("mode", self.mode, MODES)
        checks.check_range("weight", self.weight, 0.0, 1.0)
        checks.check_choice("combine", self.combine, COMBINE)
        checks.check_choice("detector", self.detector, DETECTORS)
        checks.check_range("threshold", self.threshold, 0.0, 1.0)
        checks.check_positive("temperature", self.temperature)

    @property
    def needs_adaptive(self) -> bool:
        """Routing is not differentiable (an adaptive row); the mixture is."""
        return self.mode == "route"

    def score(self, z1: jax.Array, z2: jax.Array) -> jax.Array:
        """The detector's per-example score (higher: more suspicious)."""
        if self.detector == "argmax":
            return (jnp.argmax(z1, -1) != jnp.argmax(z2, -1)).astype(z1.dtype)
        return total_variation(z1, z2)

    def _routed(self, z1, z2):
        use_m2 = (self.score(z1, z2) > self.threshold)[:, None]
        return jnp.where(use_m2, z2, z1)

    def _fn(self, logits_fns: Sequence[LogitsFn], adaptive: bool) -> LogitsFn:
        fns = tuple(logits_fns)
        if len(fns) != 2:
            raise ValueError(f"wrap got {len(fns)} logits functions; fusion takes two (M1, M2)")
        f1, f2 = fns

        def fused(params, x):
            z1, z2 = f1(params[0], x), f2(params[1], x)
            if self.mode == "mix":
                return combine([z1, z2], (self.weight, 1.0 - self.weight), self.combine)
            hard = self._routed(z1, z2)
            if not adaptive:
                return hard
            g = jax.nn.sigmoid((total_variation(z1, z2) - self.threshold) / self.temperature)
            soft = jnp.log((1 - g)[:, None] * jax.nn.softmax(z1, -1)
                           + g[:, None] * jax.nn.softmax(z2, -1) + 1e-30)
            # Forward: the routed logits (shifted per example by a constant the argmax and
            # softmax ignore); backward: the soft gate's.
            hard = jax.nn.log_softmax(hard, -1)
            return soft + jax.lax.stop_gradient(hard - soft)

        return fused

    def wrap(self, logits_fns: Sequence[LogitsFn]) -> LogitsFn:
        """``f(params, x)`` with ``params = (params_M1, params_M2)``."""
        return self._fn(logits_fns, adaptive=False)

    def adaptive(self, logits_fns: Sequence[LogitsFn]) -> LogitsFn:
        """``route``: the routed output with the soft gate's gradient (``mix``: the mixture)."""
        return self._fn(logits_fns, adaptive=self.mode == "route")
