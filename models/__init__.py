"""Classifiers for robustax: flax.linen modules taking [0, 1] NHWC images, normalising inside."""

from models.cnn import CNN
from models.layers import max_pool_2x2, normalize
from models.mlp import MLP
from models.preact_resnet import PreActBlock, PreActResNet18
from models.registry import (
    MODELS,
    build_model,
    describe_models,
    init_variables,
    make_logits_fn,
    model_options,
    register,
)
from models.wide_resnet import WideResNet

__all__ = [
    "CNN",
    "MLP",
    "MODELS",
    "PreActBlock",
    "PreActResNet18",
    "WideResNet",
    "build_model",
    "describe_models",
    "init_variables",
    "make_logits_fn",
    "max_pool_2x2",
    "model_options",
    "normalize",
    "register",
]
