"""Provenance: the code version and environment stored in every record and run directory.

Never part of a cell's identity (see :mod:`bench.sweep.plan`): a refactor changes the commit,
not the numbers, so committed results stay matchable by a rerun.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import jax


def code_version() -> str:
    """The robustax version, plus the git commit when run from a checkout."""
    try:
        version = metadata.version("robustax")
    except metadata.PackageNotFoundError:
        version = "unknown"
    root = Path(__file__).resolve().parents[2]
    try:
        top = subprocess.run(["git", "-C", str(root), "rev-parse", "--show-toplevel"],
                             capture_output=True, text=True, timeout=5).stdout.strip()
        if not top or Path(top).resolve() != root:  # installed inside someone else's repo
            return version
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--",
                                "attacks", "models", "defenses", "bench"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", ""
    if commit:
        version += f"+g{commit}" + (".dirty" if dirty else "")
    return version


def environment() -> dict:
    """Versions, devices and flags: what anyone needs to tell how a number was produced."""
    pkgs = {}
    for name in ("robustax", "jax", "jaxlib", "flax", "optax", "numpy", "pandas",
                 "tensorflow-datasets", "safetensors", "scikit-learn", "mlxtend"):
        try:
            pkgs[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pkgs[name] = None
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "packages": pkgs,
        "code_version": code_version(),
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
    }
