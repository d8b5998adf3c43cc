"""Tests for the models package: shapes, in-model normalisation, BatchNorm modes, errors, pooling."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bench.errors import ConfigError
from bench.sweep.options import fields_of
from bench.sweep.registry import MODELS
from models import init_variables, make_logits_fn, max_pool_2x2


def build_model(name, *, num_classes, mean, std, **options):
    return MODELS.build(name, options, num_classes=num_classes, mean=mean, std=std)


def model_options(name):
    return {k: f.default for k, f in fields_of(MODELS[name], MODELS.exclude).items()}

# Tiny variants so the whole file runs in seconds on two CPU cores.
TINY = {
    "mlp": {"width": 16, "depth": 2},
    "cnn": {"width": 4, "dense": 16},
    "preact-resnet18": {"width": 8, "blocks": (1, 1, 1, 1)},
    "wide-resnet": {"depth": 10, "widen": 1},
    "resnet18": {"width": 4, "blocks": (1, 1, 1, 1)},
    "dm-wide-resnet": {"depth": 10, "widen": 1, "activation": "swish"},
}
BATCHNORM_MODELS = ["preact-resnet18", "wide-resnet", "resnet18", "dm-wide-resnet"]
MEAN3, STD3 = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
NUM_CLASSES = 7


def tiny(name, channels=3, num_classes=NUM_CLASSES, mean=None, std=None):
    return build_model(
        name,
        num_classes=num_classes,
        mean=MEAN3[:channels] if mean is None else mean,
        std=STD3[:channels] if std is None else std,
        **TINY[name],
    )


@functools.cache
def tiny_variables(name, shape):
    """Initialised once per (model, image shape).

    An 'rbg' key because XLA:CPU takes seconds to compile threefry initialisers (about 8x
    longer than rbg), which would dominate this file; the default key is tested separately.
    """
    return init_variables(tiny(name, channels=shape[-1]), jax.random.key(0, impl="rbg"), shape)


def images(key, shape):
    return jax.random.uniform(jax.random.key(key), shape, jnp.float32)


def test_every_registered_model_has_a_tiny_variant():
    assert set(TINY) == set(MODELS)


@pytest.mark.parametrize("name", sorted(TINY))
@pytest.mark.parametrize("shape", [(8, 8, 1), (32, 32, 3)])
def test_output_shape_and_dtype(name, shape):
    model = tiny(name, channels=shape[-1])
    variables = tiny_variables(name, shape)
    assert isinstance(variables, dict) and "params" in variables
    assert ("batch_stats" in variables) == (name in BATCHNORM_MODELS)
    logits = jax.jit(make_logits_fn(model))(variables, images(1, (3,) + shape))
    assert logits.shape == (3, NUM_CLASSES)
    assert logits.dtype == jnp.float32
    assert np.all(np.isfinite(logits))


@pytest.mark.parametrize("name", sorted(TINY))
def test_normalisation_is_inside_the_model(name):
    with_stats = tiny(name)
    plain = tiny(name, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    variables = tiny_variables(name, (32, 32, 3))
    x = images(1, (2, 32, 32, 3))
    expected = jax.jit(make_logits_fn(plain))(variables, (x - jnp.array(MEAN3)) / jnp.array(STD3))
    got = jax.jit(make_logits_fn(with_stats))(variables, x)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(TINY))
def test_input_gradient_is_finite_and_nonzero(name):
    """Attacks differentiate the loss with respect to the [0, 1] input."""
    logits_fn = make_logits_fn(tiny(name, channels=1))
    variables = tiny_variables(name, (8, 8, 1))
    grad = jax.jit(jax.grad(lambda x: logits_fn(variables, x)[:, 0].sum()))(images(1, (2, 8, 8, 1)))
    assert grad.shape == (2, 8, 8, 1)
    assert np.all(np.isfinite(grad)) and np.any(grad != 0)


@pytest.mark.parametrize("name", BATCHNORM_MODELS)
def test_batchnorm_train_updates_stats_and_eval_is_per_example(name):
    model = tiny(name)
    variables = tiny_variables(name, (32, 32, 3))
    train_step = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))
    x = images(1, (4, 32, 32, 3))
    _, updates = train_step(variables, x)
    before = jax.tree.leaves(variables["batch_stats"])
    after = jax.tree.leaves(updates["batch_stats"])
    assert len(before) == len(after)
    assert any(not np.allclose(b, a) for b, a in zip(before, after))

    trained = {"params": variables["params"], "batch_stats": updates["batch_stats"]}
    logits_fn = jax.jit(make_logits_fn(model))
    batch = logits_fn(trained, x)
    np.testing.assert_array_equal(batch, logits_fn(trained, x))  # deterministic
    alone = logits_fn(trained, x[:1])
    np.testing.assert_allclose(alone[0], batch[0], rtol=1e-5, atol=1e-5)
    # Train mode normalises with batch statistics, so there example 0 depends on the others.
    train_batch, _ = train_step(trained, x)
    train_other, _ = train_step(trained, jnp.concatenate([x[:1], images(2, (3, 32, 32, 3))]))
    assert not np.allclose(train_other[0], train_batch[0])


def test_init_variables_is_deterministic_with_the_default_key():
    model = tiny("mlp", channels=1)
    first = init_variables(model, jax.random.key(3), (8, 8, 1))
    again = init_variables(model, jax.random.key(3), (8, 8, 1))
    other = init_variables(model, jax.random.key(4), (8, 8, 1))
    assert type(first) is dict and type(first["params"]) is dict
    jax.tree.map(np.testing.assert_array_equal, first, again)
    assert not np.array_equal(first["params"]["Dense_0"]["kernel"], other["params"]["Dense_0"]["kernel"])


def test_models_without_batchnorm_have_no_batch_stats():
    for name in ("mlp", "cnn"):
        assert set(tiny_variables(name, (8, 8, 1))) == {"params"}


# --- registry ----------------------------------------------------------------------------------


def test_model_options():
    assert model_options("cnn") == {"width": 32, "dense": 128}
    assert model_options("mlp") == {"width": 256, "depth": 2}
    assert model_options("wide-resnet") == {"depth": 28, "widen": 10}
    assert model_options("dm-wide-resnet") == {"depth": 28, "widen": 10, "activation": "relu"}
    assert model_options("resnet18") == {"width": 64, "blocks": (2, 2, 2, 2)}
    assert model_options("preact-resnet18") == {"width": 64, "blocks": (2, 2, 2, 2)}


def test_build_model_sets_fields_and_converts_lists():
    model = build_model("preact-resnet18", num_classes=100, mean=(0.5, 0.5, 0.5), std=(0.25,),
                        width=8, blocks=[1, 2, 1, 1])
    assert model.blocks == (1, 2, 1, 1) and model.width == 8 and model.num_classes == 100
    assert build_model("cnn", num_classes=10, mean=(0,), std=(1,)).width == 32  # defaults kept
    assert build_model("mlp", num_classes=10, mean=(0,), std=(1,), depth=0).depth == 0  # linear model


def test_describe_models_lists_every_model_on_one_line():
    rows = MODELS.describe()
    assert [name for name, _ in rows] == sorted(MODELS)
    for name, text in rows:
        assert "\n" not in text and "num_classes" not in text and "parent" not in text
        for option in model_options(name):
            assert option in text


def test_register_rejects_duplicates():
    with pytest.raises(ValueError, match="registered twice"):
        MODELS.register("cnn", nn.Dense)


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("resnet", {}, "unknown model 'resnet'; choose one of: cnn, dm-wide-resnet, mlp, preact-resnet18, resnet18, wide-resnet"),
        ("cnn", {"widht": 3}, "model 'cnn' has no option 'widht'; options: dense, width"),
        ("cnn", {"width": "a"}, "width = 'a' has the wrong type; expected int"),
        ("cnn", {"width": 3.5}, "width = 3.5 has the wrong type; expected int"),
        ("cnn", {"width": True}, "width = True has the wrong type; expected int"),
        ("cnn", {"dense": 0}, "dense = 0 is impossible; values must be ≥ 1"),
        ("mlp", {"depth": -1}, "depth = -1 is impossible; values must be ≥ 0"),
        ("preact-resnet18", {"blocks": "2222"}, "blocks = '2222' has the wrong type; expected list of int"),
        ("preact-resnet18", {"blocks": [2, 2.0]}, "blocks[1] = 2.0 has the wrong type; expected int"),
        ("preact-resnet18", {"blocks": []}, "blocks = [] is empty"),
        ("preact-resnet18", {"blocks": [2, 0]}, "blocks = (2, 0) is impossible; values must be ≥ 1"),
        ("wide-resnet", {"depth": 27}, "model 'wide-resnet': depth must be 6n + 4 with n >= 1"),
        ("wide-resnet", {"depth": 4}, "model 'wide-resnet': depth must be 6n + 4 with n >= 1"),
    ],
)
def test_config_errors(name, options, message):
    with pytest.raises(ConfigError) as info:
        MODELS.build(name, options, "[[models]] #1")
    text = str(info.value)
    assert message in text and text.startswith("[[models]] #1: ")
    assert "\n" not in text


def test_wide_resnet_depth_checked_on_direct_construction():
    from models import WideResNet

    with pytest.raises(ValueError, match="6n \\+ 4"):
        WideResNet(depth=16 + 1)


def test_channel_count_mismatch_is_a_value_error():
    model = tiny("cnn", channels=3)
    with pytest.raises(ValueError, match="mean has 3 values but the images have 1 channel"):
        init_variables(model, jax.random.key(0), (8, 8, 1))


def test_bad_image_shape_is_a_value_error():
    with pytest.raises(ValueError, match="image shape"):
        init_variables(tiny("mlp"), jax.random.key(0), (8, 8))


# --- max_pool_2x2 ------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (1, 7, 9, 2), (3, 5, 4, 1), (1, 2, 2, 1), (2, 1, 6, 1)])
def test_max_pool_2x2_matches_flax(shape):
    x = jax.random.normal(jax.random.key(0), shape)
    expected = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
    got = max_pool_2x2(x)
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (1, 7, 9, 2)])
def test_max_pool_2x2_gradient_matches_flax_without_ties(shape):
    x = jax.random.normal(jax.random.key(1), shape)  # continuous values: no ties
    weights = jax.random.normal(jax.random.key(2), (shape[0], shape[1] // 2, shape[2] // 2, shape[3]))
    ours = jax.grad(lambda v: jnp.sum(weights * max_pool_2x2(v)))(x)
    theirs = jax.grad(lambda v: jnp.sum(weights * nn.max_pool(v, (2, 2), (2, 2))))(x)
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("strides,padding", [((1, 1), "SAME"), ((2, 2), ((1, 1), (1, 1))),
                                             ((2, 2), "VALID"), ((1, 1), ((0, 2), (1, 0)))])
def test_loop_friendly_conv_matches_lax(strides, padding):
    """models.layers.conv_general_dilated: same outputs and gradients as lax's."""
    from models.layers import conv_general_dilated

    x = jax.random.normal(jax.random.key(0), (2, 9, 9, 3))
    k = jax.random.normal(jax.random.key(1), (3, 3, 3, 5))
    dn = ("NHWC", "HWIO", "NHWC")
    ref = lambda x, k: (jax.lax.conv_general_dilated(x, k, strides, padding, dimension_numbers=dn) ** 2).sum()
    ours = lambda x, k: (conv_general_dilated(x, k, strides, padding, dimension_numbers=dn) ** 2).sum()
    np.testing.assert_allclose(ours(x, k), ref(x, k), rtol=1e-6)
    for a, b in zip(jax.grad(ours, (0, 1))(x, k), jax.grad(ref, (0, 1))(x, k)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(TINY))
def test_forward_mode_autodiff_through_every_model(name):
    """jax.jvp and a Hessian-vector product (forward over reverse) run through the shipped
    models (the loop-friendly convolution is a custom JVP, not a custom VJP), and the JVP
    agrees with reverse mode: tangent_k = ⟨∇f_k(x), v⟩."""
    model = tiny(name, channels=1)
    f = make_logits_fn(model)
    variables = tiny_variables(name, (8, 8, 1))
    x = images(1, (2, 8, 8, 1))
    v = images(2, (2, 8, 8, 1)) - 0.5
    out, tangent = jax.jvp(lambda z: f(variables, z), (x,), (v,))
    for k in range(out.shape[1]):
        grad = jax.grad(lambda z: f(variables, z)[:, k].sum())(x)
        np.testing.assert_allclose(tangent[:, k], jnp.sum(grad * v, axis=(1, 2, 3)),
                                   rtol=1e-4, atol=1e-5)
    hvp = jax.jvp(jax.grad(lambda z: f(variables, z)[:, 0].sum()), (x,), (v,))[1]
    assert hvp.shape == x.shape and np.all(np.isfinite(hvp))


def test_loop_friendly_conv_is_bit_identical_to_flax_conv():
    """models.layers.Conv vs flax.linen.Conv on the same parameters: same logits and input
    gradients, bit for bit, so swapping a user's layers for ours changes no number."""
    x = images(3, (4, 12, 12, 2))
    ours, theirs = models_layers_conv(), nn.Conv(5, (3, 3), padding="SAME")
    params = theirs.init(jax.random.key(0), x)
    f = lambda m: lambda z: jnp.tanh(m.apply(params, z))
    np.testing.assert_array_equal(jax.jit(f(ours))(x), jax.jit(f(theirs))(x))
    g = lambda m: jax.jit(jax.grad(lambda z: f(m)(z).sum()))(x)
    np.testing.assert_array_equal(g(ours), g(theirs))


def models_layers_conv():
    from models.layers import Conv

    return Conv(5, (3, 3), padding="SAME")
