"""Label flipping: the training-time (poisoning) attack of robustax's scope.

An adversary who controls a fraction p of the training labels flips them; the victim trains
normally on the poisoned set. It is registered with the training defenses because it acts on
the training set, not on test inputs (DESIGN.md: training-time attacks live with the training
procedures); its effect is read as the drop in clean (and robust) accuracy against the
``standard`` row of the same sweep.

Which examples are flipped is fixed by ``poison_seed`` alone, not by the sweep's seed or the
model, so every model of a sweep learns from the same poisoned labels.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import numpy as np

from attacks import checks
from defenses.training import TrainSettings, fit

MAPPINGS: tuple[str, ...] = ("uniform", "next", "pair")


def flip_labels(y: np.ndarray, num_classes: int, fraction: float, key: jax.Array,
                mapping: str = "uniform", source: int | None = None,
                target: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Returns ``(poisoned labels, flipped mask)``: exactly ``round(fraction · n)`` labels
    changed, the examples chosen uniformly without replacement by ``key``.

    ``n`` counts the candidates: every example, or for ``mapping = "pair"`` those labelled
    ``source``. A chosen label becomes a uniformly random other class (``uniform``),
    ``(y + 1) mod K`` (``next``) or ``target`` (``pair``); every flip changes the label.
    """
    y = np.asarray(y)
    if mapping == "pair":
        candidates = np.flatnonzero(y == source)
    else:
        candidates = np.arange(len(y))
    count = round(fraction * len(candidates))
    k_choose, k_class = jax.random.split(key)
    chosen = candidates[np.asarray(jax.random.permutation(k_choose, len(candidates)))[:count]]
    if mapping == "uniform":
        shift = np.asarray(jax.random.randint(k_class, y.shape, 1, num_classes))
        new = (y + shift) % num_classes
    elif mapping == "next":
        new = (y + 1) % num_classes
    elif mapping == "pair":
        new = np.full_like(y, target)
    else:
        raise ValueError(f"mapping = {mapping!r} is not allowed; choose one of: {', '.join(MAPPINGS)}")
    flipped = np.zeros(len(y), bool)
    flipped[chosen] = True
    return np.where(flipped, new, y).astype(y.dtype), flipped


@dataclasses.dataclass(frozen=True)
class LabelFlip(TrainSettings):
    """Label-flipping poisoning: standard training after a fraction of the training labels is flipped.

    Attributes (besides the training settings):
      fraction: share p of the candidate labels flipped (exactly round(p·n) of them).
      mapping: ``uniform`` (to a random other class), ``next`` (y → (y + 1) mod K) or
        ``pair`` (class ``source`` → class ``target``; p is then a share of that class).
      source: the class whose labels are flipped (``pair`` only).
      target: the class they are flipped to (``pair`` only).
      poison_seed: picks the flipped examples (and ``uniform``'s new classes), independent of
        the sweep's seed.
    """

    numerics: ClassVar[int] = 1

    fraction: float = 0.2
    mapping: str = "uniform"
    source: int | None = None
    target: int | None = None
    poison_seed: int = 0

    kind = "training"

    def __post_init__(self):
        self.check()
        checks.check_range("fraction", self.fraction, 0.0, 1.0)
        checks.check_choice("mapping", self.mapping, MAPPINGS)
        checks.check_positive("poison_seed", self.poison_seed, allow_zero=True)
        pair = self.mapping == "pair"
        for name in ("source", "target"):
            value = getattr(self, name)
            if pair and value is None:
                raise ValueError(f"{name} is missing; mapping = 'pair' needs source and target")
            if not pair and value is not None:
                raise ValueError(f"{name} = {value!r} is only used with mapping = 'pair' "
                                 f"(mapping = {self.mapping!r})")
            if value is not None:
                checks.check_positive(name, value, allow_zero=True)
        if pair and self.source == self.target:
            raise ValueError(f"target = {self.target!r} is impossible; it must differ from "
                             f"source = {self.source!r}")

    def poison(self, y: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
        """``(poisoned labels, flipped mask)`` of the training labels ``y``."""
        for name in ("source", "target"):
            value = getattr(self, name)
            if value is not None and value >= num_classes:
                raise ValueError(f"{name} = {value!r} is impossible; the data has classes "
                                 f"0..{num_classes - 1}")
        if num_classes < 2:
            raise ValueError("label flipping needs at least two classes")
        return flip_labels(y, num_classes, self.fraction, jax.random.key(self.poison_seed),
                           self.mapping, self.source, self.target)

    def train(self, module, data, key, on_epoch=None) -> dict:
        """Returns variables trained on ``data.x_train`` with poisoned ``data.y_train``."""
        y, _ = self.poison(data.y_train, data.num_classes)
        return fit(module, data.x_train, y, self, key, on_epoch=on_epoch)
