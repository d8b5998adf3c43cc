"""Defenses: training procedures (``train``) and inference wrappers (``wrap``).

The config names that map to them live in ``bench.sweep.registry``.

Training procedures beyond standard training and PGD-AT (each a ``TrainSettings`` subclass
trained by the shared loop ``fit``; every one also takes the augmentation settings):

- ``FGSMAT`` / ``FGSMRS`` (``fgsm-at``, ``fgsm-rs``): single-step adversarial training. FGSM
  from x with step ε overfits catastrophically (robust to FGSM, not to PGD); Wong et al.
  (2020) avoid that with a uniform random start and a step of 1.25 ε, projected back (at
  large ε it can overfit too: both do on mnist5k at L∞ 0.3).
- ``TRADES`` (``trades``): clean cross-entropy + β · KL(f(x) ‖ f(x')), x' by PGD on the KL
  from x + 0.001·N(0, I) (Zhang et al., 2019).
- ``Distillation`` (``distillation``): defensive distillation (Papernot et al., 2016), a
  teacher trained at temperature T labels the training set with softmax(logits / T), a
  student of the same model is trained on those at T and returned (evaluated at T = 1).
- ``Augment`` (``augment``): standard training with Gaussian noise, random crops and
  (optionally) horizontal flips; the transforms (``defenses.augmentation.Augmentation``) are
  settings of every procedure, applied to the clean batch before its perturbation.
- ``LabelFlip`` (``label-flip``): the poisoning attack, exactly round(p·n) training labels
  flipped (to a random other class, y + 1 mod K, or source → target) by ``poison_seed``,
  then standard training; ``flip_labels`` is the pure function.
"""

from defenses.augment import Augment
from defenses.augmentation import Augmentation
from defenses.base import InferenceWrapper, TrainingDefense, is_random, is_wrapper
from defenses.checkpoint import (checkpoint_bytes, checkpoint_parameter_digest, parameter_digest,
                                 variables_from_bytes)
from defenses.distillation import Distillation
from defenses.fgsm_at import FGSMAT, FGSMRS
from defenses.label_flip import LabelFlip, flip_labels
from defenses.pgd_at import PGDAT
from defenses.standard import Standard
from defenses.trades import TRADES
from defenses.training import TrainSettings, fit
from defenses.ensemble import Ensemble
from defenses.fusion import Fusion
from defenses.random_transform import RandomTransform
from defenses.squeeze import Squeeze

__all__ = ["InferenceWrapper", "PGDAT", "Standard", "TrainSettings", "TrainingDefense",
           "checkpoint_bytes", "checkpoint_parameter_digest", "fit", "is_random", "is_wrapper", "parameter_digest",
           "variables_from_bytes"]
__all__ += ["Augment", "Augmentation", "Distillation", "FGSMAT", "FGSMRS", "LabelFlip", "TRADES",
            "flip_labels"]
__all__ += ["Ensemble", "Fusion", "RandomTransform", "Squeeze"]
