"""The record of ``python -m bench.pytorch.gpu_bench``: its rows, notes and files."""

from __future__ import annotations

import csv
import io
import json
import time
import traceback
from pathlib import Path

from bench.store.io import atomic_write_text

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
