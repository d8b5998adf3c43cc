"""Option checks for the library's frozen dataclasses (attacks and training defenses).

They raise plain ``ValueError`` naming the option, the value and what is allowed; the app
layer (``bench``) adds where in a config the option came from. Used from ``__post_init__``,
so ``attacks.PGD(steps=0)`` fails the same way from Python as from a TOML file.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

MAX_STEPS = 100_000
"""Upper bound of ``steps`` (attack iterations, PGD-AT/TRADES inner steps): 100,000 steps of
even a tiny model are hours; more is a typo (``steps = 1000000000``), not a budget."""
MAX_RESTARTS = 1_000
"""Upper bound of ``restarts`` (and EOT/target counts): each is another full attack."""
MAX_QUERIES = 1_000_000
"""Upper bound of ``queries`` (score-based attacks such as Square; the reference uses 5,000)."""
MAX_EPOCHS = 10_000
"""Upper bound of training ``epochs``."""
MAX_DRAWS = 1_000
"""Upper bound of the draws a random model is scored over (``[eval] draws``): each is another
forward pass per example and attack point."""

EPS_MAX = {"linf": 1.0, "severity": 5.0}
"""The largest meaningful ε per norm for images in [0, 1]: at L∞ ε = 1 every image already
reaches every other, so a larger ε is a mistake (often ε given in 0–255 units); a
corruption's severity (``attacks.corruption``) runs 0..5. L2 and L1
depend on the image size (the diameter of [0, 1]^d is √d and d): see :func:`eps_limit`."""


def check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    """Raises ``ValueError`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} = {value!r} is not allowed; choose one of: {', '.join(choices)}")


def check_finite(name: str, value: float) -> None:
    """Raises ``ValueError`` for NaN or ±inf, saying which (not "must be > 0")."""
    if isinstance(value, float) and not math.isfinite(value):
        what = "not a number" if math.isnan(value) else "infinite"
        raise ValueError(f"{name} = {value!r} is {what}; give a finite number")


def check_positive(name: str, value: float, allow_zero: bool = False) -> None:
    """Raises ``ValueError`` unless ``value`` is finite and > 0 (or ≥ 0 with ``allow_zero``)."""
    check_finite(name, value)
    if not value >= 0 or (value == 0 and not allow_zero):
        bound = "≥ 0" if allow_zero else "> 0"
        raise ValueError(f"{name} = {value!r} is impossible; it must be {bound}")


def check_range(name: str, value: float, low: float, high: float, *, closed_high: bool = True) -> None:
    """Raises ``ValueError`` unless ``low`` ≤ ``value`` ≤ ``high`` (or < ``high``)."""
    ok = low <= value <= high if closed_high else low <= value < high
    if not ok:
        bracket = "]" if closed_high else ")"
        raise ValueError(f"{name} = {value!r} is impossible; it must be in [{low:g}, {high:g}{bracket}")


def check_count(name: str, value: int, high: int) -> None:
    """Raises ``ValueError`` unless 1 ≤ ``value`` ≤ ``high`` (an iteration or sample count)."""
    check_positive(name, value)
    if value > high:
        raise ValueError(f"{name} = {value:,} is more than robustax allows ({high:,}); a count "
                         f"this large cannot finish (a typo?)")


def check_draws(name: str, value: Any) -> int:
    """Raises ``ValueError`` unless ``value`` is a whole number in [1, ``MAX_DRAWS``] (the
    draws a random model is scored over); returns it as an ``int``."""
    whole = isinstance(value, numbers.Integral) and not isinstance(value, bool)  # numpy ints too
    if not whole or not 1 <= value <= MAX_DRAWS:
        raise ValueError(f"{name} = {value!r} is impossible; it must be a whole number from 1 "
                         f"to {MAX_DRAWS:,} (the draws a random model is scored over; 10 is "
                         f"the default)")
    return int(value)


def eps_limit(norm: str, image_shape: Sequence[int] | None = None) -> float | None:
    """The largest meaningful ε of ``norm`` for images of ``image_shape`` (H, W, C) in [0, 1]:
    1 for L∞, √d for L2 and d for L1 (d = H·W·C, the diameter of [0, 1]^d: a larger ball holds
    every image, so the budget means nothing more). None when the shape is needed and not
    given."""
    if norm in EPS_MAX:
        return EPS_MAX[norm]
    if image_shape is None:
        return None
    d = math.prod(image_shape)
    return math.sqrt(d) if norm == "l2" else float(d)


def check_eps(name: str, value: float, norm: str, image_shape: Sequence[int] | None = None
              ) -> None:
    """Raises ``ValueError`` unless ε is finite, ≥ 0 and at most :func:`eps_limit`."""
    check_positive(name, value, allow_zero=True)
    high = eps_limit(norm, image_shape)
    if high is not None and value > high:
        where = "" if norm in EPS_MAX else f" for {'×'.join(map(str, image_shape))} images"
        raise ValueError(f"{name} = {value!r} is beyond the largest meaningful {norm} budget"
                         f"{where}, {high:g} (images are in [0, 1]; ε in 0–255 units must be "
                         f"divided by 255)")
