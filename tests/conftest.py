"""Shared fixtures: tiny models and a tiny sweep config on the embedded digits."""

import os

from bench import xla

# Before JAX starts: the CLI's XLA settings, plus the cheapest code generation for the tests.
# Their models are tiny, so compiling is most of their time (a profile of the slowest attack
# test: XLA compilation 68 % of the compiling thread, JAX tracing and lowering the rest):
# - LLVM optimisation level 0 cut a serial tests/test_attacks.py from 670 s to 435 s;
# - XLA:CPU's older loop emitters instead of its fusion emitters cut the same slowest test from
#   22.4 to 16.7 s (cold cache). They run tiny programs as fast; on the benchmark's CNN they
#   are slower (user CNN forward + gradient 147 -> 182 ms), hence tests only.
# The programs and their results are the CLI's, only compiled to less optimised machine code.
# ROBUSTAX_TEST_XLA_OPT=1 keeps XLA's defaults.
_TEST_FLAGS = {"xla_backend_optimization_level": "0", "xla_cpu_use_fusion_emitters": "false"}
if os.environ.get("ROBUSTAX_TEST_XLA_OPT", "0") == "0":
    for _flag, _value in _TEST_FLAGS.items():
        if _flag not in os.environ.get("XLA_FLAGS", ""):
            os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --{_flag}={_value}".strip()
xla.configure()

import tempfile  # noqa: E402
import textwrap  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

# Tests train and attack many identical tiny programs (every `fit` call jits a fresh closure,
# xdist workers compile the same fixtures): XLA's persistent compilation cache turns those
# repeats into loads. Keyed by the program, JAX version and flags, so it never changes a
# result; ROBUSTAX_TEST_XLA_CACHE="" turns it off.
_cache = os.environ.get("ROBUSTAX_TEST_XLA_CACHE",
                        os.path.join(tempfile.gettempdir(), f"robustax-xla-cache-{os.getuid()}"))
if _cache:
    jax.config.update("jax_compilation_cache_dir", _cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.3)

TINY_TOML = textwrap.dedent("""
    name = "tiny"
    seed = 3
    [data]
    name = "digits"
    eval_examples = 60
    train_examples = 300
    [eval]
    batch_size = 25
    [[models]]
    name = "mlp"
    width = 32
    depth = 1
    [[defenses]]
    name = "standard"
    epochs = 3
    [[defenses]]
    name = "pgd-at"
    epochs = 2
    eps = 0.1
    steps = 2
    [[attacks]]
    name = "fgsm"
    eps = [0.0, 0.1]
    [[attacks]]
    name = "pgd"
    steps = 3
    eps = [0.0, 0.1, 0.2]
""")


def digits_mlp_toml(name: str, rest: str = "", *, seed: int | None = 1, eval_examples: int = 40,
                    train_examples: int = 200, batch_size: int = 40, eval_extra: str = "",
                    epochs: int | str = 1) -> str:
    """A small sweep config on the embedded digits: one 16-wide, 1-deep MLP and a standard
    defense trained for ``epochs``, then ``rest`` (further ``[[defenses]]``/``[[attacks]]``
    blocks, dedented). ``eval_extra``: more ``[eval]`` lines; ``seed=None`` leaves the seed
    at its default."""
    lines = [f'name = "{name}"'] + ([f"seed = {seed}"] if seed is not None else []) + [
        "[data]", 'name = "digits"', f"eval_examples = {eval_examples}",
        f"train_examples = {train_examples}", "[eval]", f"batch_size = {batch_size}"]
    lines += [eval_extra] if eval_extra else []
    lines += ["[[models]]", 'name = "mlp"', "width = 16", "depth = 1",
              "[[defenses]]", 'name = "standard"', f"epochs = {epochs}"]
    return "\n".join(lines) + "\n" + textwrap.dedent(rest).lstrip("\n")


@pytest.fixture
def tiny_toml(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_TOML)
    return path


def linear_logits(params, x):
    """A linear classifier on flattened images: W x + b."""
    w, b = params
    return x.reshape(x.shape[0], -1) @ w + b


def quadratic_logits(params, x):
    """A non-linear model: linear in the squared pixels, so one linearised step can fall short."""
    w, b = params
    flat = x.reshape(x.shape[0], -1)
    return (flat * flat) @ w + b


@pytest.fixture(scope="session")
def digits():
    from bench.sweep.data import load_dataset

    return load_dataset("digits")


@pytest.fixture(scope="session")
def trained_mlp(digits):
    """A small MLP trained on digits (clean), its logits_fn and variables."""
    from defenses import Standard
    from models import MLP, make_logits_fn

    module = MLP(num_classes=10, mean=digits.mean, std=digits.std, width=64, depth=1)
    variables = Standard(epochs=8).train(module, digits, jax.random.key(0))
    return make_logits_fn(module), variables


@pytest.fixture(scope="session")
def linear_model():
    """A random 3-class linear model on 6x6x1 images with no zero weight differences."""
    k1, k2 = jax.random.split(jax.random.key(42))
    w = jax.random.normal(k1, (36, 3))
    w = w + 0.1 * jnp.sign(w)
    b = 0.1 * jax.random.normal(k2, (3,))
    return linear_logits, (w, b)


@pytest.fixture(scope="session")
def images():
    """Interior images (in [0.3, 0.7]) so small budgets never hit the box."""
    kx, ky = jax.random.split(jax.random.key(7))
    x = jax.random.uniform(kx, (16, 6, 6, 1), minval=0.3, maxval=0.7)
    y = jax.random.randint(ky, (16,), 0, 3)
    return np.asarray(x), np.asarray(y)


def synthetic_record(*, mask, attack_options=None, defense_options=None, model_options=None,
                     **fields):
    """A cell record for a hand-made run directory (tables, checklist and gate tests), built
    through the store's record builder like the sweep's (:func:`bench.sweep.unit.record_of`)."""
    import json

    from bench.store.records import make_record

    def as_json(o):
        return "" if o is None else json.dumps(o, sort_keys=True, default=str)

    base = {"seconds": 0.0, "compile_seconds": 0.0, "seed": 0, "config_id": "", "checkpoint": "",
            "code_version": "", "checkpoint_sha256": ""}
    return make_record({**base, **fields, "attack_options": as_json(attack_options),
                        "defense_options": as_json(defense_options),
                        "model_options": as_json(model_options)}, mask)
