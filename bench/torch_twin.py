"""A PyTorch copy of robustax's ``cnn`` on the same weights, for independent cross-checks.

torchattacks runs on PyTorch modules; comparing its attacks with ours means nothing unless
both see the same function, so :func:`cnn_twin` checks the logits agree before returning.
Needs the optional ``torch`` (CPU wheel) and ``torchattacks`` packages.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def cnn_twin(module: Any, params: Any, x_check: np.ndarray, atol: float = 1e-3):
    """``torch.nn.Module`` computing ``models.CNN`` ``module`` with ``params``; raises
    RuntimeError if its logits on ``x_check`` differ from the Flax model's by more than
    ``atol``."""
    import torch
    from torch import nn

    from models import make_logits_fn

    p = params["params"]
    w, c = module.width, x_check.shape[-1]
    h, wd = x_check.shape[1] // 4, x_check.shape[2] // 4
    mean = torch.tensor(np.asarray(module.mean, np.float32)).reshape(1, -1, 1, 1)
    std = torch.tensor(np.asarray(module.std, np.float32)).reshape(1, -1, 1, 1)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.convs = nn.ModuleList([nn.Conv2d(c, w, 3, padding=1), nn.Conv2d(w, w, 3, padding=1),
                                        nn.Conv2d(w, 2 * w, 3, padding=1),
                                        nn.Conv2d(2 * w, 2 * w, 3, padding=1)])
            self.fc1 = nn.Linear(2 * w * h * wd, module.dense)
            self.fc2 = nn.Linear(module.dense, module.num_classes)

        def forward(self, z):
            z = (z - mean) / std
            for i, conv in enumerate(self.convs):
                z = torch.relu(conv(z))
                if i % 2 == 1:
                    z = torch.nn.functional.max_pool2d(z, 2)
            z = z.permute(0, 2, 3, 1).flatten(1)  # NHWC flatten order, as in flax
            return self.fc2(torch.relu(self.fc1(z)))

    net = Net().eval()
    with torch.no_grad():
        for i, conv in enumerate(net.convs):
            conv.weight.copy_(torch.tensor(np.array(p[f"Conv_{i}"]["kernel"]).transpose(3, 2, 0, 1)))
            conv.bias.copy_(torch.tensor(np.array(p[f"Conv_{i}"]["bias"])))
        for lin, name in ((net.fc1, "Dense_0"), (net.fc2, "Dense_1")):
            lin.weight.copy_(torch.tensor(np.array(p[name]["kernel"]).T))
            lin.bias.copy_(torch.tensor(np.array(p[name]["bias"])))
        ours = np.asarray(make_logits_fn(module)(params, x_check))
        diff = np.abs(net(to_torch(x_check)).numpy() - ours).max()
    if diff > atol:
        raise RuntimeError(f"the PyTorch copy of the cnn differs from the Flax model by {diff}")
    return net


def to_torch(x: np.ndarray):
    """NHWC float32 numpy -> NCHW torch tensor."""
    import torch

    return torch.tensor(np.ascontiguousarray(np.asarray(x, np.float32).transpose(0, 3, 1, 2)))
