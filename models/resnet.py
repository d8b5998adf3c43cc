"""Kept importable: :class:`ResNet18` is the post-activation layout of the one ResNet-18
implementation in ``models/preact_resnet.py`` (also exported by ``models``)."""

from models.preact_resnet import ResNet18

__all__ = ["ResNet18"]
