"""Transfer attacks: adversarial examples crafted on a surrogate model, scored on the target.

The black-box transfer setting (Papernot et al. 2016; Tramèr et al. 2017): the attacker has
white-box access to a surrogate (or an ensemble of surrogates, whose logits are averaged, as
in Liu et al. 2017), not to the target. :class:`Transfer` wraps any attack (the *crafter*);
called as a kernel it simply runs the crafter on the ``logits_fn`` it is given, which is the
surrogate's: scoring the result on the target is the caller's job (``bench`` does it, with
surrogates named by their ``<model>/<defense>`` labels in the same sweep). A model used as its
own surrogate gives exactly the white-box attack.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Transfer:
    """Adversarial examples crafted by another attack on a surrogate, scored on the target.

    Attributes:
      attack: in a config, the label of the ``[[attacks]]`` entry that crafts the examples
        (``label`` or ``label/norm`` when a label has several norms); its options, ε list
        and norm are that entry's.
      surrogate: ``<model label>/<defense label>`` of the surrogate(s) in the same sweep;
        several are an ensemble (mean logits).
    """

    numerics: ClassVar[int] = 1

    attack: str = "pgd"
    surrogate: tuple[str, ...] = ()
    _crafter: Any = None  # the resolved attack instance (set by bench.sweep.config or :meth:`of`)

    @classmethod
    def of(cls, crafter: Any, surrogate: Sequence[str] = ()) -> Transfer:
        """A transfer attack crafting with the attack instance ``crafter``."""
        return cls(attack=type(crafter).__name__.lower(), surrogate=tuple(surrogate),
                   _crafter=crafter)

    @property
    def crafter(self) -> Any:
        if self._crafter is None:
            raise ValueError(f"transfer: attack = {self.attack!r} is not resolved to an attack; "
                             f"use Transfer.of(attack) (a sweep config resolves the label)")
        return self._crafter

    @property
    def norm(self) -> str:
        return self._crafter.norm if self._crafter is not None else "unresolved"

    def __call__(self, logits_fn, params, x, y, eps, key, target=None):
        """The crafter on ``logits_fn``: pass the surrogate's function and params here."""
        return self.crafter(logits_fn, params, x, y, eps, key, target)


def mean_logits(fns: Sequence[Callable]) -> Callable:
    """An ensemble surrogate: ``f(params_tuple, x) = mean_i fns[i](params_tuple[i], x)``.

    Random members (``random = True``) get their own split of the key; the ensemble is then
    random itself (called with a key)."""
    fns = tuple(fns)
    if not any(getattr(f, "random", False) for f in fns):
        def ensemble(params, x):
            return jnp.mean(jnp.stack([f(p, x) for f, p in zip(fns, params)]), axis=0)

        return ensemble

    def random_ensemble(params, x, key):
        keys = jax.random.split(key, len(fns))
        return jnp.mean(jnp.stack([f(p, x, k) if getattr(f, "random", False) else f(p, x)
                                   for f, p, k in zip(fns, params, keys)]), axis=0)

    random_ensemble.random = True
    return random_ensemble
