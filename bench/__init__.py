"""robustax's benchmark layer (the app layer over attacks, models and defenses).

Its parts, each a subpackage whose docstring says what it owns and what it may import:
``bench.store`` (the run directory: one atomic writer, manifest, cells, masks, records),
``bench.security`` (keys, encryption, signatures, the ledger), ``bench.sweep`` (configs,
registries, the plan, the evaluation engine and runner, data, the Python API),
``bench.reports`` (tables, plots, report.md, checklist, the regression gate) and
``bench.pytorch`` (PyTorch twins, imports and speed tooling; nothing depends on it). The CLI
(``bench.cli``) is a thin layer over them.

The public Python API is :func:`evaluate` (benchmark any ``logits_fn(params, x)``) and
:func:`run_sweep` (run a TOML config). Importing ``bench`` first applies robustax's XLA CPU
settings (``bench/xla.py``) so that API users get the CLI's speed, and does not import JAX:
``bench.evaluate`` and ``bench.run_sweep`` are loaded on first use (PEP 562), so a user can
still set JAX options after ``import bench``.
"""

import importlib

from bench import xla as _xla

_xla.configure()

_PUBLIC = {"evaluate": "bench.sweep.api", "run_sweep": "bench.sweep.runner"}
__all__ = list(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'bench' has no attribute {name!r}")
