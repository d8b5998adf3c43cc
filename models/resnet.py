"""ResNet-18 (He et al. 2016) with post-activation basic blocks, CIFAR-style stem.

Not re-exported by ``models/__init__.py`` on purpose (see ``models/dm_wide_resnet.py``).

The layout of RobustBench's ``ResNet18`` (used e.g. by Sehwag et al. 2021): 3x3 stride-1 stem
with BatchNorm and ReLU, four stages of basic blocks (conv-BN-ReLU-conv-BN plus shortcut, then
ReLU) with `width`*(1, 2, 4, 8) channels and strides 1, 2, 2, 2, a 1x1 convolution + BatchNorm
projection shortcut where the shape changes, global average pooling, linear head.
"""

import flax.linen as nn
import jax.numpy as jnp

from models.layers import Conv, normalize
from models.preact_resnet import bn, torch_default_init


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus shortcut, then ReLU."""

    channels: int
    stride: int = 1

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        if self.stride != 1 or x.shape[-1] != self.channels:
            shortcut = Conv(self.channels, (1, 1), (self.stride, self.stride), padding="VALID",
                            use_bias=False, kernel_init=torch_default_init,
                            name="shortcut_conv")(x)
            shortcut = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                                    name="shortcut_bn")(shortcut)
        else:
            shortcut = x
        out = Conv(self.channels, (3, 3), (self.stride, self.stride), padding=((1, 1), (1, 1)),
                   use_bias=False, kernel_init=torch_default_init)(x)
        out = nn.relu(bn(train)(out))
        out = Conv(self.channels, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                   kernel_init=torch_default_init)(out)
        return nn.relu(bn(train)(out) + shortcut)


class ResNet18(nn.Module):
    """Post-activation ResNet: stages of `blocks` basic blocks with `width`*(1,2,4,8) channels, strides 1,2,2,2."""

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
        x = nn.relu(bn(train)(x))
        for stage, count in enumerate(self.blocks):
            for i in range(count):
                stride = 2 if stage > 0 and i == 0 else 1
                x = BasicBlock(self.width * 2**stage, stride)(x, train)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, kernel_init=torch_default_init)(x).astype(jnp.float32)
