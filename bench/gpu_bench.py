"""Issue 12's accelerator figures, measured in one process: ``python -m bench.gpu_bench --out DIR``.

Sections, in order (``--sections`` picks some; each one's failure is recorded and the next
still runs; the optional ones are skipped when ``--budget-s`` is nearly spent):

1. ``sweep``: the default sweep, ``robustax run bench/configs/default.toml``, in a subprocess
   started before this process touches the GPU: end-to-end wall clock, the attack and compile
   seconds its records hold, and its robust accuracies against the committed CPU run; then the
   device (``jax.devices()``, ``torch.cuda.get_device_name()``) is recorded;
2. ``cnn``: ``bench.speed.measure`` on the ``cnn`` (28×28×1) and torchattacks PGD-20 on the
   same weights on the same device;
3. ``preact``: PreAct-ResNet-18 on 32×32×3 (random weights, random BatchNorm statistics;
   labels are the twin's own predictions so every point starts correct): the logits of both
   frameworks at both precisions (which shows whether TF32 is in use), forward + input
   gradient, PGD-20 L∞ (kernel and the sweep's evaluator), APGD-CE-100 and APGD-T (9 targets
   × 100 steps), each against torchattacks on a PyTorch twin with identical weights (logits
   checked first), and torchattacks PGD-20 with ``cudnn.benchmark``;
4. ``highest``: forward + gradient and PGD-20 again in full float32;
5. ``wrn``: WRN-28-10, forward + input gradient and PGD-20, both frameworks;
6. ``aa``: AutoAttack (standard) through the sweep's cascade on 256 images: at L∞ 8/255, and
   at ε = 0, where no point is ever fooled and every stage runs on every point (its full cost).

Timings are the minimum over repeats after a warm-up, compilation excluded (reported apart),
with ``block_until_ready`` / ``torch.cuda.synchronize`` before each clock read. Everything is
float32; "default" is each framework's default (JAX: TF32 for float32 convolutions and matmuls
on Ampere and later; PyTorch: TF32 in cuDNN convolutions, not in matmuls), "highest" is
``jax.default_matmul_precision("highest")`` and ``allow_tf32 = False`` for both of PyTorch's
switches. ``--small`` runs every section at toy sizes (a CPU smoke test).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIELDS = ("section", "measurement", "impl", "precision", "model", "batch", "work", "seconds",
          "images_per_s", "ratio", "speedup_vs_torchattacks", "compile_s", "note")
EPS_CIFAR = 8 / 255


class Bench:
    """Collects result rows and rewrites ``results.csv``/``results.md``/``environment.json``
    after every row, so that a run stopped early still leaves its figures."""

    def __init__(self, out: Path, budget_s: float):
        self.out, self.budget_s = out, budget_s
        self.t0 = time.perf_counter()
        self.rows: list[dict] = []
        self.env: dict = {}
        self.sweep: dict = {}
        self.skipped: list[str] = []
        self.errors: list[str] = []

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.t0)

    def add(self, section, measurement, impl, precision="default", model="", batch=None,
            work=None, seconds=None, ratio=None, speedup=None, compile_s=None, note=""):
        row = {"section": section, "measurement": measurement, "impl": impl,
               "precision": precision, "model": model, "batch": batch, "work": work,
               "seconds": _round(seconds), "images_per_s":
                   _round(batch / seconds) if batch and seconds else None,
               "ratio": _round(ratio, 3), "speedup_vs_torchattacks": _round(speedup, 3),
               "compile_s": _round(compile_s, 3), "note": note}
        self.rows.append(row)
        shown = f"{seconds * 1e3:10.2f} ms" if seconds is not None else " " * 13
        extra = "".join(f"  {k} {v}" for k, v in (("ratio", row["ratio"]),
                                                  ("speed-up", row["speedup_vs_torchattacks"]))
                        if v is not None)
        print(f"[{time.perf_counter() - self.t0:6.0f} s] {section:<9} {measurement:<34} "
              f"{impl:<12} {precision:<8} {shown}{extra}  {note}", flush=True)
        self.flush()

    def skip(self, what: str, why: str) -> None:
        self.skipped.append(f"{what}: {why}")
        print(f"skipped {what}: {why}", flush=True)
        self.flush()

    def error(self, section: str) -> None:
        text = traceback.format_exc()
        self.errors.append(f"{section}: {text.strip().splitlines()[-1]}")
        print(f"section {section} failed:\n{text}", flush=True)
        self.flush()

    def flush(self) -> None:
        from bench.records import atomic_write_text

        self.out.mkdir(parents=True, exist_ok=True)
        buf = io.StringIO()
        w = csv.DictWriter(buf, FIELDS, lineterminator="\n")
        w.writeheader()
        w.writerows(self.rows)
        atomic_write_text(self.out / "results.csv", buf.getvalue())
        atomic_write_text(self.out / "results.md", self.markdown())
        atomic_write_text(self.out / "environment.json", json.dumps(
            {**self.env, "sweep": self.sweep, "skipped": self.skipped, "errors": self.errors,
             "elapsed_s": round(time.perf_counter() - self.t0, 1)}, indent=2, default=str))

    def markdown(self) -> str:
        e = self.env
        lines = ["# robustax on an accelerator (issue 12)", "",
                 f"Device: {e.get('device_name', '?')}; JAX {e.get('jax')} "
                 f"({e.get('jax_backend')}: {e.get('jax_devices')}), torch {e.get('torch')} "
                 f"({e.get('torch_device')}), torchattacks {e.get('torchattacks')}. "
                 f"Float32 throughout; precision 'default' = each framework's default "
                 f"({e.get('precision_default', '')}), 'highest' = "
                 f"{e.get('precision_highest', '')}; 'cudnn.benchmark' = PyTorch defaults plus "
                 f"cuDNN autotuning. Seconds are the minimum over repeats "
                 f"after a warm-up, compilation excluded; ratio = attack time over work × "
                 f"(forward + input gradient) of the same implementation, batch and precision; "
                 f"speed-up = torchattacks seconds / robustax seconds.", ""]
        if self.sweep:
            s = self.sweep
            lines += ["## Default sweep (`robustax run bench/configs/default.toml`, CLI, fresh "
                      "process)", "",
                      f"- wall clock {s.get('wall_s')} s (exit status {s.get('returncode')}); "
                      f"attack seconds in the records {s.get('attack_seconds')} s, compile "
                      f"seconds {s.get('compile_seconds')} s, {s.get('cells')} cells",
                      f"- robust accuracy vs the committed CPU run (results/default): "
                      f"{s.get('vs_cpu', 'not compared')}", ""]
        lines += ["## Timings", "",
                  "| section | measurement | impl | precision | model | batch | work | s | "
                  "images/s | ratio | speed-up vs torchattacks | compile s | note |",
                  "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in self.rows:
            lines.append("| " + " | ".join("" if r[k] is None else str(r[k]) for k in FIELDS)
                         + " |")
        for title, items in (("Skipped", self.skipped), ("Errors", self.errors)):
            if items:
                lines += ["", f"## {title}", ""] + [f"- {i}" for i in items]
        return "\n".join(lines) + "\n"


def _round(v, digits=5):
    if v is None:
        return None
    v = float(v)
    return float(f"{v:.{digits}g}")


# --------------------------------------------------------------------------- the sweep


def run_sweep_subprocess(b: Bench, timeout_s: float) -> None:
    """Runs the default sweep through the CLI in a fresh process and records its wall clock."""
    import pandas as pd

    with tempfile.TemporaryDirectory(prefix="robustax_sweep_") as tmp:
        run_dir = Path(tmp) / "default"
        cmd = [sys.executable, "-m", "bench", "run", str(ROOT / "bench/configs/default.toml"),
               "--out", str(run_dir), "--no-progress"]
        t0 = time.perf_counter()
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
        wall = time.perf_counter() - t0
        b.sweep.update({"command": "robustax run bench/configs/default.toml --no-progress",
                        "wall_s": round(wall, 1), "returncode": p.returncode})
        if p.returncode != 0:
            b.sweep["stderr_tail"] = p.stderr[-3000:]
            print(p.stdout[-2000:], p.stderr[-3000:], sep="\n", flush=True)
            raise RuntimeError(f"the default sweep exited with {p.returncode}")
        table = run_dir / "tables" / "robust_accuracy.md"
        if table.is_file():
            from bench.records import atomic_write_text

            atomic_write_text(b.out / "sweep_robust_accuracy.md", table.read_text())
        env = json.loads((run_dir / "environment.json").read_text())
        b.sweep["backend"] = (env[-1] if isinstance(env, list) else env).get("backend")
        rec = pd.read_csv(run_dir / "records.csv")
        b.sweep.update({"cells": len(rec), "attack_seconds": round(float(rec.seconds.sum()), 2),
                        "compile_seconds": round(float(rec.compile_seconds.sum()), 2)})
        ref_path = ROOT / "results" / "default" / "records.csv"
        if ref_path.is_file():
            ref = pd.read_csv(ref_path)
            keys = ["model", "defense", "attack", "norm", "eps"]
            m = rec.merge(ref, on=keys, suffixes=("", "_cpu"))
            diff = (m.robust_acc - m.robust_acc_cpu).abs() * 100
            b.sweep["vs_cpu"] = (f"{len(m)} cells matched, {int((diff > 0).sum())} differ, max "
                                 f"|Δ| {diff.max():.2f} pp, mean |Δ| {diff.mean():.3f} pp "
                                 f"(weights are retrained on this device)")
    b.add("sweep", "default sweep, CLI end to end", "robustax", batch=None,
          seconds=wall, note=f"{b.sweep.get('cells')} cells, train 4 models; attack "
                             f"{b.sweep.get('attack_seconds')} s + compile "
                             f"{b.sweep.get('compile_seconds')} s in the records")


# --------------------------------------------------------------------------- precision


@contextlib.contextmanager
def precision(name: str):
    """'default': both frameworks as installed; 'highest': full float32 in both (JAX
    ``default_matmul_precision('highest')``, PyTorch ``allow_tf32 = False`` for matmul and
    cuDNN)."""
    import jax
    import torch

    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
           torch.backends.cudnn.benchmark)
    try:
        if name == "cudnn.benchmark":  # PyTorch only: defaults plus cuDNN autotuning
            torch.backends.cudnn.benchmark = True
            yield
        elif name == "highest":
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
            with jax.default_matmul_precision("highest"):
                yield
        else:
            yield
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.benchmark) = old


def describe_device(b: Bench, torch_device: str) -> None:
    import jax
    import torch

    from importlib import metadata

    def version(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    b.env.update({
        "python": sys.version.split()[0], "platform": platform.platform(),
        "cpu_count": os.cpu_count(), "jax": jax.__version__, "jaxlib": version("jaxlib"),
        "flax": version("flax"), "torch": torch.__version__,
        "torchattacks": version("torchattacks"), "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.devices()],
        "torch_device": torch_device,
        "device_name": (torch.cuda.get_device_name() if torch_device == "cuda"
                        else f"CPU ({platform.processor() or platform.machine()})"),
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
        "XLA_PYTHON_CLIENT_PREALLOCATE": os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE"),
        "torch_allow_tf32_default": {"matmul": torch.backends.cuda.matmul.allow_tf32,
                                     "cudnn": torch.backends.cudnn.allow_tf32},
        "torch_cudnn_benchmark": torch.backends.cudnn.benchmark,
        "precision_default": (f"JAX jax_default_matmul_precision="
                              f"{jax.config.jax_default_matmul_precision}; torch "
                              f"matmul.allow_tf32={torch.backends.cuda.matmul.allow_tf32}, "
                              f"cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}"),
        "precision_highest": ("JAX default_matmul_precision('highest'); torch "
                              "matmul.allow_tf32=False, cudnn.allow_tf32=False"),
    })
    print(f"device: {b.env['device_name']}; jax {jax.__version__} {b.env['jax_devices']}; "
          f"torch {torch.__version__} on {torch_device}", flush=True)
    if torch_device == "cuda":
        print(f"torch: {torch.cuda.get_device_properties(0)}", flush=True)


# --------------------------------------------------------------------------- cnn


def cnn_section(b: Bench, batch: int, steps: int, repeats: int, torch_device: str) -> None:
    from bench import speed

    r = speed.measure(batch=batch, steps=steps, repeats=repeats)
    module, params, x, y = r.pop("_model")
    m = "cnn w32 28×28×1"
    b.add("cnn", "forward + input gradient", "robustax", model=m, batch=batch, work=1,
          seconds=r["fwd_bwd_s"])
    b.add("cnn", "forward", "robustax", model=m, batch=batch, seconds=r["fwd_s"])
    try:
        ta = speed.torchattacks_time(module, params, x, y, steps, repeats, device=torch_device)
    except Exception:
        b.error("cnn torchattacks")
        ta = None
    for key, what, ratio in (("pgd_s", f"PGD-{steps} L∞ kernel (unroll auto)", "ratio"),
                             ("pgd_rolled_s", f"PGD-{steps} L∞ kernel (rolled)", "ratio_rolled"),
                             ("sweep_pgd_s", f"PGD-{steps} L∞ sweep evaluator", "ratio_sweep")):
        b.add("cnn", what, "robustax", model=m, batch=batch, work=steps, seconds=r[key],
              ratio=r[ratio], speedup=ta / r[key] if ta else None)
    b.add("cnn", f"APGD-CE-{steps} L∞ kernel", "robustax", model=m, batch=batch, work=steps,
          seconds=r["apgd_s"], ratio=r["ratio_apgd"])
    b.add("cnn", f"Square {steps} queries (ε=0)", "robustax", model=m, batch=batch,
          work=steps, seconds=r["square_s"], ratio=r["ratio_square"],
          note="ratio to queries × forward")
    if ta:
        b.add("cnn", f"PGD-{steps} L∞", "torchattacks", model=m, batch=batch, work=steps,
              seconds=ta, note="same weights (twin checked)")


# --------------------------------------------------------------------------- ResNets


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

        from bench.torch_twin import preact_twin, to_torch
        from models import init_variables, make_logits_fn

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
        from bench.speed import _best_time

        return _best_time(lambda: compiled(*args), repeats)

    def fwd_grad(self, prec: str, batch: int | None = None, ours: bool = True):
        """(robustax, torch) seconds of forward + input gradient of the summed CE; with
        ``ours=False`` PyTorch only (robustax None)."""
        import jax.numpy as jnp
        import torch
        import torch.nn.functional as F

        from bench.speed import input_gradient, torch_best_time

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

        from bench.speed import torch_best_time

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
        """PGD-``steps`` through ``bench.engine.attack_correct`` (the sweep's evaluator)."""
        import jax

        from attacks import PGD
        from bench import engine as ev

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

        from attacks import AutoAttack
        from bench import engine as ev

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

    from attacks import APGD, APGDT, PGD
    from models import PreActResNet18, WideResNet

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


# --------------------------------------------------------------------------- main

SECTIONS = ("sweep", "cnn", "preact", "highest", "wrn", "aa")
FULL = dict(cnn_batch=256, cnn_steps=20, repeats=3, preact_width=64, batch=512, pgd_steps=20,
            apgd_steps=100, apgdt_batch=128, apgd_repeats=1, wrn_depth=28, wrn_widen=10,
            wrn_batch=128, aa_n=256, aa_steps=100, aa_queries=5000, need_highest_s=45,
            need_wrn_s=60, need_aa_s=60, sweep_timeout_s=240)
SMALL = dict(cnn_batch=16, cnn_steps=2, repeats=1, preact_width=4, batch=8, pgd_steps=2,
             apgd_steps=3, apgdt_batch=4, apgd_repeats=1, wrn_depth=10, wrn_widen=1,
             wrn_batch=4, aa_n=8, aa_steps=2, aa_queries=4, need_highest_s=0, need_wrn_s=0,
             need_aa_s=0, sweep_timeout_s=240)


def main(argv: list[str] | None = None) -> Bench:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_bench",
                                description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="folder for results.csv/.md, environment.json")
    p.add_argument("--small", action="store_true", help="toy sizes (a CPU smoke test)")
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help=f"comma-separated subset of {','.join(SECTIONS)} (default: all)")
    p.add_argument("--budget-s", type=float, default=330.0,
                   help="optional sections are skipped when less than they need is left")
    args = p.parse_args(argv)
    sections = set(args.sections.split(",")) - {""}
    if sections - set(SECTIONS):
        p.error(f"unknown sections {sorted(sections - set(SECTIONS))}; choose from {SECTIONS}")
    cfg = SMALL if args.small else FULL
    b = Bench(Path(args.out), args.budget_s)
    b.flush()

    # The CPU flag of bench.xla, unless the installed XLA rejects it (XLA aborts on an unknown
    # flag at backend start; the sweep's fresh process finds out, and is rerun without it).
    from bench import xla

    if "sweep" in sections:
        try:
            run_sweep_subprocess(b, cfg["sweep_timeout_s"])
        except Exception:
            b.error("sweep")
            if "unknown flag" in b.sweep.get("stderr_tail", "").lower():
                os.environ["ROBUSTAX_XLA_DEFAULTS"] = "0"
                b.sweep["retried_with"] = "ROBUSTAX_XLA_DEFAULTS=0"
                try:
                    run_sweep_subprocess(b, cfg["sweep_timeout_s"])
                except Exception:
                    b.error("sweep (retry)")
    xla.configure()
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # JAX and torch share

    import torch

    torch_device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        describe_device(b, torch_device)
    except Exception:
        b.error("device")
    if "cnn" in sections:
        try:
            cnn_section(b, cfg["cnn_batch"], cfg["cnn_steps"], cfg["repeats"], torch_device)
        except Exception:
            b.error("cnn")
    try:
        resnet_sections(b, cfg, torch_device, sections)
    except Exception:
        b.error("resnets")
    b.flush()
    print("\n" + b.markdown(), flush=True)
    return b


if __name__ == "__main__":
    main()
