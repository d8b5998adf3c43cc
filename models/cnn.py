"""Small convolutional classifier (no BatchNorm)."""

from typing import ClassVar

import flax.linen as nn
import jax.numpy as jnp

from models.layers import Conv, max_pool_2x2, normalize


class CNN(nn.Module):
    """Two conv-conv-pool stages (`width`, then 2*`width` channels), a `dense` ReLU layer, linear head.

    Works on any image of at least 4x4 pixels (e.g. 8x8x1, 28x28x1, 32x32x3).
    """

    # Bump in the same commit as any change that can move this class's numbers (cell ids and checkpoint keys include it).
    numerics: ClassVar[int] = 1

    num_classes: int = 10
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    width: int = 32
    dense: int = 128

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        x = normalize(x, self.mean, self.std)
        for channels in (self.width, 2 * self.width):
            x = nn.relu(Conv(channels, (3, 3), padding="SAME")(x))
            x = nn.relu(Conv(channels, (3, 3), padding="SAME")(x))
            x = max_pool_2x2(x)
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(self.dense)(x))
        return nn.Dense(self.num_classes)(x).astype(jnp.float32)
