"""The reference user model of the speed figures: a CNN written the ordinary way in Flax.

Speed claims must hold for the models users bring, not only for robustax's tuned layers, so
``robustax speed`` and the PyTorch twins time this plain ``flax.linen`` module beside the
``cnn``.
"""

from __future__ import annotations

import flax.linen as nn


class UserCNN(nn.Module):
    """A model written the ordinary way, as users bring them: plain ``nn.Conv`` 3×3
    (``features``, default 32 and 64), ``nn.max_pool`` 2×2, ``nn.Dense`` (``dense``, default
    128) and 10 (1.6 M parameters on 28×28×1 by default)."""

    features: tuple[int, int] = (32, 64)
    dense: int = 128

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.Conv(self.features[0], (3, 3))(x))
        x = nn.relu(nn.Conv(self.features[1], (3, 3))(x))
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(self.dense)(x))
        return nn.Dense(10)(x)
