"""robustax's AutoAttack against the reference algorithm, example by example.

The reference is fra31/auto-attack's ``version='standard'`` (``autoattack/autoattack.py``):
APGD-CE (100 iterations, 1 restart), APGD-T (9 targets, 100 iterations), FAB-T (9 targets,
100 iterations, no final bisection) and Square (5,000 queries, ``resc_schedule=False``), each
on the points every earlier stage left robust. It runs here as torchattacks 3.5.1's ports of
those four attacks with exactly those settings, on a PyTorch twin of the model (logits checked
equal). torchattacks' own ``AutoAttack`` class differs from fra31 in two settings (it builds
APGD, APGD-T and FAB with their default 10 iterations, and Square with its default
``resc_schedule=True``); variant ``ta-autoattack`` runs that class as it is, for reference.

The model is not one of ours: ``bench.pytorch.usercnn.UserCNN`` (plain ``flax.linen``), trained
here briefly on mnist5k (Adam, PGD adversarial training so that some points stay robust at the
budgets compared), its weights kept in ``--out``.

Per ε, ``eps<ε>.json`` holds the robust accuracy of the reference and of every robustax
variant, the difference in points, the discordant pairs (b: robust only under robustax, c:
robust only under the reference) with the exact McNemar p, and how many points each stage
broke on each side; ``examples_eps<ε>.csv`` the stage that broke each example (0 robust,
-1 misclassified clean). ``summary.{md,csv}`` gathers every ``eps*.json`` in ``--out``, so
budgets can run as separate processes.

    python -m bench.pytorch.aa_reference --out results/autoattack/reference --examples 500 \
        --eps 0.1 --variants standard fab-refine
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

import attacks
from bench.pytorch.torch_twin import to_torch, user_cnn_twin
from bench.pytorch.usercnn import UserCNN
from bench.store.io import atomic_write_bytes, atomic_write_text
from bench.sweep import engine
from bench.sweep.data import load_dataset
from models import make_logits_fn

STAGES = ("apgd-ce", "apgd-t", "fab-t", "square")
VARIANTS = {
    # robustax AutoAttack options per variant name
    "standard": {},
    "fab-refine": {"fab_refine": 12},
    # the settings before numerics 3: FAB with 12 bisection steps, Square's schedule rescaled
    # to its budget and 4,999 iterations
    "before": {"fab_refine": 12, "square_resc_schedule": True, "queries": 4999},
}
TRAIN = {"features": (16, 32), "dense": 64, "epochs": 4, "batch": 100, "lr": 1e-3,
         "adv_eps": 0.15, "adv_steps": 5}


def train_user_cnn(data, seed: int, out: Path):
    """A ``UserCNN`` trained on ``data`` (PGD-AT, :data:`TRAIN`), cached as ``out/usercnn.msgpack``."""
    import flax.serialization
    import jax
    import jax.numpy as jnp
    import optax


    module = UserCNN(features=TRAIN["features"], dense=TRAIN["dense"])
    params = module.init(jax.random.key(seed), data.x_train[:1])
    path = out / f"usercnn.seed{seed}.msgpack"
    if path.is_file():
        return module, flax.serialization.from_bytes(params, path.read_bytes()), path
    f = make_logits_fn(module)
    opt = optax.adam(TRAIN["lr"])
    state = opt.init(params)
    pgd = attacks.PGD(steps=TRAIN["adv_steps"])

    @jax.jit
    def step(params, state, x, y, key):
        x_adv = pgd(f, params, x, y, TRAIN["adv_eps"], key)

        def loss(p):
            return optax.softmax_cross_entropy_with_integer_labels(f(p, x_adv), y).mean()

        g = jax.grad(loss)(params)
        updates, state = opt.update(g, state, params)
        return optax.apply_updates(params, updates), state

    rng = np.random.default_rng(seed)
    n, b = len(data.x_train), TRAIN["batch"]
    for epoch in range(TRAIN["epochs"]):
        order = rng.permutation(n)
        for i in range(n // b):
            idx = order[i * b:(i + 1) * b]
            params, state = step(params, state, jnp.asarray(data.x_train[idx]),
                                 jnp.asarray(data.y_train[idx]),
                                 jax.random.key(seed * 100_000 + epoch * 1000 + i))
        print(f"epoch {epoch + 1}/{TRAIN['epochs']}", flush=True)
    atomic_write_bytes(path, flax.serialization.to_bytes(params))
    return module, params, path


def mcnemar_p(b: int, c: int) -> float:
    """Exact two-sided McNemar p of ``b`` against ``c`` discordant pairs."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def reference_stages(net, norm: str, eps: float, seed: int, num_classes: int,
                     steps: int = 100, queries: int = 5000):
    """fra31's standard AutoAttack as torchattacks attacks: (name, attack) in cascade order
    (``steps`` and ``queries`` smaller only for smoke tests)."""
    import torchattacks as ta

    n = {"linf": "Linf", "l2": "L2"}[norm]
    return (("apgd-ce", ta.APGD(net, norm=n, eps=eps, steps=steps, n_restarts=1, loss="ce",
                                rho=0.75, seed=seed)),
            ("apgd-t", ta.APGDT(net, norm=n, eps=eps, steps=steps, n_restarts=1, rho=0.75,
                                n_classes=num_classes, seed=seed)),
            ("fab-t", ta.FAB(net, norm=n, eps=eps, steps=steps, n_restarts=1,
                             multi_targeted=True, n_classes=num_classes, seed=seed)),
            ("square", ta.Square(net, norm=n, eps=eps, n_queries=queries, n_restarts=1,
                                 p_init=0.8, loss="margin", resc_schedule=False, seed=seed)))


def torch_cascade(stages, net, x, y, batch: int = 250) -> np.ndarray:
    """Stage per example (0 robust, -1 misclassified clean, s ≥ 1 broken by stage s), each
    stage on the points still robust, in batches of ``batch`` as fra31's
    ``run_standard_evaluation``."""
    import torch


    xt, yt = to_torch(x), torch.tensor(y.astype(np.int64))
    with torch.no_grad():
        clean = (net(xt).argmax(1) == yt).numpy()
    stage = np.where(clean, 0, -1).astype(np.int32)
    for s, (_, attack) in enumerate(stages, start=1):
        idx = np.flatnonzero(stage == 0)
        for start in range(0, len(idx), batch):
            part = idx[start:start + batch]
            adv = attack(xt[part], yt[part])
            with torch.no_grad():
                wrong = (net(adv).argmax(1) != yt[part]).numpy()
            stage[part[wrong]] = s
    return stage


def robustax_cascade(options: dict, logits_fn, params, x, y, eps: float, seed: int) -> np.ndarray:
    import jax


    aa = attacks.AutoAttack(norm="linf", **options)
    _, _, _, info = engine.attack_correct(aa, logits_fn, params, x, y, [eps],
                                          jax.random.key(seed), batch_size=500, with_info=True)
    return np.asarray(info["stage"][0])


def compare(out: Path, examples: int, eps_list, variants, seed: int, ta_autoattack: bool) -> None:
    import torch


    out.mkdir(parents=True, exist_ok=True)
    data = load_dataset("mnist5k")
    module, params, wpath = train_user_cnn(data, seed, out)
    f = make_logits_fn(module)
    x, y = data.x_test[:examples], data.y_test[:examples]
    net = user_cnn_twin(params, x[:64])
    torch.manual_seed(seed)
    for eps in eps_list:
        row = {"model": "UserCNN" + json.dumps(TRAIN), "weights": wpath.name,
               "weights_sha256": hashlib.sha256(wpath.read_bytes()).hexdigest()[:12],
               "twin_max_logit_diff": net.check_diff, "data": "mnist5k test",
               "examples": len(x), "eps": eps, "seed": seed, "command": " ".join(sys.argv)}
        t0 = time.perf_counter()
        ref = torch_cascade(reference_stages(net, "linf", eps, seed, data.num_classes), net, x, y)
        row["reference_s"] = round(time.perf_counter() - t0, 1)
        cols = {"index": np.arange(len(x)), "label": y, "reference": ref}
        row["clean_acc"] = float(np.mean(ref != -1))
        row["reference_acc"] = float(np.mean(ref == 0))
        row["reference_broken_by"] = {s: int(np.sum(ref == i)) for i, s in enumerate(STAGES, 1)}
        if ta_autoattack:
            import torchattacks as ta

            t0 = time.perf_counter()
            atk = ta.AutoAttack(net, norm="Linf", eps=eps, version="standard",
                                n_classes=data.num_classes, seed=seed)
            adv = atk(to_torch(x), torch.tensor(y.astype(np.int64)))
            with torch.no_grad():
                ok = (net(adv).argmax(1).numpy() == y)
            row["ta_autoattack_acc"] = float(ok.mean())
            row["ta_autoattack_s"] = round(time.perf_counter() - t0, 1)
        for v in variants:
            t0 = time.perf_counter()
            st = robustax_cascade(VARIANTS[v], f, params, x, y, eps, seed)
            cols[v] = st
            ours, theirs = st == 0, ref == 0
            b, c = int(np.sum(ours & ~theirs)), int(np.sum(~ours & theirs))
            row[v] = {"options": VARIANTS[v], "acc": float(ours.mean()),
                      "difference_pp": round(100 * float(ours.mean() - theirs.mean()), 2),
                      "only_robustax_robust": b, "only_reference_robust": c,
                      "mcnemar_p": round(mcnemar_p(b, c), 4),
                      "broken_by": {s: int(np.sum(st == i)) for i, s in enumerate(STAGES, 1)},
                      "seconds": round(time.perf_counter() - t0, 1)}
            print(f"ε={eps:g} {v}: robustax {ours.mean():.3f} reference {theirs.mean():.3f} "
                  f"b={b} c={c}", flush=True)
        tag = f"eps{eps:g}" + (f".seed{seed}" if seed else "")
        atomic_write_text(out / f"{tag}.json", json.dumps(row, indent=1) + "\n")
        import pandas as pd

        atomic_write_text(out / f"examples_{tag}.csv", pd.DataFrame(cols).to_csv(index=False))
        summarize(out)


def summarize(out: Path) -> None:
    """``summary.{csv,md}``: one row per budget, seed and variant from every ``eps*.json``."""
    import pandas as pd

    rows = []
    for p in sorted(out.glob("eps*.json")):
        r = json.loads(p.read_text())
        for v in VARIANTS:
            if v not in r:
                continue
            rows.append({"eps": r["eps"], "seed": r["seed"], "examples": r["examples"],
                         "variant": v, "clean_acc": r["clean_acc"],
                         "reference_acc": r["reference_acc"], "robustax_acc": r[v]["acc"],
                         "difference_pp": r[v]["difference_pp"],
                         "only_robustax_robust": r[v]["only_robustax_robust"],
                         "only_reference_robust": r[v]["only_reference_robust"],
                         "mcnemar_p": r[v]["mcnemar_p"],
                         "reference_broken_by": "/".join(str(n) for n in
                                                         r["reference_broken_by"].values()),
                         "robustax_broken_by": "/".join(str(n) for n in
                                                        r[v]["broken_by"].values()),
                         "ta_autoattack_acc": r.get("ta_autoattack_acc")})
    frame = pd.DataFrame(rows)
    atomic_write_text(out / "summary.csv", frame.to_csv(index=False))
    atomic_write_text(out / "summary.md",
        "broken_by: points broken by APGD-CE/APGD-T/FAB-T/Square.\n\n"
        + frame.to_markdown(index=False, floatfmt=".4g") + "\n")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.pytorch.aa_reference",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--examples", type=int, default=500)
    ap.add_argument("--eps", type=float, nargs="+", default=[0.05, 0.1, 0.15])
    ap.add_argument("--variants", nargs="+", default=["standard"], choices=sorted(VARIANTS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ta-autoattack", action="store_true",
                    help="also run torchattacks.AutoAttack as it is (10-iteration stages)")
    ap.add_argument("--train-only", action="store_true")
    a = ap.parse_args(argv)
    if a.train_only:
        a.out.mkdir(parents=True, exist_ok=True)
        train_user_cnn(load_dataset("mnist5k"), a.seed, a.out)
        return
    compare(a.out, a.examples, a.eps, a.variants, a.seed, a.ta_autoattack)


if __name__ == "__main__":
    main()
