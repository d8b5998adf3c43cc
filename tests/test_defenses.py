"""Training defenses and checkpoints."""

import dataclasses

import jax
import numpy as np
import pytest

import attacks
from bench.errors import ConfigError
from bench.sweep import engine
from bench.sweep.registry import DEFENSES, MODELS
from defenses import PGDAT, Standard, checkpoint_bytes, is_wrapper, variables_from_bytes
from models import MLP, PreActResNet18, init_variables, make_logits_fn


@pytest.fixture(scope="module")
def small_digits():
    from bench.sweep.data import load_dataset

    return load_dataset("digits", train_examples=256)


TRAINING = sorted(n for n in DEFENSES if not is_wrapper(DEFENSES[n]))
BATCHNORM_PATHS = ["standard", "pgd-at", "trades", "distillation"]
"""One training defense per path through the loop's BatchNorm handling: plain, a ``perturb``
(fgsm-at, fgsm-rs, augment and label-flip take the same one), the ``loss`` hook with two forward
passes (TRADES) and a teacher followed by a student on soft labels (distillation)."""


def test_batchnorm_paths_cover_the_training_defenses():
    assert set(BATCHNORM_PATHS) <= set(TRAINING)


@pytest.mark.parametrize("name", BATCHNORM_PATHS)
@pytest.mark.parametrize("model", ["preact-resnet18"])
def test_every_defense_trains_every_kind_of_model(name, model, small_digits):
    """One epoch on a BatchNorm model for each way a training defense drives the loop (every
    training defense on the plain MLP: test_defense_training): variables have the init
    structure, change from init, are finite and deterministic for the seed, and BatchNorm
    statistics are updated."""
    options = {"width": 8, "blocks": (1, 1, 1, 1)} if model == "preact-resnet18" else {"width": 16}
    module = MODELS.build(model, options, num_classes=10, mean=small_digits.mean, std=small_digits.std)
    fields = {f.name for f in dataclasses.fields(DEFENSES[name])}
    defense = DEFENSES.build(name, {"epochs": 1, "batch_size": 64}
                             | ({"steps": 1} if "steps" in fields else {})
                             | ({"teacher_epochs": 1} if "teacher_epochs" in fields else {}))
    v1 = defense.train(module, small_digits, jax.random.key(0))
    v2 = defense.train(module, small_digits, jax.random.key(0))
    init = init_variables(module, jax.random.key(0), small_digits.image_shape)
    assert jax.tree.structure(v1) == jax.tree.structure(init)
    for a, b in zip(jax.tree.leaves(v1), jax.tree.leaves(v2)):
        np.testing.assert_array_equal(a, b)
        assert np.all(np.isfinite(a))
    if model == "preact-resnet18":  # BatchNorm running statistics were updated
        assert not np.allclose(jax.tree.leaves(v1["batch_stats"])[0], jax.tree.leaves(init["batch_stats"])[0])


def test_pgd_at_buys_robustness(digits):
    module = MLP(num_classes=10, mean=digits.mean, std=digits.std, width=64, depth=1)
    f = make_logits_fn(module)
    std = Standard(epochs=20).train(module, digits, jax.random.key(0))
    adv = PGDAT(epochs=20, eps=0.15, steps=5).train(module, digits, jax.random.key(0))
    x, y = digits.x_test[:200], digits.y_test[:200]
    pgd = attacks.PGD(steps=10)
    acc = lambda v: engine.attack_correct(pgd, f, v, x, y, [0.15], jax.random.key(1))[0].mean()
    assert engine.clean_correct(f, adv, x, y).mean() > 0.85
    assert acc(adv) > acc(std) + 0.2


def test_defense_option_errors():
    with pytest.raises(ConfigError, match="optimizer = 'adamw' is not allowed; choose one of: adam, sgd"):
        DEFENSES.build("standard", {"optimizer": "adamw"})
    with pytest.raises(ConfigError, match="eps = 0.0 is impossible"):
        DEFENSES.build("pgd-at", {"eps": 0.0})
    with pytest.raises(ValueError, match="eps = 0.0 is impossible"):  # the library's own error
        PGDAT(eps=0.0)


def test_checkpoint_round_trip_and_checks(tmp_path):
    module = PreActResNet18(num_classes=10, mean=(0.5,), std=(0.2,), width=8, blocks=(1, 1, 1, 1))
    v = init_variables(module, jax.random.key(0), (8, 8, 1))
    blob = checkpoint_bytes(v, {"model": "preact-resnet18"})
    loaded, meta = variables_from_bytes(blob, like=v)
    assert meta == {"model": "preact-resnet18"}
    for a, b in zip(jax.tree.leaves(v), jax.tree.leaves(loaded)):
        np.testing.assert_array_equal(a, b)
    other = init_variables(MLP(num_classes=10, mean=(0.5,), std=(0.2,)), jax.random.key(0), (8, 8, 1))
    with pytest.raises(ValueError, match="does not match the model"):
        variables_from_bytes(blob, like=other)
    with pytest.raises(ValueError, match="not a readable safetensors checkpoint"):
        variables_from_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors checkpoint"):
        variables_from_bytes(blob[: len(blob) // 2])
