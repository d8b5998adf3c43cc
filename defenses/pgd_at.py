"""PGD adversarial training (Madry et al., 2018): train on PGD examples of the batch."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from attacks import checks
from attacks.pgd import PGD
from defenses.base import check_budget
from defenses.training import TrainSettings, fit


@dataclasses.dataclass(frozen=True)
class PGDAT(TrainSettings):
    """PGD adversarial training (Madry et al., 2018): train on PGD examples of each batch.

    min_θ E max_{‖δ‖≤ε} CE(f_θ(x + δ), y), the inner max by PGD with a random start.

    Attributes (besides the training settings):
      eps: training budget in [0, 1] pixel units.
      norm: threat model of the inner attack.
      steps: PGD steps of the inner attack.
      rel_step_size: step size as a fraction of ε (default 2.5 / steps).
    """

    numerics: ClassVar[int] = 1

    eps: float = 0.1
    norm: str = "linf"
    steps: int = 7
    rel_step_size: float | None = None

    kind = "training"

    def __post_init__(self):
        self.check()
        check_budget(self.eps, self.norm)
        checks.check_count("steps", self.steps, checks.MAX_STEPS)

    def train(self, module, data, key, on_epoch=None) -> dict:
        """Returns adversarially trained variables for ``module`` on ``data``'s training set."""
        attack = PGD(norm=self.norm, steps=self.steps, rel_step_size=self.rel_step_size)

        def perturb(logits_fn, variables, x, y, k):
            return attack(logits_fn, variables, x, y, self.eps, k)

        return fit(module, data.x_train, data.y_train, self, key, perturb=perturb,
                   on_epoch=on_epoch)
