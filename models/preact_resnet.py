"""Pre-activation ResNet-18 (He et al. 2016) as used for adversarial training.

Follows the PyTorch model of Wong et al. (2020) and Rice et al. (2020): 3x3 stride-1 stem,
pre-activation basic blocks whose projection shortcut takes the pre-activated input, final
BN + ReLU, global average pooling, linear head. Convolutions use PyTorch's padding of 1 and
PyTorch's default initialisation, so shapes and statistics match the reference code.
"""

import flax.linen as nn
import jax.numpy as jnp

from models.layers import Conv, normalize

# PyTorch's default Conv2d/Linear weight init: kaiming_uniform(a=sqrt(5)) == U(+-1/sqrt(fan_in)).
torch_default_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def bn(train: bool) -> nn.BatchNorm:
    """BatchNorm with PyTorch's defaults (momentum 0.1 == flax 0.9, eps 1e-5)."""
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus shortcut (1x1 conv of the pre-activated input if the shape changes)."""

    channels: int
    stride: int = 1
    kernel_init: nn.initializers.Initializer = torch_default_init

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        out = nn.relu(bn(train)(x))
        if self.stride != 1 or x.shape[-1] != self.channels:
            shortcut = Conv(self.channels, (1, 1), (self.stride, self.stride), padding="VALID",
                               use_bias=False, kernel_init=self.kernel_init, name="shortcut")(out)
        else:
            shortcut = x
        out = Conv(self.channels, (3, 3), (self.stride, self.stride), padding=((1, 1), (1, 1)),
                      use_bias=False, kernel_init=self.kernel_init)(out)
        out = nn.relu(bn(train)(out))
        out = Conv(self.channels, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                      kernel_init=self.kernel_init)(out)
        return out + shortcut


class PreActResNet18(nn.Module):
    """Pre-activation ResNet: stages of `blocks` basic blocks with `width`*(1,2,4,8) channels, strides 1,2,2,2."""

    num_classes: int = 10
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    width: int = 64
    blocks: tuple[int, ...] = (2, 2, 2, 2)

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        x = normalize(x, self.mean, self.std)
        x = Conv(self.width, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                    kernel_init=torch_default_init)(x)
        for stage, count in enumerate(self.blocks):
            for i in range(count):
                stride = 2 if stage > 0 and i == 0 else 1
                x = PreActBlock(self.width * 2**stage, stride)(x, train)
        x = nn.relu(bn(train)(x))
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, kernel_init=torch_default_init)(x).astype(jnp.float32)
