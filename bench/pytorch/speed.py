"""Speed benchmark: PGD-k time over k × (forward + input gradient), measured in one run.

Ratios, not seconds, are what carry across machines: a ratio near 1 means the attack loop
adds nothing to the model's own cost. Each timing is the minimum over ``repeats`` runs
after a warm-up (compilation excluded), with ``block_until_ready``. With
``torchattacks=True`` the same weights are copied into an equivalent PyTorch model and
torchattacks' PGD is timed on the same inputs.

``isa`` (``robustax speed --isa avx2``) caps both frameworks at an instruction set, so the
AVX2 figures can be produced on an AVX-512 machine: ``--xla_cpu_max_isa`` in ``XLA_FLAGS``
for XLA, ``ONEDNN_MAX_CPU_ISA`` and ``ATEN_CPU_CAPABILITY`` for PyTorch (:func:`isa_env`).
Each library reads its variable once, at a moment of its own (XLA when its backend starts,
ATen and oneDNN on first use), so a capped run always happens in a fresh
``python -m bench speed`` process started with the variables set: the cap then holds from
the interpreter's first instruction whatever this process has already run (see
:func:`plan_isa`).
"""

from __future__ import annotations

import functools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from attacks import APGD, FGSM, PGD, Square, fastpath
from bench import xla
from bench.errors import RobustaxError
from bench.pytorch.torch_twin import cnn_twin, to_torch, user_cnn_twin
from bench.pytorch.usercnn import UserCNN
from bench.store.io import atomic_write_bytes
from bench.sweep import engine as ev
from models import CNN, init_variables, make_logits_fn
from models.layers import conv_general_dilated as conv


def _best_time(fn: Callable[[], object], repeats: int) -> float:
    jax.block_until_ready(fn())  # warm-up and compile
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t0)
    return best


def _paired(fns: list[Callable[[], object]], repeats: int) -> list[float]:
    """Minimum wall time of each of ``fns`` over ``repeats`` rounds that call them in turn
    (order reversed every other round), after one warm-up call each."""
    for fn in fns:
        jax.block_until_ready(_result(fn()))
    best = [float("inf")] * len(fns)
    for r in range(repeats):
        order = range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))
        for i in order:
            t0 = time.perf_counter()
            jax.block_until_ready(_result(fns[i]()))
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


def _result(value):
    """JAX values as they are (to block on); anything else (torch tensors, numpy) as None."""
    leaves = jax.tree.leaves(value)
    return value if leaves and all(isinstance(v, jax.Array) for v in leaves) else None


def input_gradient(logits_fn: Callable) -> Callable:
    """``(params, x, y) -> (input gradient of the summed cross-entropy, logits)``: one forward
    and one input gradient, the unit every ratio of this module is measured in."""
    def loss(z, params, y):
        logits = logits_fn(params, z)
        return -jnp.sum(jax.nn.log_softmax(logits)[jnp.arange(y.shape[0]), y]), logits

    return lambda params, x, y: jax.grad(loss, has_aux=True)(x, params, y)


def measure(batch: int = 256, steps: int = 20, repeats: int = 5, seed: int = 0) -> dict:
    """Times the ``cnn`` (28×28×1, 10 classes) forward+input-gradient and PGD-``steps`` L∞."""

    module = CNN(num_classes=10, mean=(0.13,), std=(0.31,))
    params = init_variables(module, jax.random.key(seed), (28, 28, 1))
    logits_fn = make_logits_fn(module)
    kx, ky, ka = jax.random.split(jax.random.key(seed + 1), 3)
    x = jax.random.uniform(kx, (batch, 28, 28, 1))
    y = jax.random.randint(ky, (batch,), 0, 10)
    eps = jnp.float32(0.3)

    fwd_bwd = jax.jit(input_gradient(logits_fn))

    results = {"batch": batch, "steps": steps, "backend": jax.default_backend(),
               "devices": jax.device_count()}
    results["fwd_bwd_s"] = _best_time(lambda: fwd_bwd(params, x, y), repeats)
    results["fwd_s"] = _best_time(lambda: jax.jit(logits_fn)(params, x), repeats)
    # APGD-CE (k gradient steps) and Square (k queries on a budget where no example is
    # fooled, ε = 0: every query is spent), each over its own unit of work.
    apgd = jax.jit(lambda p, x, y, k: APGD(norm="linf", steps=steps)(logits_fn, p, x, y, eps, k))
    results["apgd_s"] = _best_time(lambda: apgd(params, x, y, ka), repeats)
    square = jax.jit(lambda p, x, y, k: Square(norm="linf", queries=steps)(
        logits_fn, p, x, y, jnp.float32(0.0), k))
    results["square_s"] = _best_time(lambda: square(params, x, y, ka), repeats)
    results["ratio_apgd"] = results["apgd_s"] / (steps * results["fwd_bwd_s"])
    results["ratio_square"] = results["square_s"] / (steps * results["fwd_s"])
    for name, unroll in (("pgd_s", 0), ("pgd_rolled_s", 1)):
        attack = PGD(norm="linf", steps=steps, unroll=unroll)
        fn = jax.jit(lambda p, x, y, k, a=attack: a(logits_fn, p, x, y, eps, k))
        results[name] = _best_time(lambda: fn(params, x, y, ka), repeats)
    # The sweep's evaluator: per-example keys, vmap over examples and ε, correctness out.
    xs, ys = np.asarray(x), np.asarray(y)
    attack = PGD(norm="linf", steps=steps)
    ev.attack_correct(attack, logits_fn, params, xs, ys, [0.3], ka, batch)
    best = float("inf")
    for _ in range(repeats):
        _, seconds, _ = ev.attack_correct(attack, logits_fn, params, xs, ys, [0.3], ka, batch)
        best = min(best, seconds)
    results["sweep_pgd_s"] = best
    results["ratio"] = results["pgd_s"] / (steps * results["fwd_bwd_s"])
    results["ratio_rolled"] = results["pgd_rolled_s"] / (steps * results["fwd_bwd_s"])
    results["ratio_sweep"] = results["sweep_pgd_s"] / (steps * results["fwd_bwd_s"])
    results["_model"] = (module, params, np.asarray(x), np.asarray(y))
    return results


def torchattacks_time(module, params, x: np.ndarray, y: np.ndarray, steps: int,
                      repeats: int, device: str | None = None) -> float:
    """torchattacks PGD-``steps`` (ε=0.3, α=2.5ε/steps) on a PyTorch copy of the ``cnn``, on
    ``device`` (a torch device name; default the CPU), synchronised before each clock read."""
    import torch
    import torchattacks


    net = cnn_twin(module, params, x)  # checks the copy computes the same logits
    xt = to_torch(x)
    yt = torch.tensor(y.astype(np.int64))
    if device is not None:
        net, xt, yt = net.to(device), xt.to(device), yt.to(device)
    atk = torchattacks.PGD(net, eps=0.3, alpha=2.5 * 0.3 / steps, steps=steps, random_start=True)
    return torch_best_time(lambda: atk(xt, yt), repeats, device)


def torch_best_time(fn: Callable[[], object], repeats: int, device: str | None = None) -> float:
    """Minimum wall time of ``fn()`` over ``repeats`` runs after one warm-up; on a CUDA
    ``device`` the clock is read only after ``torch.cuda.synchronize``."""
    import torch

    def sync():
        if device is not None and torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)

    fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


SUITE_EPS = (0.1, 0.2, 0.3, 0.4)  # the E ε values of the multi-ε comparison


def suite(batch: int = 256, steps: int = 20, repeats: int = 3, torchattacks: bool = True,
          models: tuple[str, ...] = ("cnn", "user-cnn"), seed: int = 0,
          log: Callable[[str], None] = print) -> list[dict]:
    """One run of every speed figure of ``robustax speed``, as rows (see :func:`main`).

    Per model (robustax's ``cnn`` and a plain-Flax user CNN, both 28×28×1, random weights):
    forward and forward + input gradient (the units); FGSM, PGD-k, APGD-CE-k as jitted kernels
    through the Python API (over k × (fwd + grad)), Square-k at ε = 0 (over k × fwd); PGD-k
    on the plain module with the fast path off; PGD-k through the sweep engine at one ε (over
    k × (fwd + grad) and over the API kernel, with the clean mask given as a sweep gives it and
    with its own clean pass) and at E ε values in one compiled call (over E single calls); torchattacks FGSM and PGD-k on
    a PyTorch twin (logits checked equal first). Times are minima over ``repeats`` after a
    warm-up; compile time is measured apart."""

    rows = []
    kx, ky, ka = jax.random.split(jax.random.key(seed + 1), 3)
    x = jax.random.uniform(kx, (batch, 28, 28, 1))
    y = jax.random.randint(ky, (batch,), 0, 10)
    xs, ys = np.asarray(x), np.asarray(y)
    eps = jnp.float32(0.3)

    def add(model, path, what, k, seconds, unit=None, unit_name="", compile_s=None, **extra):
        row = {"model": model, "path": path, "measure": what, "k": k, "seconds": seconds,
               "compile_seconds": compile_s, "unit": unit_name,
               "ratio_to_unit": None if unit is None else seconds / (k * unit), **extra}
        rows.append(row)
        ratio = "" if unit is None else f"  {row['ratio_to_unit']:.2f} × {k} × {unit_name}"
        log(f"  {model:9s} {path:12s} {what:40s} {seconds * 1e3:9.1f} ms{ratio}")
        return seconds

    def compiled(fn, *args):
        t0 = time.perf_counter()
        c = jax.jit(fn).lower(*args).compile()
        return c, time.perf_counter() - t0

    for name in models:
        module = (CNN(num_classes=10, mean=(0.13,), std=(0.31,)) if name == "cnn"
                  else UserCNN())
        params = module.init(jax.random.key(seed), x[:1])
        logits_fn = lambda p, z, m=module: m.apply(p, z)  # noqa: E731  (what users write)
        fast = fastpath.fast(logits_fn)
        plain = lambda p, z: logits_fn(p, z)  # noqa: E731
        plain.fast = False
        log(f"{name}: {sum(a.size for a in jax.tree.leaves(params)):,} parameters")

        def call(c, *args):
            return lambda: c(*args)

        # Every ratio compares times taken alternately in the same loop (_paired), so load
        # that comes and goes on a shared machine hits both sides alike.
        c_fwd, _ = compiled(fast, params, x)
        c_unit, _ = compiled(input_gradient(fast), params, x, y)
        c_plain, _ = compiled(input_gradient(plain), params, x, y)
        fwd_f, unit_f = call(c_fwd, params, x), call(c_unit, params, x, y)
        fwd, unit, unit_plain = _paired([fwd_f, unit_f, call(c_plain, params, x, y)], repeats)
        add(name, "model", "forward", 1, fwd)
        add(name, "model", "forward + input gradient", 1, unit)
        add(name, "model", "forward + input gradient, fast path off", 1, unit_plain, unit,
            "(fwd+grad)")

        kernels = [("FGSM", 1, FGSM(norm="linf"), logits_fn, eps, False),
                   (f"PGD-{steps}", steps, PGD(norm="linf", steps=steps), logits_fn, eps, False),
                   (f"PGD-{steps}, fast path off", steps, PGD(norm="linf", steps=steps), plain,
                    eps, False),
                   (f"APGD-CE-{steps}", steps, APGD(norm="linf", steps=steps), logits_fn, eps,
                    False),
                   (f"Square-{steps} (ε = 0)", steps, Square(norm="linf", queries=steps),
                    logits_fn, jnp.float32(0.0), True)]
        api = {}
        for what, k, attack, fn, e, per_fwd in kernels:
            c, comp = compiled(lambda p, z, t, key, a=attack, f=fn, e=e: a(f, p, z, t, e, key),
                               params, x, y, ka)
            api[what] = call(c, params, x, y, ka)
            t, u = _paired([api[what], fwd_f if per_fwd else unit_f], repeats)
            add(name, "python api", what, k, t, u, "fwd" if per_fwd else "(fwd+grad)", comp)
        # What a user writes without their own jax.jit: the attack compiles itself on the first
        # call (attacks.base.compiled) and reuses the program for later batches.
        direct = PGD(norm="linf", steps=steps)
        t, u = _paired([lambda: direct(logits_fn, params, x, y, eps, ka), unit_f], repeats)
        add(name, "python api", f"PGD-{steps}, called without jax.jit", steps, t, u, "(fwd+grad)")

        # The sweep engine as a sweep runs an attack cell: the unit's clean mask (computed
        # once for its clean cell) is given, the attack's own logits score its points.
        clean = ev.clean_correct(logits_fn, params, xs, ys, batch)

        def engine(eps_list, given=clean):
            attack = PGD(norm="linf", steps=steps)
            _, _, comp = ev.attack_correct(attack, logits_fn, params, xs, ys, eps_list, ka,
                                           batch, clean=given)  # compiles; later calls reuse it
            return (lambda: ev.attack_correct(attack, logits_fn, params, xs, ys, eps_list, ka,
                                              batch, clean=given)), comp

        one_f, comp_one = engine([0.3])
        own_f, _ = engine([0.3], None)
        multi_f, comp_multi = engine(list(SUITE_EPS))
        one, u = _paired([one_f, unit_f], repeats)
        add(name, "sweep engine", f"PGD-{steps}, 1 ε (wall time)", steps, one, u, "(fwd+grad)",
            comp_one)
        kernel = f"PGD-{steps}"
        one, own, k_api = _paired([one_f, own_f, api[kernel]], repeats)
        add(name, "sweep engine", f"PGD-{steps}, 1 ε, over the API kernel", 1, one, k_api,
            f"(API {kernel})")
        add(name, "sweep engine", f"PGD-{steps}, 1 ε, own clean pass, over the API kernel", 1,
            own, k_api, f"(API {kernel})")
        multi, one = _paired([multi_f, one_f], repeats)
        add(name, "sweep engine", f"PGD-{steps}, {len(SUITE_EPS)} ε in one call (wall time)",
            len(SUITE_EPS), multi, one, "(PGD, 1 ε)", comp_multi)

        if torchattacks:
            try:
                import torchattacks as ta

            except ImportError as e:
                log(f"  torchattacks: not installed ({e.name}); pip install torch and "
                    f"pip install --no-deps torchattacks")
                continue
            net = cnn_twin(module, params, xs[:16]) if name == "cnn" else \
                user_cnn_twin(params, xs[:16])
            xt, yt = to_torch_batch(xs, ys)
            for what, k, atk in (
                    ("FGSM", 1, ta.FGSM(net, eps=0.3)),
                    (f"PGD-{steps}", steps, ta.PGD(net, eps=0.3, alpha=2.5 * 0.3 / steps,
                                                   steps=steps, random_start=True))):
                fns = [lambda a=atk: a(xt, yt), api[what]] + ([one_f] if k == steps else [])
                times = _paired(fns, repeats)
                t, ours = times[0], times[1]
                extra = {"robustax_api_over_torch": ours / t}
                if k == steps:
                    extra["robustax_sweep_over_torch"] = times[2] / t
                add(name, "torchattacks", what, k, t, None, "", **extra)
                log(f"    robustax / torchattacks (timed alternately): python api {ours / t:.2f}"
                    + (f", sweep engine {times[2] / t:.2f}" if k == steps else ""))
    return rows


CNN_CONVS = (("conv1", 28, 1, 32), ("conv2", 28, 32, 32), ("conv3", 14, 32, 64),
             ("conv4", 14, 64, 64))
"""The ``cnn``'s 3×3 SAME convolutions on 28×28×1 (width 32): name, side, in, out channels."""


def layer_profile(batch: int = 256, repeats: int = 5, torch_too: bool = True,
                  log: Callable[[str], None] = print) -> list[dict]:
    """Where the ``cnn``'s forward + input gradient goes: each convolution's forward and input
    gradient (the fast rule of ``models.layers``) under XLA, and under PyTorch as torchattacks
    runs it (NCHW, ``conv2d`` and ``grad.conv2d_input``), with GFLOP/s; then the whole model's
    forward + input gradient and what is left after the convolutions (ReLU, pooling, dense
    layers, loss). Rows in ms, minimum of ``repeats`` after a warm-up."""

    rows = []
    dn = ("NHWC", "HWIO", "NHWC")

    def jax_ms(fn, *args):
        c = jax.jit(fn).lower(*args).compile()
        return _best_time(lambda: c(*args), repeats) * 1e3

    def torch_ms(fn):
        import torch

        with torch.no_grad():
            return torch_best_time(fn, repeats) * 1e3

    total = {"xla_fwd_ms": 0.0, "xla_grad_ms": 0.0, "torch_fwd_ms": 0.0, "torch_grad_ms": 0.0}
    for name, side, cin, cout in CNN_CONVS:
        k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
        x = jax.random.normal(k1, (batch, side, side, cin))
        w = jax.random.normal(k2, (3, 3, cin, cout))
        g = jax.random.normal(k3, (batch, side, side, cout))
        f = functools.partial(conv, window_strides=(1, 1), padding="SAME", dimension_numbers=dn)
        row = {"layer": f"{name} {cin}→{cout}, {side}×{side}",
               "gflop": 2 * batch * side * side * 9 * cin * cout / 1e9,
               "xla_fwd_ms": jax_ms(f, x, w),
               "xla_grad_ms": jax_ms(lambda x, w, g: jax.vjp(lambda z: f(z, w), x)[1](g)[0], x, w, g)}
        if torch_too:
            import torch

            xt, wt = torch.randn(batch, cin, side, side), torch.randn(cout, cin, 3, 3)
            gt = torch.randn(batch, cout, side, side)
            row["torch_fwd_ms"] = torch_ms(lambda: torch.nn.functional.conv2d(xt, wt, padding=1))
            row["torch_grad_ms"] = torch_ms(
                lambda: torch.nn.grad.conv2d_input(xt.shape, wt, gt, padding=1))
        for k in total:
            total[k] += row.get(k, 0.0)
        rows.append(row)
        log(f"  {row['layer']:24s} " + "  ".join(f"{k} {v:7.1f}" for k, v in row.items()
                                                    if k.endswith("_ms")))
    rows.append({"layer": "all convolutions", "gflop": sum(r["gflop"] for r in rows),
                 **{k: v for k, v in total.items() if torch_too or k.startswith("xla")}})
    module = CNN(num_classes=10, mean=(0.13,), std=(0.31,))
    params = module.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    logits_fn = make_logits_fn(module)
    x = jax.random.uniform(jax.random.key(1), (batch, 28, 28, 1))
    y = jax.random.randint(jax.random.key(2), (batch,), 0, 10)
    whole = jax_ms(input_gradient(logits_fn), params, x, y)
    rows.append({"layer": "whole cnn, forward + input gradient", "xla_fwd_ms": None,
                 "xla_grad_ms": None, "xla_total_ms": whole})
    rows.append({"layer": "rest (ReLU, pooling, dense, loss)", "xla_total_ms":
                 whole - total["xla_fwd_ms"] - total["xla_grad_ms"]})
    for row in rows:
        for side in ("xla", "torch"):
            if row.get(f"{side}_fwd_ms") is not None and row.get("gflop"):
                row[f"{side}_gflop_per_s"] = 2 * row["gflop"] / (
                    row[f"{side}_fwd_ms"] + row[f"{side}_grad_ms"]) * 1e3
    log(f"  whole cnn forward + input gradient {whole:.1f} ms, of which convolutions "
        f"{total['xla_fwd_ms'] + total['xla_grad_ms']:.1f} ms")
    return rows


def write_layers(rows: list[dict], out: str, meta: dict) -> list:
    """Writes ``layers.csv`` and ``layers.md`` (the :func:`layer_profile` rows) under ``out``;
    the CSV carries ``meta`` as constant columns (:func:`_with_meta`)."""
    import pandas as pd

    frame = pd.DataFrame(rows)
    csv_path, md_path = Path(out) / "layers.csv", Path(out) / "layers.md"
    atomic_write_bytes(csv_path, _with_meta(frame, meta).to_csv(index=False).encode())
    show = frame.round(2).astype(object)
    show = show.where(frame.notna(), "")
    lines = ["# robustax speed --layers: where the cnn's forward + input gradient goes", ""] + [
        f"- {k}: {v}" for k, v in meta.items()] + [
        "", "Each convolution (3×3, SAME) timed alone: forward and input gradient, under XLA "
        "(the fast rule of `models.layers`) and under PyTorch as torchattacks runs it (NCHW). "
        "GFLOP/s counts forward + input gradient (2 × `gflop`). Minimum of `repeats` after a "
        "warm-up.", "", show.to_markdown(index=False, missingval=""), ""]
    atomic_write_bytes(md_path, "\n".join(lines).encode())
    return [csv_path, md_path]


def _with_meta(frame, meta: dict):
    """``frame`` with each entry of ``meta`` (CPU, ISA caps, versions, settings) appended as a
    constant column, so a CSV says where it was measured; a row column of the same name wins."""
    return frame.assign(**{k: str(v) for k, v in meta.items() if k not in frame.columns})


def to_torch_batch(x: np.ndarray, y: np.ndarray):
    import torch


    return to_torch(x), torch.tensor(y.astype(np.int64))


def write_suite(rows: list[dict], out: str, meta: dict) -> list:
    """Writes ``speed.csv`` and ``speed.md`` (with the settings in ``meta``) under ``out``;
    the CSV carries ``meta`` as constant columns (:func:`_with_meta`)."""
    import pandas as pd

    frame = pd.DataFrame(rows)
    csv_path, md_path = Path(out) / "speed.csv", Path(out) / "speed.md"
    atomic_write_bytes(csv_path, _with_meta(frame, meta).to_csv(index=False).encode())
    show = frame.copy()
    show["ms"] = (show.pop("seconds") * 1e3).round(1)
    show["compile_s"] = show.pop("compile_seconds").round(2)
    for col in [c for c in show.columns if c.startswith("ratio") or c.startswith("robustax")]:
        show[col] = show[col].round(3)
    show = show.astype(object).where(show.notna(), "")
    lines = ["# robustax speed", ""] + [f"- {k}: {v}" for k, v in meta.items()] + [
        "", "Each ratio divides a row's time by its reference (`unit`; torchattacks for the "
        "`robustax_*_over_torch` columns) timed alternately with it in one loop, minimum of "
        "`repeats`; under changing load the `ms` of different rows are not comparable. "
        "Sweep-engine rows are wall time of `engine.attack_correct` as a sweep calls it for an "
        "attack cell (the unit's clean mask given; PGD's points scored from the logits it "
        "computed), checks and transfers included; the `own clean pass` row runs the clean "
        "pass too, as a direct API call without `clean=` does."] + [
        "", show.to_markdown(index=False, missingval=""), ""]
    atomic_write_bytes(md_path, "\n".join(lines).encode())
    return [csv_path, md_path]


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> set[str] | None:
    """The CPU's feature flags from ``/proc/cpuinfo`` (``avx2``, ``avx512f``, ...); None where
    there is no such file (not Linux) or it has no ``flags`` line (not x86)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


ISAS = ("native", "avx2", "avx")
"""``robustax speed --isa``: native (no cap), or the instruction set both frameworks stop at."""

_CAPS = {"avx2": {"xla": "AVX2", "onednn": "AVX2", "aten": "avx2"},
         "avx": {"xla": "AVX", "onednn": "AVX", "aten": "default"}}
"""Per cap, the value of ``--xla_cpu_max_isa``, ``ONEDNN_MAX_CPU_ISA`` and
``ATEN_CPU_CAPABILITY`` (ATen has no AVX level: ``default`` is its plain, unvectorised one)."""

_X86 = ("x86_64", "amd64", "i386", "i686", "x86")
_CHILD = "ROBUSTAX_SPEED_ROWS"
"""Set in the fresh process of a capped run: where it writes its rows (JSON) for the caller."""


def _xla_max_isa(flags: str) -> str | None:
    """The last ``--xla_cpu_max_isa`` in an ``XLA_FLAGS`` string (the one XLA keeps), or None."""
    values = [f.split("=", 1)[1] for f in flags.split() if f.startswith("--xla_cpu_max_isa=")]
    return values[-1] if values else None


def caps(environ: Mapping[str, str]) -> dict:
    """The ISA caps an environment sets: ``xla`` (``--xla_cpu_max_isa`` in ``XLA_FLAGS``),
    ``onednn`` (``ONEDNN_MAX_CPU_ISA``), ``aten`` (``ATEN_CPU_CAPABILITY``); None where unset."""
    return {"xla": _xla_max_isa(environ.get("XLA_FLAGS", "")),
            "onednn": environ.get("ONEDNN_MAX_CPU_ISA"), "aten": environ.get("ATEN_CPU_CAPABILITY")}


def isa_env(isa: str, environ: Mapping[str, str]) -> dict[str, str]:
    """The variables to set on top of ``environ`` to cap both frameworks at ``isa``: its
    ``XLA_FLAGS`` with any ``--xla_cpu_max_isa`` replaced by the cap's (every other flag
    kept, in order), ``ONEDNN_MAX_CPU_ISA`` and ``ATEN_CPU_CAPABILITY``; empty for native."""
    if isa == "native":
        return {}
    if isa not in _CAPS:
        raise RobustaxError(f"--isa {isa!r}: choose from {', '.join(ISAS)}")
    cap = _CAPS[isa]
    flags = [f for f in environ.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_cpu_max_isa=")]
    return {"XLA_FLAGS": " ".join([*flags, f"--xla_cpu_max_isa={cap['xla']}"]),
            "ONEDNN_MAX_CPU_ISA": cap["onednn"], "ATEN_CPU_CAPABILITY": cap["aten"]}


def plan_isa(isa: str, environ: Mapping[str, str], cpu_flags: set[str] | None,
             machine: str) -> dict[str, str] | None:
    """Where a run at ``isa`` happens: None for this process, else the variables of the fresh
    process to start (:func:`isa_env`). Native runs here; a capped run runs here only in the
    process started for it (``ROBUSTAX_SPEED_ROWS`` set), whose variables were in place
    before any library loaded. Refuses (one-line :class:`~bench.errors.RobustaxError`) a cap
    on a CPU that is not x86 or lacks that instruction set, and a started process whose
    variables do not hold the cap (never starts another: no loop)."""
    if isa == "native":
        return None
    env = isa_env(isa, environ)  # checks the name
    if machine.lower() not in _X86:
        raise RobustaxError(f"--isa {isa} caps an x86 instruction set; this machine is "
                            f"{machine}: use --isa native")
    if cpu_flags is not None and isa not in cpu_flags:
        raise RobustaxError(f"--isa {isa}: this CPU has no {isa.upper()} "
                            f"(/proc/cpuinfo flags); use a lower cap or --isa native")
    if _CHILD in environ:
        if caps(environ) != _CAPS[isa]:
            raise RobustaxError(
                f"--isa {isa}: this process was started for a capped run but its environment "
                f"caps {caps(environ)}, not {_CAPS[isa]}; unset {_CHILD} and rerun "
                f"`robustax speed --isa {isa}`")
        return None
    return env


def isa_meta(isa: str, environ: Mapping[str, str], cpu_flags: set[str] | None,
             torch_capability: str | None) -> dict:
    """What the run records about instruction sets: the CPU, whether it has AVX-512, the
    ``--isa`` asked for, the cap each framework runs under (read from the environment, so a
    cap exported by hand is recorded too), ATen's capability in use, and ``XLA_FLAGS``."""
    have = caps(environ)
    torch_cap = ", ".join(f"{name}={value}" for name, value in (
        ("ONEDNN_MAX_CPU_ISA", have["onednn"]), ("ATEN_CPU_CAPABILITY", have["aten"])) if value)
    meta = {"cpu": _cpu_name(),
            "cpu_avx512": "unknown" if cpu_flags is None else
            ("yes" if "avx512f" in cpu_flags else "no"),
            "isa": isa,
            "xla_isa_cap": have["xla"] or "none",
            "torch_isa_cap": torch_cap or "none"}
    if torch_capability is not None:
        meta["torch_cpu_capability"] = torch_capability
    meta["XLA_FLAGS"] = environ.get("XLA_FLAGS", "")
    return meta


def _run_capped(env: dict[str, str], isa: str, argv: list[str], log) -> list[dict]:
    """Runs ``python -m bench speed argv`` in a fresh process with ``env`` added (its output
    streams through) and returns the rows it measured."""
    root = str(Path(__file__).resolve().parents[2])  # the tree this module was loaded from
    with tempfile.TemporaryDirectory(prefix="robustax-speed-") as tmp:
        rows_path = Path(tmp) / "rows.json"
        child = {**os.environ, **env, _CHILD: str(rows_path),
                 "PYTHONPATH": os.pathsep.join(
                     p for p in (root, os.environ.get("PYTHONPATH")) if p)}
        log(f"robustax speed --isa {isa}: running in a fresh process with "
            + " ".join(f"{k}={v!r}" for k, v in env.items()))
        code = subprocess.run([sys.executable, "-m", "bench", "speed", *argv], env=child,
                              check=False).returncode
        if code != 0:
            raise RobustaxError(f"speed --isa {isa}: the capped run exited with status {code} "
                                f"(its output is above)")
        return json.loads(rows_path.read_text())


def main(batch: int = 256, steps: int = 20, repeats: int = 3, torchattacks: bool = False,
         out: str | None = None, models: tuple[str, ...] = ("cnn", "user-cnn"),
         layers: bool = False, isa: str = "native") -> list[dict]:
    """``robustax speed``: runs :func:`suite`, prints each figure as it is measured and,
    with ``out``, writes ``speed.csv`` and ``speed.md`` there. ``isa`` other than native
    caps XLA and PyTorch at that instruction set, in a fresh process (:func:`plan_isa`)."""
    log = functools.partial(print, flush=True)
    flags = _cpu_flags()
    env = plan_isa(isa, os.environ, flags, platform.machine())
    if env is not None:
        argv = ["--batch", str(batch), "--steps", str(steps), "--repeats", str(repeats),
                "--models", ",".join(models), "--isa", isa]
        argv += (["--torchattacks"] if torchattacks else []) + (["--layers"] if layers else [])
        return _run_capped(env, isa, argv + (["--out", str(out)] if out else []), log)
    meta = {"command": "robustax " + " ".join(sys.argv[1:]) if sys.argv[0].endswith(
                ("robustax", "__main__.py", "cli.py")) else "bench.pytorch.speed.main",
            "device": f"{jax.default_backend()} × {jax.device_count()}: {_cpu_name()}, "
                      f"{os.cpu_count()} cores",
            "jax": jax.__version__, "batch": batch, "steps": steps, "repeats": repeats}
    torch_capability = None
    try:
        import torch

        meta["torch"] = torch.__version__
        torch_capability = torch.backends.cpu.get_cpu_capability()
    except ImportError:
        pass
    meta.update(isa_meta(isa, os.environ, flags, torch_capability))
    log(f"robustax speed: batch {batch}, k = {steps}, min of {repeats} after warm-up, "
        f"{meta['device']}")
    log(f"  AVX-512: {meta['cpu_avx512']}; ISA cap: XLA {meta['xla_isa_cap']}, PyTorch "
        f"{meta['torch_isa_cap']}" + (f" (ATen uses {torch_capability})" if torch_capability
                                      else "") + f"; XLA_FLAGS {meta['XLA_FLAGS']!r}")
    rows = suite(batch, steps, repeats, torchattacks, models, log=log)
    if out:
        for path in write_suite(rows, out, meta):
            log(f"wrote {path}")
    if layers:
        log("where the cnn's forward + input gradient goes:")
        profile = layer_profile(batch, max(repeats, 3), torchattacks, log=log)
        if out:
            for path in write_layers(profile, out, meta):
                log(f"wrote {path}")
    if _CHILD in os.environ:  # the fresh process of a capped run: hand the rows back
        atomic_write_bytes(Path(os.environ[_CHILD]), json.dumps(rows, default=float).encode())
    return rows


if __name__ == "__main__":  # python -m bench.pytorch.speed: same as `robustax speed`

    xla.configure()
    main(torchattacks=True)
