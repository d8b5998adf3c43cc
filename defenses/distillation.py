"""Defensive distillation (Papernot et al., 2016).

A teacher is trained at temperature T (softmax of logits / T) on the hard labels; it then
labels the training set with its soft probabilities softmax(logits / T); a student of the
same architecture is trained at the same T on those soft labels; the student is deployed at
T = 1, i.e. its plain logits, which are then ~T times larger than a normally trained
model's. Its apparent robustness comes from that (Carlini & Wagner, 2016, "Defensive
distillation is not robust to adversarial examples"): the softmax saturates and the
cross-entropy gradient underflows to exactly 0 in float32, even in robustax's exact form
(its factor sigmoid(−gap) is below float32's range once the logit gap exceeds ~100), while
scale-invariant losses are unaffected. Measured on digits (CNN, 15 epochs, T = 100, mean
top-2 logit gap 404 vs 9.7 for standard training): PGD-20 with ``loss = "ce"`` leaves 85%
robust at L∞ ε = 0.2, PGD-20 with ``loss = "margin"`` 3.1% and APGD-DLR 3.9% (standard
training: 3.3%, 4.2%, 3.6%). A sweep with this defense should include a margin or DLR
attack; it is in the benchmark as the textbook case of gradient masking.

The default T = 100 is the paper's. Training at T scales the loss gradient by ~1/T; the
default Adam optimiser is invariant to that scale, plain SGD needs a ~T times larger ``lr``.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import numpy as np
import optax

from attacks import checks
from defenses.training import TrainSettings, fit
from models.base import make_logits_fn

_LABEL_BATCH = 1024  # examples per forward pass when the teacher labels the training set


@dataclasses.dataclass(frozen=True)
class Distillation(TrainSettings):
    """Defensive distillation (Papernot et al., 2016): a student on a T-teacher's soft labels, run at T = 1.

    The teacher is trained at temperature T on the labels, the student (same model) at T on
    the teacher's softmax(logits / T) of the training set; the student's variables are
    returned, so the benchmark evaluates it at T = 1 (its plain logits).

    Attributes (besides the training settings, which both teacher and student use):
      temperature: T of the teacher's training, its soft labels and the student's training.
      teacher_epochs: epochs of the teacher (default: ``epochs``, as the student).
    """

    numerics: ClassVar[int] = 1

    temperature: float = 100.0
    teacher_epochs: int | None = None

    kind = "training"

    def __post_init__(self):
        self.check()
        checks.check_positive("temperature", self.temperature)
        if self.teacher_epochs is not None:
            checks.check_count("teacher_epochs", self.teacher_epochs, checks.MAX_EPOCHS)

    def hard_loss(self, logits_of, x, x_pert, y) -> jax.Array:
        """The teacher's loss: cross-entropy of the labels at temperature T."""
        del x
        return optax.softmax_cross_entropy_with_integer_labels(
            logits_of(x_pert) / self.temperature, y).mean()

    def soft_loss(self, logits_of, x, x_pert, targets) -> jax.Array:
        """The student's loss: cross-entropy of the soft labels ``targets`` [B, K] at T."""
        del x
        return optax.softmax_cross_entropy(logits_of(x_pert) / self.temperature, targets).mean()

    def soft_labels(self, module, variables, x: np.ndarray) -> np.ndarray:
        """softmax(logits / T) of the trained (teacher) ``variables`` on ``x``, evaluation mode."""
        logits_fn = jax.jit(make_logits_fn(module))
        probs = [jax.nn.softmax(logits_fn(variables, x[i:i + _LABEL_BATCH]) / self.temperature)
                 for i in range(0, len(x), _LABEL_BATCH)]
        return np.concatenate([np.asarray(p, np.float32) for p in probs])

    def train_student(self, module, x: np.ndarray, targets: np.ndarray, key,
                      on_epoch=None) -> dict:
        """The student: ``module`` trained at T on soft labels ``targets`` [N, K]. At T = 1 on
        one-hot targets this is standard training (tested)."""
        return fit(module, x, targets, self, key, on_epoch=on_epoch, loss=self.soft_loss)

    def train(self, module, data, key, on_epoch=None) -> dict:
        """Returns the student's variables; ``on_epoch`` sees the teacher's epochs, then the
        student's."""
        k_teacher, k_student = jax.random.split(key)
        teacher_settings = dataclasses.replace(self, epochs=self.teacher_epochs or self.epochs)
        teacher = fit(module, data.x_train, data.y_train, teacher_settings, k_teacher,
                      on_epoch=on_epoch, loss=self.hard_loss)
        targets = self.soft_labels(module, teacher, data.x_train)
        return self.train_student(module, data.x_train, targets, k_student, on_epoch=on_epoch)
