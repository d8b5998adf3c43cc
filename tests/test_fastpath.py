"""attacks.fastpath: any model's logits and input gradients, bit for bit, with fast primitives."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attacks
from attacks import fastpath
from bench.pytorch.speed import UserCNN


def primitives(closed):
    """Names of the primitives a jaxpr binds at top level and inside jit calls (not inside
    custom_jvp/custom_vjp rules, which the fast path keeps as they are)."""
    out = []
    for eqn in closed.jaxpr.eqns:
        out.append(eqn.primitive.name)
        inner = eqn.params.get("jaxpr")
        if eqn.primitive.name in ("pjit", "jit") and inner is not None:
            out += primitives(inner)
    return out


@pytest.fixture(scope="module")
def user_cnn():
    module = UserCNN(features=(8, 16), dense=32)  # plain nn.Conv, nn.max_pool, nn.Dense
    x = jax.random.uniform(jax.random.key(1), (6, 12, 12, 1))
    y = jnp.arange(6) % 10
    params = module.init(jax.random.key(0), x[:1])
    return module.apply, params, x, y


def _grad(f, params, x, y):
    def loss(z):
        logits = f(params, z)
        return -jnp.sum(jax.nn.log_softmax(logits)[jnp.arange(len(y)), y]), logits
    return jax.jit(jax.grad(loss, has_aux=True))(x)


def test_user_cnn_logits_and_input_gradients_bit_identical(user_cnn):
    f, params, x, y = user_cnn
    g_plain, logits_plain = _grad(f, params, x, y)
    g_fast, logits_fast = _grad(fastpath.fast(f), params, x, y)
    np.testing.assert_array_equal(logits_fast, logits_plain)
    np.testing.assert_array_equal(g_fast, g_plain)
    assert np.abs(np.asarray(g_plain)).max() > 0
    # and the slow primitives are gone from what XLA sees
    prims = primitives(jax.make_jaxpr(fastpath.fast(f))(params, x))
    assert "conv_general_dilated" not in prims and "reduce_window_max" not in prims
    assert prims.count("custom_jvp_call") >= 3  # two convs, the pool (and relu's own)


def test_weight_gradients_and_forward_mode_match(user_cnn):
    f, params, x, y = user_cnn
    loss = lambda fn: lambda p: jnp.sum(fn(p, x) ** 2)  # noqa: E731
    gw_plain = jax.jit(jax.grad(loss(f)))(params)
    gw_fast = jax.jit(jax.grad(loss(fastpath.fast(f))))(params)
    for a, b in zip(jax.tree.leaves(gw_plain), jax.tree.leaves(gw_fast)):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    v = jax.random.normal(jax.random.key(2), x.shape)
    _, t_plain = jax.jvp(lambda z: f(params, z), (x,), (v,))
    _, t_fast = jax.jvp(lambda z: fastpath.fast(f)(params, z), (x,), (v,))
    np.testing.assert_allclose(t_fast, t_plain, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("window,strides,padding", [
    ((2, 2), (2, 2), "VALID"), ((3, 3), (2, 2), "SAME"), ((3, 3), (1, 1), "VALID")])
def test_max_pool_with_ties_matches_reduce_window(window, strides, padding):
    """Integer-valued inputs tie often: the tangent must come from the same (first) element
    of each window as XLA's select_and_gather_add, so gradients agree bit for bit."""
    x = jnp.floor(jax.random.uniform(jax.random.key(3), (2, 7, 7, 3)) * 3)
    w = jax.random.normal(jax.random.key(4), nn.max_pool(x, window, strides, padding).shape)
    pool = lambda p, z: nn.max_pool(z, window, strides, padding)  # noqa: E731
    for fn in (pool, fastpath.fast(pool)):
        assert fn is pool or "reduce_window_max" not in primitives(jax.make_jaxpr(fn)(None, x))
    out_plain, g_plain = jax.jit(jax.value_and_grad(lambda z: jnp.sum(w * pool(None, z))))(x)
    out_fast, g_fast = jax.jit(jax.value_and_grad(
        lambda z: jnp.sum(w * fastpath.fast(pool)(None, z))))(x)
    np.testing.assert_array_equal(out_fast, out_plain)
    if strides == window or padding == "VALID" and strides == (1, 1):
        np.testing.assert_array_equal(g_fast, g_plain)
    else:  # overlapping windows: a sum of cotangents in another order
        np.testing.assert_allclose(g_fast, g_plain, rtol=1e-6, atol=1e-6)


def test_jit_inside_the_model_and_opt_out():
    @jax.jit
    def block(w, z):
        return jax.lax.conv_general_dilated(z, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

    f = lambda p, z: jnp.sum(block(p, z), axis=(1, 2))  # noqa: E731
    assert "conv_general_dilated" not in primitives(jax.make_jaxpr(fastpath.fast(f))(
        jnp.ones((3, 3, 1, 4)), jnp.ones((1, 5, 5, 1))))
    f.fast = False
    assert fastpath.fast(f) is f
    box = {"w": jnp.ones((4, 2))}  # weights captured by closure and replaced later
    h = fastpath.fast(lambda p, z: z @ box["w"])
    assert float(h(None, jnp.ones((1, 4)))[0, 0]) == 4.0
    box["w"] = 2 * box["w"]
    assert float(h(None, jnp.ones((1, 4)))[0, 0]) == 8.0
    g = lambda p, z, k: p * z  # noqa: E731
    g.random = True
    fg = fastpath.fast(g)
    assert fg.random and fastpath.fast(fg) is fg and fastpath.fast(g) is fg


def test_pgd_on_a_plain_module_equals_the_plain_program(user_cnn):
    """The kernels apply the fast path themselves; opted out (fast = False), the adversarial
    examples are the same bits, rolled loop included."""
    f, params, x, y = user_cnn
    plain = lambda p, z: f(p, z)  # noqa: E731
    plain.fast = False
    attack = attacks.PGD(steps=3, unroll=1)
    run = lambda fn: jax.jit(lambda p, z, t: attack(fn, p, z, t, 0.1, jax.random.key(5)))  # noqa: E731
    np.testing.assert_array_equal(run(f)(params, x, y), run(plain)(params, x, y))


def test_nnx_model_bit_identical():
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
            self.dense = nnx.Linear(4 * 4 * 4, 10, rngs=rngs)

        def __call__(self, x):
            x = nnx.max_pool(nnx.relu(self.conv(x)), (2, 2), (2, 2))
            return self.dense(x.reshape(x.shape[0], -1))

    graphdef, state = nnx.split(Net(nnx.Rngs(0)))
    f = lambda s, z: nnx.merge(graphdef, s)(z)  # noqa: E731
    x = jax.random.uniform(jax.random.key(6), (3, 8, 8, 1))
    y = jnp.array([1, 2, 3])
    g_plain, l_plain = _grad(f, state, x, y)
    g_fast, l_fast = _grad(fastpath.fast(f), state, x, y)
    np.testing.assert_array_equal(l_fast, l_plain)
    np.testing.assert_array_equal(g_fast, g_plain)
