"""DeepMind's WideResNet (Gowal et al. 2020, Rebuffi et al. 2021), as in RobustBench's
``DMWideResNet``: the layout of :class:`models.WideResNet` with a choice of activation (ReLU or
Swish) and TensorFlow's SAME padding (0 before, 1 after) for the strided 3x3 convolutions.

Not re-exported by ``models/__init__.py`` on purpose: that file is part of every training's
source digest (``bench.plan.training_sources``), so listing a new model there would re-key
every existing checkpoint. Import it from here.
"""

import flax.linen as nn
import jax.numpy as jnp

from models.layers import Conv, normalize
from models.preact_resnet import bn
from models.wide_resnet import blocks_per_stage, he_fan_out_init

ACTIVATIONS = {"relu": nn.relu, "swish": nn.swish}


def activation_fn(name: str):
    """``relu``, or ``swish`` = x·sigmoid(x); ValueError naming the choices otherwise."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation = {name!r} is unknown; choose one of: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class DMBlock(nn.Module):
    """act(BN)-conv3x3-act(BN)-conv3x3 plus shortcut (1x1 conv of the activated input if the
    shape changes); strided convolutions pad (0, 1) like TensorFlow's SAME."""

    channels: int
    stride: int = 1
    activation: str = "relu"

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        act = activation_fn(self.activation)
        out = act(bn(train)(x))
        if self.stride != 1 or x.shape[-1] != self.channels:
            shortcut = Conv(self.channels, (1, 1), (self.stride, self.stride), padding="VALID",
                            use_bias=False, kernel_init=he_fan_out_init, name="shortcut")(out)
        else:
            shortcut = x
        pad = ((0, 1), (0, 1)) if self.stride == 2 else ((1, 1), (1, 1))
        out = Conv(self.channels, (3, 3), (self.stride, self.stride), padding=pad,
                   use_bias=False, kernel_init=he_fan_out_init)(out)
        out = act(bn(train)(out))
        out = Conv(self.channels, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                   kernel_init=he_fan_out_init)(out)
        return out + shortcut


class DMWideResNet(nn.Module):
    """DeepMind WRN-`depth`-`widen` with `activation` (relu or swish): (depth - 4) / 6 blocks per stage."""

    num_classes: int = 10
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    depth: int = 28
    widen: int = 10
    activation: str = "relu"

    def __post_init__(self):
        blocks_per_stage(self.depth)  # fail at construction, not at first call
        activation_fn(self.activation)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        n = blocks_per_stage(self.depth)
        x = normalize(x, self.mean, self.std)
        x = Conv(16, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                 kernel_init=he_fan_out_init)(x)
        k = 0
        for stage, stride in enumerate((1, 2, 2)):
            for i in range(n):
                x = DMBlock(16 * self.widen * 2**stage, stride if i == 0 else 1, self.activation,
                            name=f"DMBlock_{k}")(x, train)
                k += 1
        x = activation_fn(self.activation)(bn(train)(x))
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes)(x).astype(jnp.float32)
