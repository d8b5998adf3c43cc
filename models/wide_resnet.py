"""Wide ResNet WRN-depth-widen (Zagoruyko & Komodakis 2016), as used in RobustBench, and
DeepMind's variant (Gowal et al. 2020, Rebuffi et al. 2021; RobustBench's ``DMWideResNet``).

One implementation, two layouts (the class attribute ``deepmind``): 3x3 stem with 16
channels, three stages of (depth - 4) / 6 pre-activation blocks with 16k, 32k, 64k channels
and strides 1, 2, 2, final BN + activation, global average pooling, linear head.
Convolutions use He-normal (fan-out) init like the reference code. :class:`WideResNet` uses
ReLU; :class:`DMWideResNet` has a choice of activation (ReLU or Swish) and TensorFlow's SAME
padding (0 before, 1 after) for the strided 3x3 convolutions, and names its blocks
``DMBlock_k``.
"""

from typing import ClassVar

import flax.linen as nn
import jax.numpy as jnp

from models.layers import Conv, activation_fn, normalize
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


class _WideResNet(nn.Module):
    """The one WideResNet implementation; the subclasses below pick ``deepmind``."""

    num_classes: int = 10
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    depth: int = 28
    widen: int = 10

    deepmind: ClassVar[bool]  # the layout (a class attribute: not a config option)

    def activation_name(self) -> str:
        """The blocks' and the head's activation (``relu`` unless a subclass has a choice)."""
        return "relu"

    def __post_init__(self):
        blocks_per_stage(self.depth)  # fail at construction, not at first call
        activation_fn(self.activation_name())
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        n = blocks_per_stage(self.depth)
        activation = self.activation_name()
        block = "DMBlock" if self.deepmind else "PreActBlock"
        x = normalize(x, self.mean, self.std)
        x = Conv(16, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                 kernel_init=he_fan_out_init)(x)
        k = 0
        for stage, stride in enumerate((1, 2, 2)):
            for i in range(n):
                x = PreActBlock(16 * self.widen * 2**stage, stride if i == 0 else 1,
                                kernel_init=he_fan_out_init, activation=activation,
                                tf_padding=self.deepmind, name=f"{block}_{k}")(x, train)
                k += 1
        x = activation_fn(activation)(bn(train)(x))
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes)(x).astype(jnp.float32)


class WideResNet(_WideResNet):
    """Wide ResNet WRN-`depth`-`widen`: (depth - 4) / 6 pre-activation blocks per stage, 16/16k/32k/64k channels."""

    deepmind: ClassVar[bool] = False
    numerics: ClassVar[int] = 1


class DMWideResNet(_WideResNet):
    """DeepMind WRN-`depth`-`widen` with `activation` (relu or swish): (depth - 4) / 6 blocks per stage."""

    activation: str = "relu"

    deepmind: ClassVar[bool] = True
    numerics: ClassVar[int] = 1

    def activation_name(self) -> str:
        return self.activation
