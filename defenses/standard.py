"""Standard (clean) training: the undefended baseline every defense is compared with."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from defenses.training import TrainSettings, fit


@dataclasses.dataclass(frozen=True)
class Standard(TrainSettings):
    """Standard training: cross-entropy on clean examples (the undefended baseline)."""

    numerics: ClassVar[int] = 1

    kind = "training"

    def __post_init__(self):
        self.check()

    def train(self, module, data, key, on_epoch=None) -> dict:
        """Returns trained variables for ``module`` on ``data.x_train``/``data.y_train``."""
        return fit(module, data.x_train, data.y_train, self, key, on_epoch=on_epoch)
