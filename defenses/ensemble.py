"""Ensembles of trained models as an inference wrapper, attacked as one model.

A *member wrapper* (this one and :class:`defenses.fusion.Fusion`) combines several trained
models instead of wrapping one: its ``members`` option names them (config labels, resolved
by ``bench.sweep.config``), ``wrap(logits_fns)`` takes their logits functions in ``members``
order and returns one ``logits_fn(params, x)`` whose ``params`` is the tuple of the members'
params in the same order. Members may be different architectures. The combination is
differentiable, so attacks take gradients through every member and there is no adaptive
form: the naive row is already the adaptive attack.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from attacks import checks
from attacks.base import LogitsFn

COMBINE: tuple[str, ...] = ("logits", "probs")


def check_members(members: Sequence[str], count: int | None = None, what: str = "") -> None:
    """Raises ``ValueError`` unless ``members`` is non-empty, has no repeats and, with
    ``count``, has exactly ``count`` entries (``what`` says what they must be)."""
    listed = list(members)
    if not listed:
        raise ValueError("members = [] is empty; list the trained models to combine, e.g. "
                         "members = [\"standard\", \"pgd-at\"]")
    if count is not None and len(listed) != count:
        raise ValueError(f"members = {listed} has {len(listed)} entries; it must have {count}: "
                         f"{what}")
    for m in listed:
        if listed.count(m) > 1:
            raise ValueError(f"members = {listed} lists {m!r} twice; name each model once")


def combine(logits: Sequence[jax.Array], weights: Sequence[float], how: str) -> jax.Array:
    """Weighted combination of the members' logits ``[B, K]`` each (weights ≥ 0, not all 0).

    ``logits``: ``Σ wᵢ zᵢ / Σ wᵢ``. ``probs``: the logits ``log Σ (wᵢ/Σw) softmax(zᵢ)`` of the
    averaged probabilities (a log-sum-exp over members, exact where one probability rounds to
    0). A weight of exactly 0 removes its member from the value and the gradient.
    """
    w = jnp.asarray(weights, jnp.float32)
    w = w / jnp.sum(w)
    z = jnp.stack(logits)  # [M, B, K]
    if how == "logits":
        return jnp.tensordot(w.astype(z.dtype), z, axes=1)
    logp = jax.nn.log_softmax(z, axis=-1)
    return jax.nn.logsumexp(logp, axis=0, b=w.astype(z.dtype).reshape(-1, 1, 1))


@dataclasses.dataclass(frozen=True)
class Ensemble:
    """Ensemble of trained models: weighted average of logits or probabilities, attacked as one.

    Attributes:
      members: the models to combine: training-defense labels (``"standard"``: that defense
        on the row's model, one ensemble per model) or ``"<model>/<defense>"`` labels (fixed
        members, possibly of different architectures, one ensemble in all).
      combine: average ``logits`` or ``probs`` (probabilities; returned as their log).
      weights: one weight ≥ 0 per member (not all 0); empty: equal weights.
    """

    numerics: ClassVar[int] = 1

    members: tuple[str, ...] = ()
    combine: str = "logits"
    weights: tuple[float, ...] = ()
    kind = "wrapper"

    def __post_init__(self):
        check_members(self.members)
        checks.check_choice("combine", self.combine, COMBINE)
        if self.weights:
            if len(self.weights) != len(self.members):
                raise ValueError(f"weights = {list(self.weights)} has {len(self.weights)} "
                                 f"entries for {len(self.members)} members; give one per member "
                                 f"or none (equal weights)")
            for w in self.weights:
                checks.check_positive("weights", w, allow_zero=True)
            if sum(self.weights) <= 0:
                raise ValueError(f"weights = {list(self.weights)} are all 0; give at least one "
                                 f"member a positive weight")

    @property
    def member_weights(self) -> tuple[float, ...]:
        return self.weights or (1.0,) * len(self.members)

    def wrap(self, logits_fns: Sequence[LogitsFn]) -> LogitsFn:
        """``f(params, x)`` with ``params`` the tuple of the members' params."""
        fns = tuple(logits_fns)
        if len(fns) != len(self.members):
            raise ValueError(f"wrap got {len(fns)} logits functions for {len(self.members)} "
                             f"members")

        def ensemble(params, x):
            return combine([f(p, x) for f, p in zip(fns, params)], self.member_weights,
                           self.combine)

        return ensemble
