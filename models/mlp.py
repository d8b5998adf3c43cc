"""Fully connected classifier."""

import dataclasses
from typing import ClassVar

import flax.linen as nn
import jax.numpy as jnp

from models.layers import normalize


class MLP(nn.Module):
    """Multi-layer perceptron: flatten, `depth` ReLU layers of `width` units, linear head."""

    numerics: ClassVar[int] = 1

    num_classes: int = 10
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    width: int = 256
    # depth 0 is a linear (softmax-regression) model, hence the lower bound of 0.
    depth: int = dataclasses.field(default=2, metadata={"min": 0})

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        x = normalize(x, self.mean, self.std)
        x = x.reshape((x.shape[0], -1))
        for _ in range(self.depth):
            x = nn.relu(nn.Dense(self.width)(x))
        return nn.Dense(self.num_classes)(x).astype(jnp.float32)
