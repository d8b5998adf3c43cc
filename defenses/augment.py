"""Data augmentation: the transforms, and standard training with them on as a defense.

The transforms are a setting of *every* training procedure (``TrainSettings.noise_std``,
``crop_pad``, ``hflip``): the shared loop (``defenses.training.fit``) applies them to each
clean batch before the procedure's ``perturb``, so "PGD-AT with crops and flips" is the
``pgd-at`` entry with ``crop_pad = 4`` and ``hflip = true``, and TRADES, FGSM-RS, label
flipping and distillation compose with augmentation the same way. The ``augment`` defense
below is standard training with the transforms on by default: the usual "is augmentation
alone a defense?" row of a sweep.

The transforms themselves live in ``defenses.augmentation`` (re-exported here), which the
loop imports; this module imports the loop.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from defenses.augmentation import Augmentation, random_crop, random_hflip
from defenses.training import TrainSettings, fit

__all__ = ["Augment", "Augmentation", "random_crop", "random_hflip"]


@dataclasses.dataclass(frozen=True)
class Augment(TrainSettings):
    """Data augmentation as a defense: standard training on noisy, shifted (optionally mirrored) images.

    The transforms are the training settings every procedure has (see the module
    docstring); here they default to on: Gaussian noise σ = 0.1 and random crops with
    1 pixel of padding, no horizontal flip. The defaults suit the shipped digit sets (8×8
    digits, CNN, 15 epochs, clean accuracy: 99.2% with these defaults, 96.9% with
    ``crop_pad = 2``, 98.3% for standard training); digits are not mirror-symmetric. For
    natural images set ``hflip = true`` and ``crop_pad = 4`` (the usual CIFAR values). With
    every transform off it is exactly standard training.
    """

    # Bump in the same commit as any change that can move this class's numbers (cell ids and checkpoint keys include it).
    numerics: ClassVar[int] = 1

    noise_std: float = 0.1
    crop_pad: int = 1

    kind = "training"

    def __post_init__(self):
        self.check()

    def train(self, module, data, key, on_epoch=None) -> dict:
        """Returns variables trained on augmented ``data.x_train``/``data.y_train``."""
        return fit(module, data.x_train, data.y_train, self, key, on_epoch=on_epoch)
