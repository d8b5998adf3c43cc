"""ResNet-18 (He et al. 2016) as used for adversarial training: pre- and post-activation.

One implementation, two layouts (the class attribute ``preact``):

- :class:`PreActResNet18` follows the PyTorch model of Wong et al. (2020) and Rice et al.
  (2020): 3x3 stride-1 stem, pre-activation basic blocks whose projection shortcut takes the
  pre-activated input, final BN + ReLU, global average pooling, linear head.
- :class:`ResNet18` is RobustBench's ``ResNet18`` (used e.g. by Sehwag et al. 2021): the stem
  followed by BN + ReLU, post-activation basic blocks (conv-BN-ReLU-conv-BN plus shortcut,
  then ReLU) with a 1x1 convolution + BatchNorm projection shortcut where the shape changes,
  global average pooling, linear head.

Both have `width`*(1, 2, 4, 8) channels in four stages with strides 1, 2, 2, 2. Convolutions
use PyTorch's padding of 1 and PyTorch's default initialisation, so shapes and statistics
match the reference code.
"""

from typing import ClassVar

import flax.linen as nn
import jax.numpy as jnp

from models.layers import Conv, activation_fn, normalize

# PyTorch's default Conv2d/Linear weight init: kaiming_uniform(a=sqrt(5)) == U(+-1/sqrt(fan_in)).
torch_default_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def bn(train: bool, name: str | None = None) -> nn.BatchNorm:
    """BatchNorm with PyTorch's defaults (momentum 0.1 == flax 0.9, eps 1e-5)."""
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)


class PreActBlock(nn.Module):
    """The basic residual block of every ResNet here: two 3x3 convolutions plus a shortcut.

    ``preact`` (default): act(BN)-conv3x3-act(BN)-conv3x3 plus shortcut, a 1x1 conv (named
    ``shortcut``) of the pre-activated input if the shape changes. ``preact = False``:
    conv3x3-BN-ReLU-conv3x3-BN plus shortcut (1x1 conv ``shortcut_conv`` + BN ``shortcut_bn``
    of the input if the shape changes), then ReLU. ``activation``: relu or swish (DeepMind's
    WideResNets); ``tf_padding``: a stride-2 3x3 convolution pads (0, 1) like TensorFlow's
    SAME instead of PyTorch's (1, 1).
    """

    channels: int
    stride: int = 1
    kernel_init: nn.initializers.Initializer = torch_default_init
    activation: str = "relu"
    tf_padding: bool = False
    preact: bool = True

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        act = activation_fn(self.activation)
        strides = (self.stride, self.stride)
        inner = act(bn(train)(x)) if self.preact else x
        if self.stride != 1 or x.shape[-1] != self.channels:
            shortcut = Conv(self.channels, (1, 1), strides, padding="VALID", use_bias=False,
                            kernel_init=self.kernel_init,
                            name="shortcut" if self.preact else "shortcut_conv")(inner)
            if not self.preact:
                shortcut = bn(train, name="shortcut_bn")(shortcut)
        else:
            shortcut = x
        pad = ((0, 1), (0, 1)) if self.tf_padding and self.stride == 2 else ((1, 1), (1, 1))
        out = Conv(self.channels, (3, 3), strides, padding=pad, use_bias=False,
                   kernel_init=self.kernel_init)(inner)
        out = act(bn(train)(out))
        out = Conv(self.channels, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                   kernel_init=self.kernel_init)(out)
        if self.preact:
            return out + shortcut
        return act(bn(train)(out) + shortcut)


class _ResNet(nn.Module):
    """The one ResNet-18 family implementation; the subclasses below pick ``preact``."""

    num_classes: int = 10
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    width: int = 64
    blocks: tuple[int, ...] = (2, 2, 2, 2)

    preact: ClassVar[bool]  # the block layout (a class attribute: not a config option)

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        x = normalize(x, self.mean, self.std)
        x = Conv(self.width, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                 kernel_init=torch_default_init)(x)
        if not self.preact:
            x = nn.relu(bn(train)(x))
        block = "PreActBlock" if self.preact else "BasicBlock"
        k = 0
        for stage, count in enumerate(self.blocks):
            for i in range(count):
                stride = 2 if stage > 0 and i == 0 else 1
                x = PreActBlock(self.width * 2**stage, stride, preact=self.preact,
                                name=f"{block}_{k}")(x, train)
                k += 1
        if self.preact:
            x = nn.relu(bn(train)(x))
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, kernel_init=torch_default_init)(x).astype(jnp.float32)


class PreActResNet18(_ResNet):
    """Pre-activation ResNet: stages of `blocks` basic blocks with `width`*(1,2,4,8) channels, strides 1,2,2,2."""

    preact: ClassVar[bool] = True
    numerics: ClassVar[int] = 1


class ResNet18(_ResNet):
    """Post-activation ResNet: stages of `blocks` basic blocks with `width`*(1,2,4,8) channels, strides 1,2,2,2."""

    preact: ClassVar[bool] = False
    numerics: ClassVar[int] = 1
