"""A PyTorch copy of robustax's ``cnn`` on the same weights, for independent cross-checks.

torchattacks runs on PyTorch modules; comparing its attacks with ours means nothing unless
both see the same function, so :func:`cnn_twin` and :func:`preact_twin` (PreAct-ResNet-18 and
WRN) check the logits agree before returning.
Needs the optional ``torch`` (CPU wheel) and ``torchattacks`` packages.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bench.pytorch.usercnn import UserCNN
from models import PreActResNet18, WideResNet, make_logits_fn
from models.wide_resnet import blocks_per_stage


def _copy_weights(net, p) -> None:
    """Copies flax params ``p`` (Conv_i, Dense_0, Dense_1) into a twin with ``convs``,
    ``fc1`` and ``fc2`` (kernels to PyTorch's layouts). Call under ``torch.no_grad()``."""
    import torch

    for i, conv in enumerate(net.convs):
        conv.weight.copy_(torch.tensor(np.array(p[f"Conv_{i}"]["kernel"]).transpose(3, 2, 0, 1)))
        conv.bias.copy_(torch.tensor(np.array(p[f"Conv_{i}"]["bias"])))
    for lin, name in ((net.fc1, "Dense_0"), (net.fc2, "Dense_1")):
        lin.weight.copy_(torch.tensor(np.array(p[name]["kernel"]).T))
        lin.bias.copy_(torch.tensor(np.array(p[name]["bias"])))

def cnn_twin(module: Any, params: Any, x_check: np.ndarray, atol: float = 1e-3):
    """``torch.nn.Module`` computing ``models.CNN`` ``module`` with ``params``; raises
    RuntimeError if its logits on ``x_check`` differ from the Flax model's by more than
    ``atol``."""
    import torch

    from bench.pytorch.torch_models import PlainCNN  # imports torch

    p = params["params"]
    w, c = module.width, x_check.shape[-1]
    h, wd = x_check.shape[1] // 4, x_check.shape[2] // 4
    net = PlainCNN([c, w, w, 2 * w, 2 * w], (1, 3), 2 * w * h * wd, module.dense,
                   module.num_classes, module.mean, module.std).eval()
    with torch.no_grad():
        _copy_weights(net, p)
    return _checked(net, _flax_logits(module, params, x_check), x_check, atol, "the cnn")


def _channel_vector(values):
    import torch

    return torch.tensor(np.asarray(values, np.float32)).reshape(1, -1, 1, 1)


def _checked(net, ours: np.ndarray, x_check: np.ndarray, bound: float, what: str):
    """``net`` (a twin in eval mode) if its logits on ``x_check`` are within ``bound`` of
    ``ours`` (the Flax model's, :func:`_flax_logits`), with the largest difference kept in
    ``net.check_diff``; RuntimeError otherwise (a NaN difference fails too)."""
    import torch

    with torch.no_grad():
        diff = float(np.abs(net(to_torch(x_check)).numpy() - ours).max())
    if not diff <= bound:
        raise RuntimeError(f"the PyTorch copy of {what} differs from the Flax model by {diff} "
                           f"(allowed {bound:.3g}; max |logit| {np.abs(ours).max():.3g})")
    net.check_diff = diff
    return net


def _flax_logits(module: Any, variables: Any, x: np.ndarray) -> np.ndarray:
    """The Flax model's logits in full float32 (no TF32 on GPUs), the twins' reference."""
    import jax


    with jax.default_matmul_precision("highest"):
        return np.asarray(jax.jit(make_logits_fn(module))(variables, x))


def _block_strides(module: Any) -> list[int]:
    """Stride of each ``PreActBlock`` of a ``PreActResNet18`` or ``WideResNet``, in order."""

    if isinstance(module, PreActResNet18):
        return [2 if stage > 0 and i == 0 else 1
                for stage, count in enumerate(module.blocks) for i in range(count)]
    if isinstance(module, WideResNet):
        n = blocks_per_stage(module.depth)
        return [stride if i == 0 else 1 for stride in (1, 2, 2) for i in range(n)]
    raise TypeError(f"no PyTorch twin for {type(module).__name__}")


def preact_twin(module: Any, variables: Any, x_check: np.ndarray, rtol: float = 1e-4):
    """``torch.nn.Module`` (eval mode) computing ``models.PreActResNet18`` or
    ``models.WideResNet`` ``module`` with ``variables`` (params and BatchNorm running
    statistics); raises RuntimeError if its logits on ``x_check`` differ from the Flax
    model's (both in full float32) by more than ``rtol`` × (1 + max |logit|)."""
    import torch
    from torch import nn

    p, stats = variables["params"], variables["batch_stats"]

    def t(a, *perm):
        a = np.array(a, np.float32)
        return torch.tensor(a.transpose(*perm) if perm else a)

    def conv(kernel, stride, padding):
        k = np.asarray(kernel)
        c = nn.Conv2d(k.shape[2], k.shape[3], k.shape[:2], stride, padding, bias=False)
        with torch.no_grad():
            c.weight.copy_(t(k, 3, 2, 0, 1))  # HWIO -> OIHW
        return c

    def batchnorm(ps, bs):
        b = nn.BatchNorm2d(len(np.asarray(ps["scale"])), eps=1e-5, momentum=0.1)
        with torch.no_grad():
            b.weight.copy_(t(ps["scale"]))
            b.bias.copy_(t(ps["bias"]))
            b.running_mean.copy_(t(bs["mean"]))
            b.running_var.copy_(t(bs["var"]))
        return b

    class Block(nn.Module):
        def __init__(self, ps, bs, stride):
            super().__init__()
            self.bn1 = batchnorm(ps["BatchNorm_0"], bs["BatchNorm_0"])
            self.conv1 = conv(ps["Conv_0"]["kernel"], stride, 1)
            self.bn2 = batchnorm(ps["BatchNorm_1"], bs["BatchNorm_1"])
            self.conv2 = conv(ps["Conv_1"]["kernel"], 1, 1)
            self.shortcut = conv(ps["shortcut"]["kernel"], stride, 0) if "shortcut" in ps else None

        def forward(self, x):
            out = torch.relu(self.bn1(x))
            shortcut = self.shortcut(out) if self.shortcut is not None else x
            out = self.conv2(torch.relu(self.bn2(self.conv1(out))))
            return out + shortcut

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("mean", _channel_vector(module.mean))
            self.register_buffer("std", _channel_vector(module.std))
            self.stem = conv(p["Conv_0"]["kernel"], 1, 1)
            self.blocks = nn.Sequential(*[
                Block(p[f"PreActBlock_{i}"], stats[f"PreActBlock_{i}"], s)
                for i, s in enumerate(_block_strides(module))])
            self.bn = batchnorm(p["BatchNorm_0"], stats["BatchNorm_0"])
            dense = p["Dense_0"]
            self.fc = nn.Linear(*np.asarray(dense["kernel"]).shape)
            with torch.no_grad():
                self.fc.weight.copy_(t(dense["kernel"], 1, 0))
                self.fc.bias.copy_(t(dense["bias"]))

        def forward(self, z):
            z = self.blocks(self.stem((z - self.mean) / self.std))
            z = torch.relu(self.bn(z)).mean(dim=(2, 3))
            return self.fc(z)

    ours = _flax_logits(module, variables, x_check)
    return _checked(Net().eval(), ours, x_check, rtol * (1 + float(np.abs(ours).max())),
                    type(module).__name__)


def to_torch(x: np.ndarray):
    """NHWC float32 numpy -> NCHW torch tensor."""
    import torch

    return torch.tensor(np.ascontiguousarray(np.asarray(x, np.float32).transpose(0, 3, 1, 2)))


def user_cnn_twin(params: Any, x_check: np.ndarray, atol: float = 1e-3):
    """``torch.nn.Module`` computing ``bench.pytorch.usercnn.UserCNN`` (plain ``flax.linen``:
    two 3×3 SAME convs, 2×2 max pool, two dense layers) with ``params``; raises RuntimeError if
    its logits on ``x_check`` differ from the Flax model's by more than ``atol``."""
    import torch

    from bench.pytorch.torch_models import PlainCNN  # imports torch

    p = params["params"]
    k0, k1 = np.asarray(p["Conv_0"]["kernel"]), np.asarray(p["Conv_1"]["kernel"])
    d0, d1 = np.asarray(p["Dense_0"]["kernel"]), np.asarray(p["Dense_1"]["kernel"])
    net = PlainCNN([k0.shape[2], k0.shape[3], k1.shape[3]], (1,), d0.shape[0], d0.shape[1],
                   d1.shape[1]).eval()
    with torch.no_grad():
        _copy_weights(net, p)
    module = UserCNN(features=(k0.shape[3], k1.shape[3]), dense=d0.shape[1])
    return _checked(net, _flax_logits(module, params, x_check), x_check, atol, "the user CNN")
