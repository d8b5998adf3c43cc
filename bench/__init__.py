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
settings (``bench/xla.py``; before JAX starts its backend) so that API users get the CLI's speed.
"""

from bench import xla as _xla

_xla.configure()

from bench.sweep.api import evaluate  # noqa: E402  (after the XLA settings)
from bench.sweep.runner import run_sweep  # noqa: E402

__all__ = ["evaluate", "run_sweep"]
