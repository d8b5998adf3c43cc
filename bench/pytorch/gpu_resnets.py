"""The ResNet sections of ``python -m bench.pytorch.gpu_bench``: PreAct-ResNet-18 and WRN-28-10
against torchattacks on PyTorch twins with identical weights, and AutoAttack's cascade."""

from __future__ import annotations

import time

from attacks import APGD, APGDT, PGD, AutoAttack
from bench.pytorch.aa_reference import reference_stages
from bench.pytorch.gpu_record import EPS_CIFAR, Bench, precision
from bench.pytorch.speed import _best_time, input_gradient, torch_best_time
from bench.pytorch.torch_twin import preact_twin, to_torch
from bench.sweep import engine as ev
from models import PreActResNet18, WideResNet, init_variables, make_logits_fn


def _randomized(variables, key):
    """Random weights as initialised, plus random BatchNorm scales, shifts and running
    statistics, so that the twin check exercises every BatchNorm parameter."""
    import flax
    import jax
    import jax.numpy as jnp

    flat = flax.traverse_util.flatten_dict(variables)
    out = {}
    for i, (path, a) in enumerate(sorted(flat.items())):
        k = jax.random.fold_in(key, i)
        name = path[-1]
        if name == "mean" or (name == "bias" and "BatchNorm" in path[-2]):
            a = 0.1 * jax.random.normal(k, a.shape)
        elif name in ("var", "scale"):
            a = jax.random.uniform(k, a.shape, minval=0.5, maxval=1.5)
        out[path] = jnp.asarray(a, jnp.float32)
    return flax.traverse_util.unflatten_dict(out)


class ResNetBench:
    """One model on one batch of 32×32×3 inputs, in both frameworks."""

    def __init__(self, b: Bench, section: str, label: str, module, batch: int, repeats: int,
                 torch_device: str, seed: int = 0):
        import jax
        import numpy as np
        import torch


        self.b, self.section, self.label, self.batch = b, section, label, batch
        self.repeats, self.dev = repeats, torch_device
        key = jax.random.key(seed)
        self.variables = _randomized(init_variables(module, key, (32, 32, 3)),
                                     jax.random.fold_in(key, 1))
        self.logits_fn = make_logits_fn(module)
        self.x = np.asarray(jax.random.uniform(jax.random.fold_in(key, 2), (batch, 32, 32, 3)))
        t0 = time.perf_counter()
        net = preact_twin(module, self.variables, self.x[: min(batch, 16)])
        b.add(section, "twin logits check (CPU torch, f32)", "torch", "highest", label,
              min(batch, 16), note=f"max |Δ logit| {net.check_diff:.2e} "
                                   f"({time.perf_counter() - t0:.1f} s)")
        self.net = net.to(torch_device)
        self.xt = to_torch(self.x).to(torch_device)
        with torch.no_grad():
            torch_logits = self.net(self.xt)
        # Labels: the twin's own predictions at default settings, so every point starts
        # correctly classified and torchattacks attacks all of them.
        self.yt = torch_logits.argmax(1)
        self.y = self.yt.cpu().numpy().astype(np.int32)
        self.fb = {}
        self.logits = {}

    def check_on_device(self, prec: str) -> None:
        import jax
        import numpy as np
        import torch

        with precision(prec):
            ours = np.asarray(jax.jit(self.logits_fn)(self.variables, self.x))
            with torch.no_grad():
                theirs = self.net(self.xt).cpu().numpy()
        self.logits[prec] = ours, theirs
        diff = float(np.abs(ours - theirs).max())
        scale = float(np.abs(ours).max())
        agree = float((ours.argmax(1) == theirs.argmax(1)).mean())
        self.b.add(self.section, "logits JAX vs torch on device", "both", prec, self.label,
                   self.batch, note=f"max |Δ| {diff:.2e}, max |logit| {scale:.3g}, "
                                    f"argmax agree {agree:.4f}")

    def tf32_probe(self) -> None:
        """Each framework's default against its own full float32: nonzero means TF32."""
        import numpy as np

        (jd, td), (jh, th) = self.logits["default"], self.logits["highest"]
        rel = [float(np.linalg.norm(a - h) / np.linalg.norm(h)) for a, h in ((jd, jh), (td, th))]
        self.b.add(self.section, "logits default vs highest", "both", "both", self.label,
                   self.batch, note=f"‖Δ‖/‖logits‖: JAX {rel[0]:.2e}, torch {rel[1]:.2e} "
                                    f"(0 = no TF32 in use; TF32 gives ~1e-4..1e-3)")

    def _compile(self, fn, *args):
        import jax

        t0 = time.perf_counter()
        compiled = jax.jit(fn).lower(*args).compile()
        return compiled, time.perf_counter() - t0

    def _time_jax(self, compiled, args, repeats):
        return _best_time(lambda: compiled(*args), repeats)

    def fwd_grad(self, prec: str, batch: int | None = None, ours: bool = True):
        """(robustax, torch) seconds of forward + input gradient of the summed CE; with
        ``ours=False`` PyTorch only (robustax None)."""
        import jax.numpy as jnp
        import torch
        import torch.nn.functional as F


        n = batch or self.batch
        x, y = jnp.asarray(self.x[:n]), jnp.asarray(self.y[:n])

        with precision(prec):
            if ours:
                compiled, c = self._compile(input_gradient(self.logits_fn), self.variables, x, y)
                ours = self._time_jax(compiled, (self.variables, x, y), self.repeats)
            else:
                ours = c = None
            xt, yt = self.xt[:n], self.yt[:n]

            def torch_fb():
                z = xt.clone().requires_grad_(True)
                return torch.autograd.grad(F.cross_entropy(self.net(z), yt, reduction="sum"), z)

            theirs = torch_best_time(torch_fb, self.repeats, self.dev)
        self.fb[(prec, n, "robustax")], self.fb[(prec, n, "torch")] = ours, theirs
        if ours is not None:
            self.b.add(self.section, "forward + input gradient", "robustax", prec, self.label,
                       n, 1, ours, compile_s=c)
        self.b.add(self.section, "forward + input gradient", "torch", prec, self.label, n, 1,
                   theirs, note="eager, eval mode")
        return ours, theirs

    def attack(self, prec: str, name: str, ours_attack, ta_factory, work: int, eps: float,
               batch: int | None = None, repeats: int | None = None, note: str = "",
               ours: bool = True) -> None:
        """Times ``ours_attack`` as a jitted kernel and torchattacks' ``ta_factory(net)`` on
        the same inputs and labels; ratios against this object's forward + gradient times."""
        import jax
        import jax.numpy as jnp


        n = batch or self.batch
        reps = repeats or self.repeats
        x, y = jnp.asarray(self.x[:n]), jnp.asarray(self.y[:n])
        key = jax.random.key(3)
        lf = self.logits_fn
        with precision(prec):
            if (prec, n, "torch") not in self.fb:
                self.fwd_grad(prec, n, ours=ours)
            if ours:
                compiled, c = self._compile(
                    lambda v, x, y, k: ours_attack(lf, v, x, y, jnp.float32(eps), k),
                    self.variables, x, y, key)
                ours = self._time_jax(compiled, (self.variables, x, y, key), reps)
            else:
                ours = c = None
            theirs = None
            if ta_factory is not None:
                atk = ta_factory(self.net)
                xt, yt = self.xt[:n], self.yt[:n]
                theirs = torch_best_time(lambda: atk(xt, yt), reps, self.dev)
        fb_ours, fb_theirs = self.fb[(prec, n, "robustax")], self.fb[(prec, n, "torch")]
        note = note or ("" if ours is not None else "PyTorch only")
        if ours is not None:
            self.b.add(self.section, name, "robustax", prec, self.label, n, work, ours,
                       ratio=ours / (work * fb_ours),
                       speedup=theirs / ours if theirs else None, compile_s=c, note=note)
        if theirs is not None:
            self.b.add(self.section, name, "torchattacks", prec, self.label, n, work, theirs,
                       ratio=theirs / (work * fb_theirs), note=note)

    def sweep_pgd(self, steps: int, batch: int | None = None) -> None:
        """PGD-``steps`` through ``bench.sweep.engine.attack_correct`` (the sweep's evaluator)."""
        import jax


        n = batch or self.batch
        attack = PGD(norm="linf", steps=steps)
        args = (attack, self.logits_fn, self.variables, self.x[:n], self.y[:n], [EPS_CIFAR],
                jax.random.key(4), n)
        _, _, compile_s = ev.attack_correct(*args)
        best = min(ev.attack_correct(*args)[1] for _ in range(self.repeats))
        fb = self.fb[("default", n, "robustax")]
        self.b.add(self.section, f"PGD-{steps} L∞ sweep evaluator", "robustax", "default",
                   self.label, n, steps, best, ratio=best / (steps * fb), compile_s=compile_s,
                   note="engine.attack_correct: per-example keys, vmap, checks, host transfer")

    def autoattack(self, n: int, steps: int, queries: int, eps: float) -> None:
        """AutoAttack standard through the sweep's cascade. At ε = 0 no point is ever fooled,
        so every stage runs on every point: the full cost per image, i.e. AutoAttack on a
        perfectly robust model (APGD-CE 100 + APGD-T 900 + FAB-T 900 gradients, Square 5,000
        queries)."""
        import jax
        import numpy as np


        aa = AutoAttack(norm="linf", steps=steps, queries=queries)
        t0 = time.perf_counter()
        masks, seconds, compile_s, info = ev.attack_correct(
            aa, self.logits_fn, self.variables, self.x[:n], self.y[:n], [eps],
            jax.random.key(5), n, with_info=True)
        wall = time.perf_counter() - t0
        stage = np.asarray(info["stage"][0])
        counts = {s: int((stage == s).sum()) for s in sorted(set(stage.tolist()))}
        if eps == 0:
            what, note = "AutoAttack standard L∞ ε=0 (cascade)", (
                "every stage on every point: the full per-image cost (a perfectly robust "
                "model)")
        else:
            what, note = f"AutoAttack standard L∞ {eps * 255:.0f}/255 (cascade)", (
                "random weights: almost every point falls to APGD-CE, so this is not "
                "AutoAttack's cost on a robust model")
        self.b.add(self.section, what, "robustax", "default", self.label, n, None, seconds,
                   compile_s=compile_s,
                   note=f"first call, wall {wall:.1f} s incl. compile; per-example stage "
                        f"{counts} (0 robust, s broken by stage s); {note}")


def resnet_sections(b: Bench, cfg: dict, torch_device: str, sections: set[str]) -> None:
    import torchattacks


    mean, std = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
    steps = cfg["pgd_steps"]

    def ta_pgd(net, eps=EPS_CIFAR):
        return torchattacks.PGD(net, eps=eps, alpha=2.5 * eps / steps, steps=steps,
                                random_start=True)

    r = None
    if sections & {"preact", "highest", "aa"}:
        preact = PreActResNet18(num_classes=10, mean=mean, std=std, width=cfg["preact_width"])
        label = "PreAct-ResNet-18" + ("" if cfg["preact_width"] == 64 else
                                      f" (width {cfg['preact_width']})")
        r = ResNetBench(b, "preact18", label, preact, cfg["batch"], cfg["repeats"],
                        torch_device)
        r.check_on_device("default")
        r.check_on_device("highest")
        r.tf32_probe()
    if "preact" in sections:
        r.fwd_grad("default")
        r.attack("default", f"PGD-{steps} L∞ 8/255 kernel", PGD(norm="linf", steps=steps),
                 ta_pgd, steps, EPS_CIFAR)
        try:
            r.sweep_pgd(steps)
        except Exception:
            b.error("preact18 sweep evaluator")
        a_steps, nt = cfg["apgd_steps"], 9
        r.attack("default", f"APGD-CE-{a_steps} L∞ (ε=0)", APGD(norm="linf", steps=a_steps),
                 lambda net: torchattacks.APGD(net, norm="Linf", eps=0.0, steps=a_steps,
                                               n_restarts=1, loss="ce"),
                 a_steps, 0.0, repeats=cfg["apgd_repeats"],
                 note="ε=0 so that no point is fooled and torchattacks also does all the work")
        r.attack("default", f"APGD-T {nt}×{a_steps} L∞ (ε=0)",
                 APGDT(norm="linf", steps=a_steps, n_target_classes=nt),
                 lambda net: torchattacks.APGDT(net, norm="Linf", eps=0.0, steps=a_steps,
                                                n_restarts=1, n_classes=10),
                 nt * a_steps, 0.0, batch=cfg["apgdt_batch"], repeats=cfg["apgd_repeats"],
                 note="ε=0: every target runs on every point in both; robustax vmaps the "
                      "targets, torchattacks loops over them")
        if torch_device == "cuda":
            try:  # is PyTorch's baseline held back by cuDNN's default algorithm choice?
                r.attack("cudnn.benchmark", f"PGD-{steps} L∞ 8/255 kernel", None, ta_pgd,
                         steps, EPS_CIFAR, ours=False)
            except Exception:
                b.error("preact18 cudnn.benchmark")
    if "highest" in sections:
        if b.left() > cfg["need_highest_s"]:
            r.fwd_grad("highest")
            r.attack("highest", f"PGD-{steps} L∞ 8/255 kernel", PGD(norm="linf", steps=steps),
                     ta_pgd, steps, EPS_CIFAR)
        else:
            b.skip("PreAct-ResNet-18 in full float32", f"{b.left():.0f} s of budget left")

    if "wrn" in sections:
        if b.left() > cfg["need_wrn_s"]:
            try:
                wrn = WideResNet(num_classes=10, mean=mean, std=std, depth=cfg["wrn_depth"],
                                 widen=cfg["wrn_widen"])
                w = ResNetBench(b, "wrn", f"WRN-{cfg['wrn_depth']}-{cfg['wrn_widen']}", wrn,
                                cfg["wrn_batch"], cfg["repeats"], torch_device)
                w.fwd_grad("default")
                w.attack("default", f"PGD-{steps} L∞ 8/255 kernel",
                         PGD(norm="linf", steps=steps), ta_pgd, steps, EPS_CIFAR)
                del w
            except Exception:
                b.error("wrn")
        else:
            b.skip("WRN-28-10", f"{b.left():.0f} s of budget left")

    if "aa" in sections:
        for eps in (EPS_CIFAR, 0.0):
            if b.left() > cfg["need_aa_s"]:
                try:
                    r.autoattack(cfg["aa_n"], cfg["aa_steps"], cfg["aa_queries"], eps)
                except Exception:
                    b.error(f"autoattack ε={eps:.4f}")
            else:
                b.skip(f"AutoAttack ε={eps:.4f}", f"{b.left():.0f} s of budget left")


def _torch_cascade_s(stages, net, xt, yt, device: str) -> tuple[float, dict]:
    """Seconds of an AutoAttack cascade of torchattacks stages on device tensors (each stage
    on the points every earlier stage left robust, as fra31's ``run_standard_evaluation``),
    and the per-example stage counts (0 robust, s broken by stage s)."""
    import numpy as np
    import torch

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    sync()
    t0 = time.perf_counter()
    with torch.no_grad():
        robust = (net(xt).argmax(1) == yt).cpu().numpy()
    stage = np.where(robust, 0, -1)
    for s, (_, attack) in enumerate(stages, start=1):
        idx = np.flatnonzero(stage == 0)
        if len(idx) == 0:
            break
        part = torch.as_tensor(idx, device=xt.device)
        adv = attack(xt[part], yt[part])
        with torch.no_grad():
            wrong = (net(adv).argmax(1) != yt[part]).cpu().numpy()
        stage[idx[wrong]] = s
    sync()
    seconds = time.perf_counter() - t0
    return seconds, {int(v): int((stage == v).sum()) for v in sorted(set(stage.tolist()))}


def wrn_autoattack(b: Bench, cfg: dict, torch_device: str) -> None:
    """Issue 22, item 4: AutoAttack standard L∞ on WRN-28-10 (CIFAR-10 shapes, random weights,
    labels = the twin's predictions) at 8/255 and at ε = 0 (no point is ever fooled: every
    stage on every point, the full per-image cost), robustax's cascade through the sweep
    engine against torchattacks on the same weights and points: its ``AutoAttack`` class as
    shipped (torchattacks 3.5.1: APGD/APGD-T/FAB at their 10-step defaults, Square 5,000
    queries) and fra31's settings as torchattacks attacks (100 steps, 9 targets; the same work
    as ours). Then the projected time for 10,000 images of a model 50% robust at 8/255."""
    import jax
    import torch
    import torchattacks

    mean, std = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
    n, steps, queries = cfg["aa_wrn_n"], cfg["aa_steps"], cfg["aa_queries"]
    label = f"WRN-{cfg['wrn_depth']}-{cfg['wrn_widen']}"
    wrn = WideResNet(num_classes=10, mean=mean, std=std, depth=cfg["wrn_depth"],
                     widen=cfg["wrn_widen"])
    w = ResNetBench(b, "aa-wrn", label, wrn, n, 1, torch_device)
    per_image = {}
    for eps in (EPS_CIFAR, 0.0):
        tag = "ε=0" if eps == 0 else f"{eps * 255:.0f}/255"
        aa = AutoAttack(norm="linf", steps=steps, queries=queries)
        # seconds: the cascade's run time, its stages' compilation apart (compile_s)
        _, ours, compile_s, info = ev.attack_correct(aa, w.logits_fn, w.variables, w.x, w.y,
                                                     [eps], jax.random.key(5), n,
                                                     with_info=True)
        stage = info["stage"][0]
        ours_counts = {int(v): int((stage == v).sum()) for v in sorted(set(stage.tolist()))}
        per_image[eps] = ours / n
        shipped = torchattacks.AutoAttack(w.net, norm="Linf", eps=eps, version="standard",
                                          n_classes=10, seed=0)
        if queries != 5000:  # smoke runs only: the class fixes Square's queries at 5,000
            shipped._autoattack.attacks[-1].n_queries = queries
        shipped(w.xt[:2], w.yt[:2])  # warm-up on two images (cuDNN plans, allocator)
        theirs = _torch_cascade_s((("autoattack", shipped),), w.net, w.xt, w.yt,
                                  torch_device)[0]
        ref_s, ref_counts = _torch_cascade_s(
            reference_stages(w.net, "linf", eps, 0, 10, steps, queries), w.net, w.xt, w.yt,
            torch_device)
        b.add("aa-wrn", f"AutoAttack standard L∞ {tag}, cascade", "robustax", "default",
              label, n, None, ours, speedup=theirs / ours, compile_s=compile_s,
              note=f"sweep engine (engine.attack_correct), run time of its stages, their "
                   f"compilation apart; stages {ours_counts} (0 robust, s broken by stage s); speed-up "
                   f"over torchattacks' AutoAttack as shipped {theirs / ours:.2f}, over "
                   f"fra31's settings in torchattacks {ref_s / ours:.2f}")
        b.add("aa-wrn", f"AutoAttack standard L∞ {tag}, as shipped", "torchattacks",
              "default", label, n, None, theirs,
              note="torchattacks.AutoAttack(version='standard') on all points at once (plus "
                   "a clean forward), after a warm-up on two images: its APGD, APGD-T and FAB "
                   "run 10 steps (fra31: 100), so it does less work than the reference")
        b.add("aa-wrn", f"AutoAttack standard L∞ {tag}, fra31 settings", "torchattacks",
              "default", label, n, None, ref_s,
              note=f"bench.pytorch.aa_reference.reference_stages, a cascade on the points "
                   f"still robust; stages {ref_counts}")
    robust = 0.5  # the projection's model: half the points survive every stage at 8/255
    t10k = 10_000 * (robust * per_image[0.0] + (1 - robust) * per_image[EPS_CIFAR])
    b.add("aa-wrn", "projected: 10,000 images, a 50%-robust model at 8/255", "robustax",
          "default", label, 10_000, None, t10k,
          note=f"10,000 × (0.5 × per-image cost at ε=0 ({per_image[0.0]:.4f} s: every stage "
               f"runs, as on a robust point) + 0.5 × per-image cost at 8/255 on random weights "
               f"({per_image[EPS_CIFAR]:.4f} s: almost every point falls to APGD-CE, as a "
               f"broken point does)); batch {n}, compile excluded; a point that falls at a "
               f"later stage costs between the two")

