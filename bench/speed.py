"""Speed benchmark: PGD-k time over k × (forward + input gradient), measured in one run.

Ratios, not seconds, are what carry across machines: a ratio near 1 means the attack loop
adds nothing to the model's own cost. Each timing is the minimum over ``repeats`` runs
after a warm-up (compilation excluded), with ``block_until_ready``. With
``torchattacks=True`` the same weights are copied into an equivalent PyTorch model and
torchattacks' PGD is timed on the same inputs.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np


def _best_time(fn: Callable[[], object], repeats: int) -> float:
    jax.block_until_ready(fn())  # warm-up and compile
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t0)
    return best


def measure(batch: int = 256, steps: int = 20, repeats: int = 5, seed: int = 0) -> dict:
    """Times the ``cnn`` (28×28×1, 10 classes) forward+input-gradient and PGD-``steps`` L∞."""
    from attacks import APGD, PGD, Square
    from bench import engine as ev
    from models import CNN, init_variables, make_logits_fn

    module = CNN(num_classes=10, mean=(0.13,), std=(0.31,))
    params = init_variables(module, jax.random.key(seed), (28, 28, 1))
    logits_fn = make_logits_fn(module)
    kx, ky, ka = jax.random.split(jax.random.key(seed + 1), 3)
    x = jax.random.uniform(kx, (batch, 28, 28, 1))
    y = jax.random.randint(ky, (batch,), 0, 10)
    eps = jnp.float32(0.3)

    @jax.jit
    def fwd_bwd(params, x, y):
        def loss(z):
            logits = logits_fn(params, z)
            return -jnp.sum(jax.nn.log_softmax(logits)[jnp.arange(batch), y]), logits
        return jax.grad(loss, has_aux=True)(x)

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

    from bench.torch_twin import cnn_twin, to_torch

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


def main(batch: int = 256, steps: int = 20, repeats: int = 5, torchattacks: bool = False) -> dict:
    """Prints the timings and ratios; returns them."""
    r = measure(batch, steps, repeats)
    module, params, x, y = r.pop("_model")
    print(f"cnn 28x28x1, batch {batch}, L∞ PGD-{steps}, {r['backend']} ×{r['devices']}, "
          f"min of {repeats} after warm-up")
    print(f"  forward + input gradient         {r['fwd_bwd_s'] * 1e3:8.1f} ms")
    print(f"  PGD-{steps} kernel (unrolled loop)   {r['pgd_s']:8.3f} s   ratio to {steps}×(fwd+grad): {r['ratio']:.2f}")
    print(f"  PGD-{steps} kernel (rolled loop)     {r['pgd_rolled_s']:8.3f} s   ratio: {r['ratio_rolled']:.2f}")
    print(f"  PGD-{steps} as run by a sweep        {r['sweep_pgd_s']:8.3f} s   ratio: {r['ratio_sweep']:.2f}")
    print(f"  APGD-CE-{steps} kernel               {r['apgd_s']:8.3f} s   ratio: {r['ratio_apgd']:.2f}")
    print(f"  forward only                     {r['fwd_s'] * 1e3:8.1f} ms")
    print(f"  Square, {steps} queries (ε = 0)      {r['square_s']:8.3f} s   ratio to {steps}×fwd: "
          f"{r['ratio_square']:.2f}")
    if torchattacks:
        try:
            t = torchattacks_time(module, params, x, y, steps, repeats)
        except ImportError as e:
            print(f"  torchattacks: not installed ({e.name}); pip install torch==2.13.0 and "
                  f"pip install --no-deps torchattacks")
        else:
            r["torchattacks_s"] = t
            print(f"  torchattacks PGD-{steps} (same weights) {t:8.3f} s   robustax speed-up: "
                  f"{t / r['pgd_s']:.2f}×")
    return r


if __name__ == "__main__":  # python -m bench.speed: same as `robustax speed`
    from bench import xla

    xla.configure()
    main()
