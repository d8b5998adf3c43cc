"""Every registered attack, model and defense declares its numerics version.

A class's ``numerics`` (an int ≥ 1) is bumped in the commit that can move its numbers; cell
ids and checkpoint keys include it (DESIGN.md, "Identity"). It is a class attribute, never a
dataclass or Flax field: not a config option, not part of a module's hash or parameters.
"""

import dataclasses

import pytest

from bench.sweep.registry import ATTACKS, DEFENSES, MODELS

REGISTERED = [(reg.kind, name, cls) for reg in (ATTACKS, DEFENSES, MODELS)
              for name, cls in sorted(reg.items())]


@pytest.mark.parametrize("kind,name,cls", REGISTERED, ids=[f"{k}:{n}" for k, n, _ in REGISTERED])
def test_registered_class_declares_numerics(kind, name, cls):
    assert "numerics" in vars(cls), f"{kind} {name!r} ({cls.__name__}) declares no numerics of its own"
    value = cls.numerics
    assert type(value) is int and value >= 1, f"{kind} {name!r}: numerics = {value!r}"
    assert "numerics" not in {f.name for f in dataclasses.fields(cls)}, \
        f"{kind} {name!r}: numerics must be a ClassVar, not a field"


def test_every_registry_is_covered():
    assert {k for k, _, _ in REGISTERED} == {"attack", "defense", "model"}
    assert len(REGISTERED) == len(ATTACKS) + len(DEFENSES) + len(MODELS)


def test_flax_modules_accept_numerics_as_a_class_attribute():
    """A Flax model built with its options still has numerics on the class, and it is no
    constructor argument."""
    model = MODELS["cnn"](num_classes=3)
    assert model.numerics == type(model).numerics == 1
    with pytest.raises(TypeError):
        MODELS["cnn"](numerics=2)
