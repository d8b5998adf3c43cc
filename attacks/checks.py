"""Option checks for the library's frozen dataclasses (attacks and training defenses).

They raise plain ``ValueError`` naming the option, the value and what is allowed; the app
layer (``bench``) adds where in a config the option came from. Used from ``__post_init__``,
so ``attacks.PGD(steps=0)`` fails the same way from Python as from a TOML file.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    """Raises ``ValueError`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} = {value!r} is not allowed; choose one of: {', '.join(choices)}")


def check_positive(name: str, value: float, allow_zero: bool = False) -> None:
    """Raises ``ValueError`` unless ``value`` > 0 (or ≥ 0 with ``allow_zero``)."""
    if not value >= 0 or (value == 0 and not allow_zero):
        bound = "≥ 0" if allow_zero else "> 0"
        raise ValueError(f"{name} = {value!r} is impossible; it must be {bound}")


def check_range(name: str, value: float, low: float, high: float, *, closed_high: bool = True) -> None:
    """Raises ``ValueError`` unless ``low`` ≤ ``value`` ≤ ``high`` (or < ``high``)."""
    ok = low <= value <= high if closed_high else low <= value < high
    if not ok:
        bracket = "]" if closed_high else ")"
        raise ValueError(f"{name} = {value!r} is impossible; it must be in [{low:g}, {high:g}{bracket}")
