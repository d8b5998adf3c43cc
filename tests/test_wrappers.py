"""The inference-wrapper extension point, exercised by a wrapper defined only here.

``Quantize`` rounds pixels to ``levels`` grey levels before the model (the bit-depth part of
feature squeezing). Its gradient is zero almost everywhere, so gradient attacks on the
wrapper itself are blunted (gradient masking); its adaptive form is BPDA (identity in the
backward pass), which breaks it. The sweep must report both rows.
"""

import dataclasses

import jax
import jax.numpy as jnp
import pytest

from bench.errors import ConfigError
from bench.sweep.config import parse_config
from bench.sweep.registry import DEFENSES


@dataclasses.dataclass(frozen=True)
class Quantize:
    base: str = "standard"
    levels: int = 2
    kind = "wrapper"

    def _q(self, x):
        return jnp.round(x * (self.levels - 1)) / (self.levels - 1)

    def wrap(self, logits_fn):
        return lambda params, x: logits_fn(params, self._q(x))

    def adaptive(self, logits_fn):
        return lambda params, x: logits_fn(params, x + jax.lax.stop_gradient(self._q(x) - x))


@pytest.fixture
def quantize_registered():
    DEFENSES.register("quantize-test", Quantize)
    yield
    del DEFENSES._items["quantize-test"]


def config(**quantize):
    return {
        "name": "wrap", "seed": 0,
        "data": {"name": "digits", "eval_examples": 120},
        "models": [{"name": "mlp", "width": 64, "depth": 1}],
        "defenses": [{"name": "standard", "epochs": 10}, {"name": "quantize-test", **quantize}],
        "attacks": [{"name": "pgd", "steps": 10, "random_start": False, "eps": [0.0, 0.3]}],
    }


def test_wrapper_naive_and_adaptive_rows(quantize_registered, tmp_path, monkeypatch):
    from bench.sweep import runner
    from defenses import Standard

    trains = []
    real = Standard.train
    monkeypatch.setattr(Standard, "train", lambda *a, **k: trains.append(1) or real(*a, **k))
    records = runner.run_sweep(parse_config(config()), tmp_path, progress=False)
    assert len(trains) == 1  # the wrapper reuses the standard model's weights
    acc = records.set_index(["defense", "attack", "eps"])["robust_acc"]
    assert set(records["defense"]) == {"standard", "quantize-test", "quantize-test (adaptive)"}
    # Clean accuracy of the wrapper is the same in both rows, and ε = 0 equals it.
    assert acc["quantize-test", "clean", 0.0] == acc["quantize-test (adaptive)", "clean", 0.0]
    assert acc["quantize-test", "pgd", 0.0] == acc["quantize-test", "clean", 0.0]
    # Gradient masking: with zero gradients and no random start PGD cannot move, so the naive
    # number equals clean accuracy; BPDA breaks the defense.
    assert acc["quantize-test", "pgd", 0.3] == acc["quantize-test", "clean", 0.0]
    assert acc["quantize-test (adaptive)", "pgd", 0.3] < acc["quantize-test", "pgd", 0.3] - 0.3


def test_wrapper_base_must_be_a_training_defense(quantize_registered):
    with pytest.raises(ConfigError, match="wraps base = 'pgd-at', which is not the label of a "
                                          "training defense here; choose one of: standard"):
        parse_config(config(base="pgd-at"))


def test_api_adaptive_evaluation(trained_mlp, digits):
    """The same BPDA stand-in through the Python API."""
    import bench
    from attacks import PGD

    f, params = trained_mlp
    q = Quantize()
    data = (digits.x_test[:100], digits.y_test[:100])
    attack = [PGD(steps=10, random_start=False)]
    naive = bench.evaluate(q.wrap(f), params, data, attack, eps=[0.3])
    adaptive = bench.evaluate(q.wrap(f), params, data, attack, eps=[0.3],
                              attack_logits_fn=q.adaptive(f))
    assert naive["correct"].iloc[1] == naive["correct"].iloc[0]  # masked: PGD stuck at x
    assert adaptive["correct"].iloc[1] < naive["correct"].iloc[1] - 30
