"""PyTorch modules with the state-dict layout of RobustBench's model-zoo architectures.

``robustax import-torch`` loads a user's ``state_dict`` into one of these (strictly: every key
and shape must match), converts it to robustax's Flax model and refuses to write the result
unless both compute the same logits. Written for this project after the definitions in
RobustBench's ``robustbench/model_zoo/architectures`` (``resnet.py``: ``PreActResNet`` with
``PreActBlockV2`` and ``bn_before_fc=True``, ``ResNet`` with ``BasicBlock``;
``wide_resnet.py``: ``WideResNet``; ``dm_wide_resnet.py``: ``DMWideResNet``): the same
parameter and buffer names, the same computation (including the final fixed-size average
pooling, the global mean on 32×32 inputs, the only size the importer checks). ``width``/``blocks``
options exist for small tests; the leaderboard models use the defaults.

Normalisation is not part of these modules' state dicts here: the importer takes RobustBench's
``mu``/``sigma`` (and DeepMind's ``mean``/``std``) buffers out of the state dict, and the
modules normalise with the ``mean``/``std`` they are built with (non-persistent buffers).
Needs the optional ``torch`` package.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _conv3(cin: int, cout: int, stride: int = 1, padding: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, padding, bias=False)


def _conv1(cin: int, cout: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride, 0, bias=False)


class _Normalised(nn.Module):
    """Holds the input normalisation as non-persistent buffers (not in the state dict)."""

    def __init__(self, mean, std, channels: int):
        super().__init__()
        mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        std = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
        self.register_buffer("_mean", mean.expand(channels).reshape(1, channels, 1, 1).clone(),
                             persistent=False)
        self.register_buffer("_std", std.expand(channels).reshape(1, channels, 1, 1).clone(),
                             persistent=False)

    def normalise(self, x):
        return (x - self._mean) / self._std


# ------------------------------------------------------------------ plain CNNs (twins)


class PlainCNN(_Normalised):
    """3×3 SAME convolutions with ReLU, a 2×2 max pool after the convolutions listed in
    ``pool_after``, a flatten in NHWC order (as Flax flattens) and two dense layers: the PyTorch
    form of robustax's ``cnn`` and of the plain-Flax user CNN (``bench.pytorch.usercnn``)."""

    def __init__(self, channels: list[int], pool_after: tuple[int, ...], flat: int, dense: int,
                 classes: int, mean=0.0, std=1.0):
        super().__init__(mean, std, channels[0])
        self.pool_after = tuple(pool_after)
        self.convs = nn.ModuleList([nn.Conv2d(a, b, 3, padding=1)
                                    for a, b in zip(channels, channels[1:])])
        self.fc1 = nn.Linear(flat, dense)
        self.fc2 = nn.Linear(dense, classes)

    def forward(self, z):
        z = self.normalise(z)
        for i, conv in enumerate(self.convs):
            z = torch.relu(conv(z))
            if i in self.pool_after:
                z = F.max_pool2d(z, 2)
        z = z.permute(0, 2, 3, 1).flatten(1)  # NHWC flatten order, as in flax
        return self.fc2(torch.relu(self.fc1(z)))


# ------------------------------------------------------------------ PreAct-ResNet-18


class _PreActPair(nn.Module):
    """The two BN-ReLU-conv3×3 halves of a pre-activation block (``bn1``, ``conv1``, ``bn2``,
    ``conv2``, the state-dict names both RobustBench layouts use); subclasses add their
    shortcut under their layout's name."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = _conv3(cin, cout, stride)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = _conv3(cout, cout)

    def halves(self, x):
        """(pre-activated input, residual branch output)."""
        out = F.relu(self.bn1(x))
        return out, self.conv2(F.relu(self.bn2(self.conv1(out))))


class PreActBlockV2(_PreActPair):
    """Pre-activation basic block; the projection shortcut takes the pre-activated input."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__(cin, cout, stride)
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(_conv1(cin, cout, stride))

    def forward(self, x):
        pre, out = self.halves(x)
        return out + (self.shortcut(pre) if hasattr(self, "shortcut") else x)


def _add_stages(net: nn.Module, block: type, width: int, blocks) -> int:
    """Adds ResNet-18's stages ``layer1``… to ``net`` (``blocks[s]`` blocks of ``block`` at
    width ``width·2^s``, the first of each later stage with stride 2); returns the final
    width."""
    cin = width
    for s, n in enumerate(blocks):
        layers = []
        for i in range(n):
            layers.append(block(cin, width * 2**s, 2 if s > 0 and i == 0 else 1))
            cin = width * 2**s
        setattr(net, f"layer{s + 1}", nn.Sequential(*layers))
    net.n_stages = len(blocks)
    return cin


class PreActResNet(_Normalised):
    """RobustBench's ``PreActResNet(PreActBlockV2, [2, 2, 2, 2], bn_before_fc=True)``."""

    def __init__(self, num_classes=10, mean=(0.0,), std=(1.0,), width=64, blocks=(2, 2, 2, 2),
                 channels=3):
        super().__init__(mean, std, channels)
        self.conv1 = _conv3(channels, width)
        cin = _add_stages(self, PreActBlockV2, width, blocks)
        self.bn = nn.BatchNorm2d(cin)
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x):
        out = self.conv1(self.normalise(x))
        for s in range(self.n_stages):
            out = getattr(self, f"layer{s + 1}")(out)
        out = F.avg_pool2d(F.relu(self.bn(out)), 4)
        return self.linear(out.flatten(1))


# ------------------------------------------------------------------ ResNet-18


class BasicBlock(nn.Module):
    """Post-activation basic block with a conv + BatchNorm projection shortcut."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = _conv3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = _conv3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(_conv1(cin, cout, stride), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(_Normalised):
    """RobustBench's ``ResNet(BasicBlock, [2, 2, 2, 2])`` (``ResNet18()``)."""

    def __init__(self, num_classes=10, mean=(0.0,), std=(1.0,), width=64, blocks=(2, 2, 2, 2),
                 channels=3):
        super().__init__(mean, std, channels)
        self.conv1 = _conv3(channels, width)
        self.bn1 = nn.BatchNorm2d(width)
        cin = _add_stages(self, BasicBlock, width, blocks)
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(self.normalise(x))))
        for s in range(self.n_stages):
            out = getattr(self, f"layer{s + 1}")(out)
        return self.linear(F.avg_pool2d(out, 4).flatten(1))


# ------------------------------------------------------------------ WideResNet (TRADES layout)


class WideBlock(_PreActPair):
    """RobustBench's ``wide_resnet.BasicBlock`` (dropout 0)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__(cin, cout, stride)
        self.equal = cin == cout
        self.convShortcut = None if self.equal else _conv1(cin, cout, stride)

    def forward(self, x):
        pre, out = self.halves(x)
        return (x if self.equal else self.convShortcut(pre)) + out


class _Group(nn.Module):
    def __init__(self, blocks: list[nn.Module], attr: str):
        super().__init__()
        setattr(self, attr, nn.Sequential(*blocks))
        self.attr = attr

    def forward(self, x):
        return getattr(self, self.attr)(x)


class WideResNet(_Normalised):
    """RobustBench's ``WideResNet(depth, widen_factor)`` (from TRADES); ``fc`` without bias
    when ``bias_last`` is False."""

    def __init__(self, num_classes=10, mean=(0.0,), std=(1.0,), depth=28, widen=10,
                 bias_last=True, channels=3):
        super().__init__(mean, std, channels)
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = _conv3(channels, widths[0])
        for s, stride in enumerate((1, 2, 2)):
            blocks = [WideBlock(widths[s] if i == 0 else widths[s + 1], widths[s + 1],
                                stride if i == 0 else 1) for i in range(n)]
            setattr(self, f"block{s + 1}", _Group(blocks, "layer"))
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes, bias=bias_last)

    def forward(self, x):
        out = self.conv1(self.normalise(x))
        out = self.block3(self.block2(self.block1(out)))
        out = F.avg_pool2d(F.relu(self.bn1(out)), 8)
        return self.fc(out.flatten(1))


# ------------------------------------------------------------------ WideResNet (DeepMind layout)


class DMBlock(nn.Module):
    """RobustBench's ``dm_wide_resnet._Block``: SAME padding (0, 1) before strided convs."""

    def __init__(self, cin: int, cout: int, stride: int, act):
        super().__init__()
        self.batchnorm_0 = nn.BatchNorm2d(cin)
        self.conv_0 = _conv3(cin, cout, stride, padding=0)
        self.batchnorm_1 = nn.BatchNorm2d(cout)
        self.conv_1 = _conv3(cout, cout)
        self.has_shortcut = cin != cout
        self.shortcut = _conv1(cin, cout, stride) if self.has_shortcut else None
        self.stride, self.act = stride, act

    def forward(self, x):
        out = self.act(self.batchnorm_0(x))
        v = F.pad(out, (1, 1, 1, 1) if self.stride == 1 else (0, 1, 0, 1))
        shortcut = self.shortcut(out) if self.has_shortcut else x
        out = self.conv_1(self.act(self.batchnorm_1(self.conv_0(v))))
        return shortcut + out


class DMWideResNet(_Normalised):
    """RobustBench's ``DMWideResNet(depth, width, activation_fn)`` (ReLU or Swish), without
    its ``mean``/``std`` buffers (see the module docstring)."""

    def __init__(self, num_classes=10, mean=(0.0,), std=(1.0,), depth=28, widen=10,
                 activation="relu", channels=3):
        super().__init__(mean, std, channels)
        act = F.relu if activation == "relu" else (lambda z: z * torch.sigmoid(z))
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.init_conv = _conv3(channels, widths[0])
        self.layer = nn.Sequential(*[
            _Group([DMBlock(widths[s] if i == 0 else widths[s + 1], widths[s + 1],
                            stride if i == 0 else 1, act) for i in range(n)], "block")
            for s, stride in enumerate((1, 2, 2))])
        self.batchnorm = nn.BatchNorm2d(widths[3])
        self.logits = nn.Linear(widths[3], num_classes)
        self.act = act

    def forward(self, x):
        out = self.layer(self.init_conv(self.normalise(x)))
        out = F.avg_pool2d(self.act(self.batchnorm(out)), 8)
        return self.logits(out.flatten(1))
