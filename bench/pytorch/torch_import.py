"""``robustax import-torch``: a PyTorch ``state_dict`` → robustax's Flax model, verified.

Architectures are those RobustBench's leaderboards use most, with the state-dict layout of its
model zoo (see :mod:`bench.pytorch.torch_models`): ``preact-resnet18``, ``resnet18`` and
``wrn-<depth>-<widen>`` (``wrn-28-10``, ``wrn-34-10``, ``wrn-70-16``; the TRADES layout of
``wide_resnet.py``, converted to ``wide-resnet``, or DeepMind's ``dm_wide_resnet.py``, converted
to ``dm-wide-resnet``, told apart by the keys). Loading uses
``torch.load(weights_only=True)`` or safetensors, never unrestricted unpickling. The state dict
is loaded strictly into the PyTorch definition, converted, and the converted Flax model must
compute the same logits as the PyTorch one on random 32×32 inputs (max difference ≤ 1e-4 ×
max(1, max |logit|), both in full float32) before anything is written; otherwise the importer
refuses. Every problem is a one-line :class:`~bench.errors.RobustaxError` (exit 2).

Normalisation: RobustBench's subclasses store ``mu``/``sigma`` buffers, which are used; its
``DMWideResNet`` keeps ``mean``/``std`` out of the state dict (``persistent=False``), so for that
layout ``--mean``/``--std`` must be given (older files that still hold them are read); other
models without buffers take raw [0, 1] pixels unless ``--mean``/``--std`` say otherwise.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path
from typing import Any

import numpy as np
from flax import traverse_util

from bench.errors import RobustaxError
from bench.store.io import atomic_write_bytes
from bench.sweep.weights import match, shapes
from defenses import checkpoint_bytes
from models import DMWideResNet, PreActResNet18, ResNet18, WideResNet, make_logits_fn

ARCHS = ("preact-resnet18", "resnet18", "wrn-28-10", "wrn-34-10", "wrn-70-16")
TOLERANCE = 1e-4
_NORM_BUFFERS = (("mu", "sigma"), ("mean", "std"))  # RobustBench subclasses; DMWideResNet
_IGNORED_PREFIXES = ("sub_block1.",)  # RobustBench WideResNet(sub_block1=True): unused in forward


@dataclasses.dataclass(frozen=True)
class Arch:
    """A parsed architecture name: its family and the options of its definition."""

    name: str
    family: str  # "preact", "resnet" or "wrn"
    options: dict

    def model(self, layout: str) -> str:
        """robustax's registered model name."""
        if self.family == "wrn" and layout == "dm":
            return "dm-wide-resnet"
        return {"preact": "preact-resnet18", "resnet": "resnet18", "wrn": "wide-resnet"}[self.family]


def parse_arch(name: str, **options: Any) -> Arch:
    """``preact-resnet18``, ``resnet18`` or ``wrn-<depth>-<widen>``; ``options`` override the
    definition's (``width``/``blocks`` for the ResNets, for small tests)."""
    if name == "preact-resnet18":
        return Arch(name, "preact", {"width": 64, "blocks": (2, 2, 2, 2), **options})
    if name == "resnet18":
        return Arch(name, "resnet", {"width": 64, "blocks": (2, 2, 2, 2), **options})
    m = re.fullmatch(r"wrn-(\d+)-(\d+)", name)
    if m and (int(m[1]) - 4) % 6 == 0 and int(m[1]) >= 10 and int(m[2]) >= 1:
        return Arch(name, "wrn", {"depth": int(m[1]), "widen": int(m[2]), **options})
    raise RobustaxError(f"unknown architecture {name!r}; choose one of: {', '.join(ARCHS)} "
                        f"(or wrn-<depth>-<widen> with depth = 6n + 4)")


def _torch():
    try:
        import torch
    except ImportError:
        raise RobustaxError("PyTorch is not installed; install the extra: pip install "
                            "'robustax[torch]'") from None
    return torch


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """The float tensors of a ``state_dict`` file as numpy arrays: ``.safetensors``, or a
    ``torch.save`` file read with ``weights_only=True``. A checkpoint dict holding the state
    dict under ``state_dict``/``model_state_dict``/``model`` is unwrapped, a DataParallel
    ``module.`` prefix stripped, ``num_batches_tracked`` counters dropped."""
    torch = _torch()
    path = Path(path)
    if not path.is_file():
        raise RobustaxError(f"state dict {str(path)!r} does not exist; pass the file saved with "
                            f"torch.save(model.state_dict(), ...) or a .safetensors file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and safetensors errors: one line either way
        detail = " ".join(str(e).split())[:200]
        raise RobustaxError(f"{str(path)!r} cannot be read with torch.load(weights_only=True) or "
                            f"safetensors ({type(e).__name__}: {detail}); save the state_dict() "
                            f"(tensors only) or a .safetensors file") from None
    for key in ("state_dict", "model_state_dict", "model", "net"):
        if isinstance(sd, dict) and not any(torch.is_tensor(v) for v in sd.values()) and \
                isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not sd or not all(torch.is_tensor(v) for v in sd.values()):
        raise RobustaxError(f"{str(path)!r} does not hold a state dict of tensors; save "
                            f"model.state_dict()")
    return {k: v.detach().cpu().float().numpy() for k, v in sd.items()}


def _clean(sd: dict) -> dict:
    """Without a DataParallel ``module.`` prefix, BatchNorm's ``num_batches_tracked`` counters
    and keys RobustBench's definitions create but never use (``sub_block1.*``)."""
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return {k: np.asarray(v, np.float32) for k, v in sd.items()
            if not k.endswith("num_batches_tracked") and not k.startswith(_IGNORED_PREFIXES)}


def _normalisation(sd: dict, mean, std, source: str) -> tuple[dict, tuple, tuple]:
    """Takes the normalisation buffers out of ``sd``; checks them against ``mean``/``std``
    given by the user. Neither: raw [0, 1] pixels (mean 0, std 1)."""
    sd = dict(sd)
    found = None
    for m, s in _NORM_BUFFERS:
        if m in sd and s in sd:
            found = (tuple(sd.pop(m).reshape(-1).tolist()), tuple(sd.pop(s).reshape(-1).tolist()))
    given = None if mean is None and std is None else (
        tuple(float(v) for v in (mean if mean is not None else [0.0])),
        tuple(float(v) for v in (std if std is not None else [1.0])))
    if given and min(given[1]) <= 0:
        raise RobustaxError(f"--std {list(given[1])} is impossible; every value must be > 0")
    if found and given and (len(found[0]) != len(given[0]) or
                            not np.allclose(found, given, rtol=0, atol=1e-6)):
        raise RobustaxError(f"{source} normalises with mean {list(found[0])}, std "
                            f"{list(found[1])}, but --mean/--std say {list(given[0])}, "
                            f"{list(given[1])}; drop --mean/--std to use the stored ones")
    if not found and not given and "init_conv.weight" in sd:
        raise RobustaxError(f"{source} is a DeepMind WideResNet, which normalises inside with the "
                            f"data set's mean and std, not stored in its state dict; pass them, for "
                            f"CIFAR-10: --mean 0.4914 0.4822 0.4465 --std 0.2471 0.2435 0.2616 (its "
                            f"default), CIFAR-100: --mean 0.5071 0.4865 0.4409 --std 0.2673 0.2564 "
                            f"0.2762")
    mean, std = found or given or ((0.0,), (1.0,))
    # float32 buffers: the shortest decimal that is the same float32 (0.4914, not 0.49140000343)
    mean, std = (tuple(float(str(np.float32(v))) for v in vs) for vs in (mean, std))
    return sd, mean, std


def _models(arch: Arch, sd: dict, mean, std, activation: str):
    """(PyTorch module, Flax module, layout) for ``arch``, sized by ``sd``'s head and stem."""
    # torch_models defines torch modules at import: import it only when torch is needed
    from bench.pytorch import torch_models as tm


    o = arch.options
    layout = "dm" if "init_conv.weight" in sd else "trades"
    head = {"preact": "linear", "resnet": "linear", "wrn": "logits" if layout == "dm" else "fc"}
    head, stem = head[arch.family], "init_conv" if layout == "dm" else "conv1"
    if f"{head}.weight" not in sd or f"{stem}.weight" not in sd:
        raise RobustaxError(f"the state dict has no {head}.weight or {stem}.weight, which "
                            f"{arch.name} has; check the architecture name (its keys start with: "
                            f"{', '.join(sorted({k.split('.')[0] for k in sd})[:8])})")
    k, c = sd[f"{head}.weight"].shape[0], sd[f"{stem}.weight"].shape[1]
    common = {"num_classes": k, "mean": mean, "std": std}
    if activation != "relu" and not (arch.family == "wrn" and layout == "dm"):
        raise RobustaxError(f"--activation {activation} exists only for DeepMind's WideResNets "
                            f"(init_conv/layer.* keys); drop it")
    if arch.family == "preact":
        net = tm.PreActResNet(**common, width=o["width"], blocks=o["blocks"], channels=c)
        flax = PreActResNet18(**common, width=o["width"], blocks=tuple(o["blocks"]))
    elif arch.family == "resnet":
        net = tm.ResNet(**common, width=o["width"], blocks=o["blocks"], channels=c)
        flax = ResNet18(**common, width=o["width"], blocks=tuple(o["blocks"]))
    elif layout == "dm":
        net = tm.DMWideResNet(**common, depth=o["depth"], widen=o["widen"],
                              activation=activation, channels=c)
        flax = DMWideResNet(**common, depth=o["depth"], widen=o["widen"], activation=activation)
    else:
        net = tm.WideResNet(**common, depth=o["depth"], widen=o["widen"],
                            bias_last="fc.bias" in sd, channels=c)
        flax = WideResNet(**common, depth=o["depth"], widen=o["widen"])
    return net, flax, layout


def _check_keys(net, sd: dict, arch: str, source: str) -> None:
    want = {k: tuple(v.shape) for k, v in net.state_dict().items()
            if not k.endswith("num_batches_tracked")}
    for k in want:
        if k not in sd:
            raise RobustaxError(f"{source} has no {k!r}, which {arch} needs; check the "
                                f"architecture name (or the depth/width in it)")
    for k in sd:
        if k not in want:
            raise RobustaxError(f"{source} has {k!r}, which {arch} does not have; check the "
                                f"architecture name (or the depth/width in it)")
    for k, shape in want.items():
        if tuple(sd[k].shape) != shape:
            raise RobustaxError(f"{source}: {k!r} has shape {tuple(sd[k].shape)}, {arch} needs "
                                f"{shape}; check the architecture name (depth/width)")


def _flax_variables(arch: Arch, layout: str, sd: dict) -> dict:
    """The Flax variables (nested dict) holding the state dict's arrays."""
    flat: dict[str, np.ndarray] = {}

    def conv(dst, src):
        flat[f"params/{dst}/kernel"] = sd[f"{src}.weight"].transpose(2, 3, 1, 0)  # OIHW -> HWIO

    def bn(dst, src):
        flat[f"params/{dst}/scale"] = sd[f"{src}.weight"]
        flat[f"params/{dst}/bias"] = sd[f"{src}.bias"]
        flat[f"batch_stats/{dst}/mean"] = sd[f"{src}.running_mean"]
        flat[f"batch_stats/{dst}/var"] = sd[f"{src}.running_var"]

    def dense(dst, src):
        w = sd[f"{src}.weight"]
        flat[f"params/{dst}/kernel"] = w.T
        flat[f"params/{dst}/bias"] = sd.get(f"{src}.bias", np.zeros(w.shape[0], np.float32))

    o, k = arch.options, 0
    if arch.family in ("preact", "resnet"):
        conv("Conv_0", "conv1")
        if arch.family == "resnet":
            bn("BatchNorm_0", "bn1")
        for s, n in enumerate(o["blocks"]):
            for i in range(n):
                src = f"layer{s + 1}.{i}"
                if arch.family == "preact":
                    dst = f"PreActBlock_{k}"
                    bn(f"{dst}/BatchNorm_0", f"{src}.bn1")
                    bn(f"{dst}/BatchNorm_1", f"{src}.bn2")
                    if f"{src}.shortcut.0.weight" in sd:
                        conv(f"{dst}/shortcut", f"{src}.shortcut.0")
                else:
                    dst = f"BasicBlock_{k}"
                    bn(f"{dst}/BatchNorm_0", f"{src}.bn1")
                    bn(f"{dst}/BatchNorm_1", f"{src}.bn2")
                    if f"{src}.shortcut.0.weight" in sd:
                        conv(f"{dst}/shortcut_conv", f"{src}.shortcut.0")
                        bn(f"{dst}/shortcut_bn", f"{src}.shortcut.1")
                conv(f"{dst}/Conv_0", f"{src}.conv1")
                conv(f"{dst}/Conv_1", f"{src}.conv2")
                k += 1
        if arch.family == "preact":
            bn("BatchNorm_0", "bn")
        dense("Dense_0", "linear")
    else:
        n = (o["depth"] - 4) // 6
        dm = layout == "dm"
        conv("Conv_0", "init_conv" if dm else "conv1")
        for s in range(3):
            for i in range(n):
                src, dst = (f"layer.{s}.block.{i}" if dm else f"block{s + 1}.layer.{i}",
                            f"DMBlock_{k}" if dm else f"PreActBlock_{k}")
                bn(f"{dst}/BatchNorm_0", f"{src}.batchnorm_0" if dm else f"{src}.bn1")
                conv(f"{dst}/Conv_0", f"{src}.conv_0" if dm else f"{src}.conv1")
                bn(f"{dst}/BatchNorm_1", f"{src}.batchnorm_1" if dm else f"{src}.bn2")
                conv(f"{dst}/Conv_1", f"{src}.conv_1" if dm else f"{src}.conv2")
                short = f"{src}.shortcut" if dm else f"{src}.convShortcut"
                if f"{short}.weight" in sd:
                    conv(f"{dst}/shortcut", short)
                k += 1
        bn("BatchNorm_0", "batchnorm" if dm else "bn1")
        dense("Dense_0", "logits" if dm else "fc")
    return traverse_util.unflatten_dict({k: np.ascontiguousarray(v, np.float32)
                                         for k, v in flat.items()}, sep="/")


@dataclasses.dataclass(frozen=True)
class Converted:
    """A verified conversion: the Flax module and variables, and what the check measured."""

    arch: Arch
    layout: str
    module: Any
    variables: dict
    max_diff: float
    max_logit: float

    def metadata(self, source: str = "", sha256: str = "") -> dict:
        m = self.module
        options = {k: getattr(m, k) for k in ("width", "blocks", "depth", "widen", "activation")
                   if hasattr(m, k)}
        return {"model": self.arch.model(self.layout), "model_options": options, "mean": list(m.mean),
                "std": list(m.std), "num_classes": m.num_classes,
                "converted_from": {"arch": self.arch.name, "layout": self.layout,
                                   "file": source, "sha256": sha256,
                                   "max_logit_diff": self.max_diff, "tolerance": TOLERANCE}}


def convert(arch: Arch | str, state_dict: dict[str, np.ndarray], *, mean=None, std=None,
            activation: str = "relu", check_inputs: int = 8, seed: int = 0,
            source: str = "the state dict") -> Converted:
    """Converts and verifies; RobustaxError (nothing returned) if any check fails."""
    import jax


    torch = _torch()
    arch = parse_arch(arch) if isinstance(arch, str) else arch
    if activation not in ("relu", "swish"):
        raise RobustaxError(f"--activation {activation!r} is unknown; choose relu or swish")
    sd, mean, std = _normalisation(_clean(state_dict), mean, std, source)
    net, module, layout = _models(arch, sd, mean, std, activation)
    _check_keys(net, sd, arch.name, source)
    net.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()},
                        strict=False)  # keys checked above; num_batches_tracked stays at 0
    net.eval()
    c = int(sd["init_conv.weight" if layout == "dm" else "conv1.weight"].shape[1])
    like = shapes(module, (32, 32, c))
    variables = match(traverse_util.flatten_dict(_flax_variables(arch, layout, sd), sep="/"),
                      like, source, arch.name)
    x = np.random.default_rng(seed).uniform(0, 1, (check_inputs, 32, 32, c)).astype(np.float32)
    with torch.no_grad():
        theirs = net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    with jax.default_matmul_precision("highest"):
        ours = np.asarray(jax.jit(make_logits_fn(module))(variables, x))
    diff, scale = float(np.abs(theirs - ours).max()), float(np.abs(theirs).max())
    if not diff <= TOLERANCE * max(1.0, scale):
        raise RobustaxError(f"the converted {arch.name} computes other logits than the PyTorch "
                            f"model (max difference {diff:.3g}, max |logit| {scale:.3g}, tolerance "
                            f"{TOLERANCE:g} × max(1, max |logit|)); nothing was written. Check the "
                            f"architecture (e.g. --activation swish for DeepMind WideResNets)")
    return Converted(arch, layout, module, variables, diff, scale)


def import_torch(arch: str, state_dict: str | Path, out: str | Path, *, mean=None, std=None,
                 activation: str = "relu", check_inputs: int = 8) -> Converted:
    """``robustax import-torch``: load, convert, verify, then write ``out`` (atomically)."""

    arch_ = parse_arch(arch)  # a wrong name fails before anything is read
    out = Path(out)
    if out.suffix != ".safetensors":
        raise RobustaxError(f"output {str(out)!r} must end in .safetensors")
    sd = load_state_dict(state_dict)
    conv = convert(arch_, sd, mean=mean, std=std, activation=activation,
                   check_inputs=check_inputs, source=f"state dict {str(state_dict)!r}")
    sha = hashlib.sha256(Path(state_dict).read_bytes()).hexdigest()
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, checkpoint_bytes(conv.variables,
                                             conv.metadata(Path(state_dict).name, sha)))
    return conv
