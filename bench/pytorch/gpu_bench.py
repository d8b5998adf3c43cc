"""Issue 12's accelerator figures, measured in one process: ``python -m bench.pytorch.gpu_bench --out DIR``.

Sections, in order (``--sections`` picks some; each one's failure is recorded and the next
still runs; the optional ones are skipped when ``--budget-s`` is nearly spent):

1. ``sweep``: the default sweep, ``robustax run bench/configs/default.toml``, in a subprocess
   started before this process touches the GPU: end-to-end wall clock, the attack and compile
   seconds its records hold, and its robust accuracies against the committed CPU run; then the
   device (``jax.devices()``, ``torch.cuda.get_device_name()``) is recorded;
2. ``cnn``: ``bench.pytorch.speed.measure`` on the ``cnn`` (28×28×1) and torchattacks PGD-20 on the
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
   at ε = 0, where no point is ever fooled and every stage runs on every point (its full cost);
7. ``aa-wrn`` (issue 22, item 4; not in the default list: ``--sections aa-wrn``): AutoAttack
   standard on WRN-28-10, 128 images, at 8/255 and ε = 0, robustax's cascade against
   torchattacks' ``AutoAttack`` as shipped and fra31's settings as torchattacks attacks, on the
   same weights and points, images per second, and the projected time for 10,000 images
   (``gpu_resnets.wrn_autoattack``).

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
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import xla
from bench.pytorch import speed
from bench.pytorch.gpu_record import Bench
from bench.pytorch.gpu_resnets import resnet_sections, wrn_autoattack
from bench.store.io import atomic_write_text

ROOT = Path(__file__).resolve().parents[2]
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
def describe_device(b: Bench, torch_device: str) -> None:
    from importlib import metadata

    import jax
    import torch

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


# --------------------------------------------------------------------------- main

SECTIONS = ("sweep", "cnn", "preact", "highest", "wrn", "aa", "aa-wrn")
FULL = dict(cnn_batch=256, cnn_steps=20, repeats=3, preact_width=64, batch=512, pgd_steps=20,
            apgd_steps=100, apgdt_batch=128, apgd_repeats=1, wrn_depth=28, wrn_widen=10,
            wrn_batch=128, aa_n=256, aa_steps=100, aa_queries=5000, aa_wrn_n=128,
            need_highest_s=45, need_wrn_s=60, need_aa_s=60, sweep_timeout_s=240)
SMALL = dict(cnn_batch=16, cnn_steps=2, repeats=1, preact_width=4, batch=8, pgd_steps=2,
             apgd_steps=3, apgdt_batch=4, apgd_repeats=1, wrn_depth=10, wrn_widen=1,
             wrn_batch=4, aa_n=8, aa_steps=2, aa_queries=4, aa_wrn_n=4, need_highest_s=0,
             need_wrn_s=0, need_aa_s=0, sweep_timeout_s=240)


def main(argv: list[str] | None = None) -> Bench:
    p = argparse.ArgumentParser(prog="python -m bench.pytorch.gpu_bench",
                                description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="folder for results.csv/.md, environment.json")
    p.add_argument("--small", action="store_true", help="toy sizes (a CPU smoke test)")
    p.add_argument("--sections", default=",".join(s for s in SECTIONS if s != "aa-wrn"),
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
    if "aa-wrn" in sections:
        try:
            wrn_autoattack(b, cfg, torch_device)
        except Exception:
            b.error("aa-wrn")
    b.flush()
    print("\n" + b.markdown(), flush=True)
    return b


if __name__ == "__main__":
    main()
