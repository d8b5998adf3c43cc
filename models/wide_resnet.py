"""Wide ResNet WRN-depth-widen (Zagoruyko & Komodakis 2016), as used in RobustBench.

3x3 stem with 16 channels, three stages of (depth - 4) / 6 pre-activation blocks with
16k, 32k, 64k channels and strides 1, 2, 2, final BN + ReLU, global average pooling,
linear head. Convolutions use He-normal (fan-out) init like the reference code.
"""

import flax.linen as nn
import jax.numpy as jnp

from models.layers import Conv, normalize
from models.preact_resnet import PreActBlock, bn

he_fan_out_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def blocks_per_stage(depth: int) -> int:
    """Blocks in each of the three stages; ValueError unless depth = 6n + 4 with n >= 1."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
        raise ValueError(
            f"depth must be 6n + 4 with n >= 1 "
            f"(10, 16, 22, 28, 34, 40, ...), got {depth!r}"
        )
    return (depth - 4) // 6


class WideResNet(nn.Module):
    """Wide ResNet WRN-`depth`-`widen`: (depth - 4) / 6 pre-activation blocks per stage, 16/16k/32k/64k channels."""

    num_classes: int = 10
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    depth: int = 28
    widen: int = 10

    def __post_init__(self):
        blocks_per_stage(self.depth)  # fail at construction, not at first call
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        n = blocks_per_stage(self.depth)
        x = normalize(x, self.mean, self.std)
        x = Conv(16, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                    kernel_init=he_fan_out_init)(x)
        for stage, stride in enumerate((1, 2, 2)):
            for i in range(n):
                x = PreActBlock(16 * self.widen * 2**stage, stride if i == 0 else 1,
                                kernel_init=he_fan_out_init)(x, train)
        x = nn.relu(bn(train)(x))
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes)(x).astype(jnp.float32)
