"""Kept importable: :class:`DMWideResNet` is the DeepMind layout of the one WideResNet
implementation in ``models/wide_resnet.py`` (also exported by ``models``)."""

from models.layers import ACTIVATIONS, activation_fn
from models.wide_resnet import DMWideResNet

__all__ = ["ACTIVATIONS", "DMWideResNet", "activation_fn"]
