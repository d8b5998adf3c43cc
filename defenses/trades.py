"""TRADES (Zhang et al., 2019): trade clean accuracy against robustness with a KL term.

min_θ E [ CE(f_θ(x), y) + β · max_{x' ∈ B_ε(x)} KL(softmax f_θ(x) ‖ softmax f_θ(x')) ]

The inner maximisation is PGD on the KL term from x + 0.001·N(0, I) (the reference code's
start), the last iterate kept; the outer loss differentiates through both the clean and the
adversarial logits, as the reference does. β trades clean accuracy for robustness: the paper
uses β = 6 on CIFAR-10 (1 on MNIST); β = 0 is standard training on the clean batch (tested).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import optax

from attacks import checks, threat
from defenses.base import check_budget
from defenses.training import TrainSettings, fit


def kl_divergence(logits_p: jax.Array, logits_q: jax.Array) -> jax.Array:
    """KL(softmax p ‖ softmax q) per example, shape [B], from log-probabilities (stable)."""
    log_p = jax.nn.log_softmax(logits_p, axis=-1)
    log_q = jax.nn.log_softmax(logits_q, axis=-1)
    return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)


@dataclasses.dataclass(frozen=True)
class TRADES(TrainSettings):
    """TRADES (Zhang et al., 2019): clean cross-entropy + β · KL(f(x) ‖ f(x')), x' by PGD on the KL.

    Attributes (besides the training settings):
      eps: training budget in [0, 1] pixel units.
      norm: threat model of the inner maximisation.
      steps: PGD steps of the inner maximisation.
      rel_step_size: step size as a fraction of ε (default 2.5 / steps, as PGD-AT; the
        paper's CIFAR-10 setting is ε = 0.031, step 0.007, 10 steps, i.e. 0.226).
      beta: weight of the KL (robustness) term; 0 is clean training.
      init_std: σ of the Gaussian start x + init_std·N(0, I) of the inner maximisation.
    """

    numerics: ClassVar[int] = 1

    eps: float = 0.1
    norm: str = "linf"
    steps: int = 10
    rel_step_size: float | None = None
    beta: float = 6.0
    init_std: float = 0.001

    kind = "training"

    def __post_init__(self):
        self.check()
        check_budget(self.eps, self.norm)
        checks.check_count("steps", self.steps, checks.MAX_STEPS)
        if self.rel_step_size is not None:
            checks.check_positive("rel_step_size", self.rel_step_size)
        checks.check_positive("beta", self.beta, allow_zero=True)
        checks.check_positive("init_std", self.init_std, allow_zero=True)

    def perturb(self, logits_fn, variables, x, y, key) -> jax.Array:
        """x' maximising KL(f(x) ‖ f(x')) over the ε-ball ∩ [0, 1] by PGD (labels unused)."""
        del y
        clean = jax.lax.stop_gradient(logits_fn(variables, x))
        kl = jax.grad(lambda z: jnp.sum(kl_divergence(clean, logits_fn(variables, z))))
        rel = self.rel_step_size if self.rel_step_size is not None else 2.5 / self.steps
        step = rel * self.eps
        x0 = threat.project(x + self.init_std * jax.random.normal(key, x.shape, x.dtype),
                            x, self.eps, self.norm)

        def body(_, z):
            return threat.project(z + step * threat.steepest_direction(kl(z), self.norm),
                                  x, self.eps, self.norm)

        # Rolled: robustax's models use models.layers.Conv, whose input gradient is as fast
        # inside a loop as unrolled (DEVELOPERS.md), and the compile stays small.
        return jax.lax.stop_gradient(jax.lax.fori_loop(0, self.steps, body, x0))

    def loss(self, logits_of, x, x_adv, y) -> jax.Array:
        """CE(f(x), y) + β · KL(f(x) ‖ f(x')), batch means (a ``defenses.training.Loss``)."""
        clean = logits_of(x)
        ce = optax.softmax_cross_entropy_with_integer_labels(clean, y).mean()
        return ce + self.beta * kl_divergence(clean, logits_of(x_adv)).mean()

    def train(self, module, data, key, on_epoch=None) -> dict:
        """Returns TRADES-trained variables for ``module`` on ``data``'s training set."""
        return fit(module, data.x_train, data.y_train, self, key, perturb=self.perturb,
                   on_epoch=on_epoch, loss=self.loss)
