"""Classifiers for robustax: flax.linen modules taking [0, 1] NHWC images, normalising inside.

Each model is a plain ``flax.linen.Module`` with ``num_classes``, ``mean`` and ``std`` fields
and size options; the config names that map to them live in ``bench.sweep.registry``.
"""

from models.base import init_variables, make_logits_fn
from models.cnn import CNN
from models.layers import Conv, conv_general_dilated, max_pool_2x2, normalize
from models.mlp import MLP
from models.preact_resnet import PreActBlock, PreActResNet18, ResNet18
from models.wide_resnet import DMWideResNet, WideResNet

__all__ = [
    "CNN",
    "DMWideResNet",
    "MLP",
    "Conv",
    "PreActBlock",
    "PreActResNet18",
    "ResNet18",
    "WideResNet",
    "conv_general_dilated",
    "init_variables",
    "make_logits_fn",
    "max_pool_2x2",
    "normalize",
]
