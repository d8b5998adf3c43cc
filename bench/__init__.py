"""robustax's benchmark layer: data, configs, the sweep runner, records, reports, the CLI.

The public Python API is :func:`evaluate` (benchmark any ``logits_fn(params, x)``) and
:func:`run_sweep` (run a TOML config). Importing ``bench`` does not import JAX; it applies robustax's XLA CPU settings
(``bench/xla.py``) so that API users get the CLI's speed.
"""

from bench import xla as _xla

_xla.configure()


def evaluate(*args, **kwargs):
    """See :func:`bench.api.evaluate`."""
    from bench.api import evaluate as _evaluate

    return _evaluate(*args, **kwargs)


def run_sweep(*args, **kwargs):
    """See :func:`bench.runner.run_sweep`."""
    from bench.runner import run_sweep as _run_sweep

    return _run_sweep(*args, **kwargs)


__all__ = ["evaluate", "run_sweep"]
