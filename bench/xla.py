"""XLA settings for fast attacks on CPU; must run before JAX initialises its backend.

The flags and the rules live in ``attacks/xla_flags.py`` (applied on ``import attacks`` and
``import bench``, so API users get the CLI's speed); entry points call :func:`configure` too.
This module loads that file without importing the ``attacks`` package (which imports JAX).
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys

_PATH = pathlib.Path(__file__).resolve().parent.parent / "attacks" / "xla_flags.py"


_MODULE = []


def _flags_module():
    mod = sys.modules.get("attacks.xla_flags")
    if mod is None:
        if not _MODULE:
            spec = importlib.util.spec_from_file_location("_robustax_xla_flags", _PATH)
            _MODULE.append(importlib.util.module_from_spec(spec))
            spec.loader.exec_module(_MODULE[0])
        mod = _MODULE[0]
    return mod


CPU_FLAGS = _flags_module().CPU_FLAGS


def configure(environ: dict | None = None) -> bool:
    """Appends the CPU flags to ``XLA_FLAGS`` unless set there already or opted out.

    Set ``ROBUSTAX_XLA_DEFAULTS=0`` to leave ``XLA_FLAGS`` untouched.
    """
    return _flags_module().configure(environ)
