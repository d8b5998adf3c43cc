"""Single-step adversarial training: FGSM-AT and FGSM-RS ("Fast is better than free").

Wong, Rice & Kolter (2020) showed that FGSM adversarial training works if the FGSM step
starts from a uniformly random point of the ε-ball and is a little longer than ε
(α = 1.25 ε), then projected back; without the random start (plain FGSM-AT, step ε) the
model soon "catastrophically overfits": it becomes robust to FGSM and not at all to PGD.
Both are here so a sweep can show the difference. At large ε FGSM-RS overfits as well
(Andriushchenko & Flammarion, 2020); measured with the default training settings on
mnist5k at L∞ ε = 0.3 (CNN): FGSM-AT 91.6% / FGSM-RS 95.8% robust to FGSM, both 0% to
PGD-20; on 8×8 digits at ε = 0.2 neither overfits (PGD-20: 43.6% / 43.1%).

The kernel is written here rather than reusing ``attacks.FGSM``: that attack's random start
is R+FGSM's (Tramèr et al.: a sign-vector start at a fraction of ε and a step of the rest),
not Wong et al.'s uniform start with a step longer than ε. Without the random start and
with α = ε the kernel is exactly ``attacks.FGSM`` (tested).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from attacks import checks, losses, threat
from defenses.base import check_budget
from defenses.training import TrainSettings, fit


def fgsm_examples(logits_fn, params, x, y, eps, key, *, norm: str = "linf",
                  random_start: bool = True, rel_step_size: float = 1.25) -> jax.Array:
    """One steepest-ascent step of cross-entropy, of size ``rel_step_size``·ε, from x or from a
    uniform random point of the ε-ball, projected onto the ε-ball ∩ [0, 1]."""
    x0 = threat.random_init(key, x, eps, norm) if random_start else x
    g = jax.grad(lambda z: jnp.sum(losses.cross_entropy(logits_fn(params, z), y)))(x0)
    step = rel_step_size * threat.per_example(eps, x)
    x_adv = threat.project(x0 + step * threat.steepest_direction(g, norm), x, eps, norm)
    return jax.lax.stop_gradient(x_adv)


@dataclasses.dataclass(frozen=True)
class FGSMAT(TrainSettings):
    """FGSM adversarial training (Goodfellow et al., 2015): FGSM examples from x, step ε.

    Prone to catastrophic overfitting (robust to FGSM, not to PGD); compare ``fgsm-rs``.

    Attributes (besides the training settings):
      eps: training budget in [0, 1] pixel units.
      norm: threat model of the FGSM step.
      random_start: start from a uniform point of the ε-ball (FGSM-RS) instead of x.
      rel_step_size: the step as a multiple of ε (projected back onto the ball after it).
    """

    numerics: ClassVar[int] = 1

    eps: float = 0.1
    norm: str = "linf"
    random_start: bool = False
    rel_step_size: float = 1.0

    kind = "training"

    def __post_init__(self):
        self.check()
        check_budget(self.eps, self.norm)
        checks.check_positive("rel_step_size", self.rel_step_size)

    def perturb(self, logits_fn, variables, x, y, key) -> jax.Array:
        """The training examples of one batch (a ``defenses.training.Perturb``)."""
        return fgsm_examples(logits_fn, variables, x, y, self.eps, key, norm=self.norm,
                             random_start=self.random_start, rel_step_size=self.rel_step_size)

    def train(self, module, data, key, on_epoch=None) -> dict:
        """Returns variables trained on the FGSM examples of each batch."""
        return fit(module, data.x_train, data.y_train, self, key, perturb=self.perturb,
                   on_epoch=on_epoch)


@dataclasses.dataclass(frozen=True)
class FGSMRS(FGSMAT):
    """FGSM-RS (Wong et al., 2020): FGSM from a uniform random start in the ε-ball, step 1.25 ε.

    "Fast is better than free": the step is projected back onto the ε-ball and the box.

    Same options as ``fgsm-at``, with ``random_start = true`` and ``rel_step_size = 1.25``.
    """

    numerics: ClassVar[int] = 1

    random_start: bool = True
    rel_step_size: float = 1.25
