"""The two kinds of defense a config can name.

A *training* defense turns a model and a training set into weights. An *inference
wrapper* turns the logits function of another defense's weights into a defended one; its
``base`` option names the training defense (by its config label) whose weights it wraps,
so wrapping never retrains. A wrapper that is not differentiable also provides
``adaptive(logits_fn)``: a stand-in that attacks differentiate instead (BPDA's straight-
through gradient, an EOT average), and the sweep then reports a second row,
``<label> (adaptive)``, in which attacks run on the stand-in and are scored on the wrapper.
A wrapper that is differentiable although it has ``adaptive`` sets ``needs_adaptive = False``.

A *member* wrapper (ensemble, fusion) has ``members`` instead of ``base``: the labels of
several trained entries of the sweep; ``wrap(logits_fns)`` then takes their logits
functions, in order, and its params are the tuple of their variables. A *random* wrapper
returns ``f(params, x, key)`` with ``f.random = True`` and declares ``random = True`` on its
class, so a sweep knows before building anything that its rows are random (:func:`is_random`:
they are scored over several draws, AutoAttack runs its ``rand`` version); the engine
supplies every key from the seed (see DEVELOPERS.md, "Randomness").
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

from attacks import checks, threat
from attacks.base import LogitsFn


class TrainingDefense(Protocol):
    kind: ClassVar[str]  # "training"
    epochs: int

    def train(self, module, data, key, on_epoch=None) -> dict:
        """Returns the variables (params and, if any, batch_stats) of ``module``."""


class InferenceWrapper(Protocol):
    kind: ClassVar[str]  # "wrapper"
    base: str

    def wrap(self, logits_fn: LogitsFn) -> LogitsFn:
        """The defended ``logits_fn(params, x)``: what accuracy is measured on."""

    # Optional: def adaptive(self, logits_fn) -> LogitsFn, the stand-in attacks differentiate.


def is_wrapper(defense: Any) -> bool:
    """True for inference wrappers (``kind = "wrapper"``), False for training defenses."""
    return getattr(defense, "kind", "training") == "wrapper"


def is_random(defense_or_logits_fn: Any) -> bool:
    """True for a random defense (its class declares ``random = True``) or a random logits
    function (``f.random = True``, called ``f(params, x, key)``): its output depends on a key,
    so one evaluation is one draw of it."""
    return bool(getattr(defense_or_logits_fn, "random", False))


def check_budget(eps: float, norm: str) -> None:
    """The training budget's checks, shared by the adversarial training procedures (PGD-AT,
    FGSM-AT/-RS, TRADES): ``eps`` > 0, ``norm`` one of :data:`attacks.threat.NORMS`, and
    ``eps`` at most the largest meaningful budget of that norm (ValueError naming the option,
    in that order)."""
    checks.check_positive("eps", eps)
    checks.check_choice("norm", norm, threat.NORMS)
    checks.check_eps("eps", eps, norm)
