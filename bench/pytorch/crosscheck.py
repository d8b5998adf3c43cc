"""Cross-check robustax's attacks against torchattacks on identical weights.

For every ``cnn`` × training defense of a finished run and every attack of its config that
torchattacks also implements, both libraries attack the same test images at the same ε on
the same function (a PyTorch twin whose logits are checked equal), and the robust
accuracies and per-example outcomes are compared. Results go to ``crosscheck.{csv,md}`` in
the run directory. Needs ``torch`` (CPU) and ``torchattacks`` (installed ``--no-deps``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench.errors import RobustaxError
from bench.pytorch.torch_twin import cnn_twin, to_torch
from bench.store.io import atomic_write_text
from bench.store.records import RunDir
from bench.sweep import engine as ev
from bench.sweep.config import parse_config
from bench.sweep.data import load_dataset
from bench.sweep.plan import key_for, make_plan
from bench.sweep.runner import _Weights

_NORMS = {"linf": "Linf", "l2": "L2"}


def torch_attack(name: str, attack, net, eps: float, num_classes: int, seed: int):
    """The torchattacks counterpart of robustax attack ``name`` (None if it has none)."""
    import torchattacks as ta

    norm = _NORMS.get(attack.norm)
    if norm is None:
        return None
    if name == "fgsm" and attack.norm == "linf" and not attack.targeted and attack.loss == "ce" \
            and not attack.random_start:
        return ta.FGSM(net, eps=eps)
    if name == "pgd" and attack.norm == "linf" and not attack.targeted and attack.loss == "ce":
        step = attack.step_size if attack.step_size is not None else \
            (attack.rel_step_size or 2.5 / attack.steps) * eps
        return ta.PGD(net, eps=eps, alpha=step, steps=attack.steps, random_start=attack.random_start)
    if name in ("apgd-ce", "apgd-dlr"):
        return ta.APGD(net, norm=norm, eps=eps, steps=attack.steps, n_restarts=attack.restarts,
                       loss=attack.loss, rho=attack.rho, seed=seed)
    if name == "apgd-t":
        return ta.APGDT(net, norm=norm, eps=eps, steps=attack.steps, n_restarts=attack.restarts,
                        rho=attack.rho, n_classes=num_classes, seed=seed)
    if name == "fab":
        return ta.FAB(net, norm=norm, eps=eps, steps=attack.steps, n_restarts=attack.restarts,
                      alpha_max=attack.alpha_max, eta=attack.eta, beta=attack.beta,
                      multi_targeted=attack.targeted, n_classes=num_classes, seed=seed)
    if name == "square" and not attack.targeted:
        return ta.Square(net, norm=norm, eps=eps, n_queries=attack.queries,
                         n_restarts=attack.restarts, p_init=attack.p_init, loss=attack.loss,
                         resc_schedule=attack.resc_schedule, seed=seed)
    if name == "cw" and attack.search_steps == 1 and attack.refine == 0:
        # torchattacks' C&W is one Adam run at a fixed c (no binary search, no bisection); it
        # also aborts early when the batch's total loss stops falling.
        return ta.CW(net, c=attack.initial_const, kappa=attack.confidence, steps=attack.steps,
                     lr=attack.lr)
    if name == "deepfool" and attack.norm == "l2":
        # torchattacks applies the overshoot to every step (the reference: to the total).
        return ta.DeepFool(net, steps=attack.steps, overshoot=attack.overshoot)
    if name == "autoattack" and attack.version == "standard" and attack.fab_refine == 0:
        # Not ta.AutoAttack: torchattacks 3.5.1 builds its APGD, APGD-T and FAB stages with their
        # default 10 steps instead of the reference's 100, a much weaker attack, and Square
        # with resc_schedule=True where fra31 has False. The same four stages with our
        # settings, as torchattacks' own MultiAttack (its FAB has no final bisection):
        return ta.MultiAttack([
            ta.APGD(net, norm=norm, eps=eps, steps=attack.steps, loss="ce", seed=seed),
            ta.APGDT(net, norm=norm, eps=eps, steps=attack.steps, n_classes=num_classes, seed=seed),
            ta.FAB(net, norm=norm, eps=eps, steps=attack.steps, multi_targeted=True,
                   n_classes=num_classes, seed=seed),
            ta.Square(net, norm=norm, eps=eps, n_queries=attack.queries, seed=seed,
                      resc_schedule=attack.square_resc_schedule)])
    return None


def crosscheck(run_dir: str | Path, examples: int = 100, seed: int = 0, progress=print,
               only_attacks: tuple[str, ...] = (), only_eps: tuple[float, ...] = (),
               only_defenses: tuple[str, ...] = ()) -> pd.DataFrame:
    """Runs the comparison for a finished run directory; writes and returns the table.

    ``only_*`` restrict it to some attack names, budgets and defense labels (empty: all)."""
    import torch


    run = RunDir(Path(run_dir))
    path = run.root / "config.json"
    if not path.is_file():
        raise RobustaxError(f"{run.root} has no config.json; pass the --out directory of a "
                            f"finished `robustax run`")
    cfg = parse_config(json.loads(path.read_text())["config"])
    data = load_dataset(cfg.data.name, data_dir=cfg.data.data_dir,
                        train_examples=cfg.data.train_examples)
    plan = make_plan(cfg, data.fingerprint())
    x, y = data.x_test[:examples], data.y_test[:examples]
    weights = _Weights(run, plan, data, _NoBar())
    torch.manual_seed(seed)
    rows = []
    for training in plan.trainings:
        if training.model.name != "cnn" or (only_defenses and
                                             training.defense.label not in only_defenses):
            continue
        module, logits_fn = weights.module(training.model)
        params = weights(training)
        net = cnn_twin(module, params, x[:64])
        xt, yt = to_torch(x), torch.tensor(y.astype(np.int64))
        for a in cfg.attacks:
            if only_attacks and a.name not in only_attacks:
                continue
            for eps in a.eps:
                if eps == 0 or (only_eps and eps not in only_eps):
                    continue
                atk = torch_attack(a.name, a.attack, net, eps, data.num_classes, seed)
                if atk is None:
                    continue
                progress(f"{training.model.label}/{training.defense.label} {a.label} {a.norm} ε={eps:g}")
                t0 = time.perf_counter()
                ours = ev.attack_correct(a.attack, logits_fn, params, x, y, [eps],
                                         key_for(seed, "crosscheck", a.label, a.norm),
                                         cfg.eval.batch_size)[0][0]
                t_ours = time.perf_counter() - t0
                t0 = time.perf_counter()
                adv = atk(xt, yt)
                t_torch = time.perf_counter() - t0
                with torch.no_grad():
                    theirs = (net(adv).argmax(1) == yt).numpy()
                    dist = _distance(adv - xt, a.norm)
                if a.name in ("cw", "deepfool"):  # unbounded examples: broken only within ε
                    theirs = theirs | (dist > eps * (1 + 1e-6))
                    dist = np.where(dist > eps * (1 + 1e-6), 0.0, dist)
                rows.append({
                    "model": training.model.label, "defense": training.defense.label,
                    "attack": a.label, "norm": a.norm, "eps": eps, "examples": len(x),
                    "robustax_acc": float(ours.mean()), "torchattacks_acc": float(theirs.mean()),
                    "difference_pp": 100 * float(ours.mean() - theirs.mean()),
                    "only_robustax_robust": int(np.sum(ours & ~theirs)),
                    "only_torchattacks_robust": int(np.sum(~ours & theirs)),
                    "torchattacks_max_dist": float(dist.max()),
                    "robustax_s": round(t_ours, 2), "torchattacks_s": round(t_torch, 2)})
    frame = pd.DataFrame(rows)
    if frame.empty:
        raise RobustaxError(f"{run.root} has no cnn model or no attack torchattacks implements; "
                            f"crosscheck compares the cnn under pgd, apgd-*, fab, square, autoattack")
    atomic_write_text(run.root / "crosscheck.csv", frame.to_csv(index=False))
    atomic_write_text(run.root / "crosscheck.md",
                      frame.to_markdown(index=False, floatfmt=".3f") + "\n")
    return frame


def _distance(d, norm: str) -> np.ndarray:
    d = d.detach().numpy().reshape(len(d), -1)
    return np.abs(d).max(1) if norm == "linf" else np.sqrt((d * d).sum(1))


class _NoBar:
    def set_postfix_str(self, *args, **kwargs):
        pass

    def update(self, *args):
        pass


def main(run_dir: str, examples: int, seed: int, attacks=(), eps=(), defenses=()) -> None:
    try:
        import torch  # noqa: F401
        import torchattacks  # noqa: F401
    except ImportError as e:
        raise RobustaxError(f"crosscheck needs {e.name}: pip install torch==2.13.0 and "
                            f"pip install --no-deps torchattacks") from None
    frame = crosscheck(run_dir, examples, seed, only_attacks=tuple(attacks or ()),
                       only_eps=tuple(eps or ()), only_defenses=tuple(defenses or ()))
    print(frame.to_markdown(index=False, floatfmt=".3f"))
