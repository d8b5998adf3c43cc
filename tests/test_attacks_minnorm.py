"""C&W and DeepFool: closed-form minimal distances on linear models, the minimum-norm
contract, determinism, and the distance ordering on a small CNN."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attacks import cw as cw_lib
from attacks import deepfool as df_lib
from attacks import threat
from tests.conftest import linear_logits, quadratic_logits

DUAL = {"linf": 1, "l2": 2}


def _linear_problem(norm, classes=5, batch=24, scale=0.03):
    """A linear model whose minimal perturbations stay far from the box, the exact minimal
    distance to each class's boundary d_k = (z_y − z_k)/‖w_y − w_k‖_dual [B, K] (inf at y),
    and d* = min_k d_k."""
    kw, kb, kx = jax.random.split(jax.random.key(11), 3)
    w = scale * jax.random.normal(kw, (36, classes))
    b = 0.1 * jax.random.normal(kb, (classes,))
    x = jax.random.uniform(kx, (batch, 6, 6, 1), minval=0.45, maxval=0.55)
    z = linear_logits((w, b), x)
    y = jnp.argmax(z, -1)
    gap = jnp.take_along_axis(z, y[:, None], 1) - z
    dual = jnp.linalg.norm(w[:, y].T[:, None, :] - w.T[None], ord=DUAL[norm], axis=-1)
    per_class = jnp.where(jnp.arange(classes) == y[:, None], jnp.inf,
                          gap / jnp.where(dual > 0, dual, 1))
    # The box does not bind: every coordinate moves by less than the 0.45 of room it has.
    assert float(per_class.min(1).max()) < 0.4
    return (w, b), x, y, np.asarray(per_class), np.asarray(gap)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_deepfool_is_one_exact_step_on_a_linear_model(norm):
    """Affine model, box not binding: one step to the nearest boundary, scaled by 1 + overshoot,
    along the optimal direction: dist = 1.02·(|f_l| + 1e-4)/‖w_l‖_dual exactly, with l the
    nearest class, and x_adv − x parallel to w_l (L2) or to sign(w_l) (L∞)."""
    params, x, y, per_class, gap = _linear_problem(norm)
    attack = df_lib.DeepFool(norm=norm)
    x_adv, dist = jax.jit(lambda x, y: attack.minimize(linear_logits, params, x, y,
                                                       jax.random.key(0)))(x, y)
    nearest = per_class.argmin(1)
    f_l = gap[np.arange(len(y)), nearest]
    want = (1 + attack.overshoot) * (f_l + 1e-4) / (f_l / per_class.min(1))
    np.testing.assert_allclose(np.asarray(dist), want, rtol=2e-5)
    assert np.all(np.argmax(linear_logits(params, x_adv), -1) != np.asarray(y))
    assert np.all(np.argmax(linear_logits(params, x_adv), -1) == nearest)
    w = np.asarray(params[0])
    w_l = (w[:, nearest] - w[:, np.asarray(y)]).T
    d = np.asarray(x_adv - x).reshape(len(y), -1)
    direction = w_l / np.linalg.norm(w_l, axis=1, keepdims=True) if norm == "l2" else np.sign(w_l)
    np.testing.assert_allclose(d, direction * np.asarray(dist)[:, None], atol=2e-6)


def test_cw_reaches_the_closed_form_distance_on_a_linear_model():
    """C&W on a 5-class linear model (box not binding): never closer than the exact minimal
    distance d*; within 1e-3 of the exact distance to the boundary of the class it crosses;
    and within 1e-3 of d* itself wherever the nearest boundary is that of the runner-up class
    (C&W's hinge on max_{j≠y} z_j descends towards the runner-up; on the rest it may stop at a
    farther boundary, a known property of the method, not of this implementation)."""
    params, x, y, per_class, _ = _linear_problem("l2")
    attack = cw_lib.CW(steps=1000, search_steps=9, lr=0.002)
    x_adv, dist = jax.jit(lambda x, y: attack.minimize(linear_logits, params, x, y,
                                                       jax.random.key(0)))(x, y)
    dist, best = np.asarray(dist), per_class.min(1)
    z = np.asarray(linear_logits(params, x_adv))
    crossed = z.argmax(1)
    assert np.all(crossed != np.asarray(y))
    np.testing.assert_allclose(dist, per_class[np.arange(len(y)), crossed], rtol=1e-3)
    assert np.all(dist >= best * (1 - 1e-4))
    clean = np.asarray(linear_logits(params, x))
    runner_up = np.where(np.arange(5) == np.asarray(y)[:, None], -np.inf, clean).argmax(1)
    easy = runner_up == per_class.argmin(1)
    assert easy.sum() >= 20
    np.testing.assert_allclose(dist[easy], best[easy], rtol=1e-3)


@pytest.fixture(scope="module")
def four_class():
    """A non-linear 4-class model on 6×6 images; the first two examples misclassified."""
    kw, kx = jax.random.split(jax.random.key(5))
    params = (2.0 * jax.random.normal(kw, (36, 4)), jnp.zeros(4))
    x = jax.random.uniform(kx, (10, 6, 6, 1))
    y = jnp.argmax(quadratic_logits(params, x), -1).astype(jnp.int32)
    return params, x, y.at[:2].set((y[:2] + 1) % 4)


ATTACKS = [pytest.param(cw_lib.CW(steps=30, search_steps=3), id="cw"),
           pytest.param(df_lib.DeepFool(norm="l2"), id="deepfool-l2"),
           pytest.param(df_lib.DeepFool(norm="linf", steps=3), id="deepfool-linf")]


@pytest.mark.parametrize("attack", ATTACKS)
def test_minimum_norm_contract(attack, four_class):
    """dist is the norm distance of x_adv (0 where x is misclassified, inf exactly where
    nothing was found, x_adv = x there); the call keeps x_adv exactly where dist ≤ ε; the same
    key gives the same result; batch of 10 = the engine's per-example batches of one."""
    params, x, y = four_class
    key = jax.random.key(3)
    run = jax.jit(lambda x, y, k: attack.minimize(quadratic_logits, params, x, y, k))
    x_adv, dist = run(x, y, key)
    x_adv2, dist2 = run(x, y, key)
    np.testing.assert_array_equal(np.asarray(x_adv), np.asarray(x_adv2))
    np.testing.assert_array_equal(np.asarray(dist), np.asarray(dist2))
    dist = np.asarray(dist)
    assert dist.dtype == np.float32 and np.all(dist[:2] == 0)
    fooled = np.argmax(quadratic_logits(params, x_adv), -1) != np.asarray(y)
    np.testing.assert_array_equal(np.isfinite(dist), fooled)
    assert np.isfinite(dist[2:]).any()
    np.testing.assert_array_equal(np.asarray(x_adv)[~fooled], np.asarray(x)[~fooled])
    np.testing.assert_allclose(dist[fooled], np.asarray(
        threat.distance(x_adv, x, attack.norm))[fooled], rtol=1e-6)
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    call = jax.jit(lambda e: attack(quadratic_logits, params, x, y, e, key))
    for eps in (0.0, float(np.median(dist[np.isfinite(dist) & (dist > 0)])), 1e3):
        out = np.asarray(call(jnp.float32(eps)))
        assert np.all(np.asarray(threat.distance(out, x, attack.norm)) <= eps * (1 + 1e-6))
        if isinstance(attack, df_lib.DeepFool):
            # Exactly the minimal examples within ε, x elsewhere (C&W's Adam trajectories
            # differ in the last bits between two compiled programs, so only the ball there).
            within = (dist <= eps)[:, None, None, None]
            np.testing.assert_allclose(out, np.where(within, np.asarray(x_adv), np.asarray(x)),
                                       atol=1e-6)
    keys = jax.random.split(key, x.shape[0])
    _, d_one = jax.jit(jax.vmap(lambda xi, yi, k: attack.minimize(
        quadratic_logits, params, xi[None], yi[None], k)))(x, y, keys)
    if isinstance(attack, df_lib.DeepFool):  # no randomness: the same per example
        np.testing.assert_allclose(np.asarray(d_one)[:, 0], dist, rtol=1e-5)


def test_options_are_checked():
    for cls, bad in ((cw_lib.CW, dict(norm="linf")), (cw_lib.CW, dict(steps=0)),
                     (cw_lib.CW, dict(search_steps=0)), (cw_lib.CW, dict(lr=0.0)),
                     (cw_lib.CW, dict(confidence=-1.0)), (cw_lib.CW, dict(initial_const=0.0)),
                     (df_lib.DeepFool, dict(norm="l1")), (df_lib.DeepFool, dict(steps=0)),
                     (df_lib.DeepFool, dict(overshoot=-0.1))):
        with pytest.raises(ValueError, match=next(iter(bad))):
            cls(**bad)


def test_cw_confidence_reaches_the_margin(four_class):
    """With κ > 0 every example found has max_{j≠y} z_j − z_y > κ (not just misclassified)."""
    params, x, y = four_class
    attack = cw_lib.CW(steps=60, search_steps=4, confidence=0.5)
    x_adv, dist = attack.minimize(quadratic_logits, params, x[2:], y[2:], jax.random.key(0))
    found = np.isfinite(np.asarray(dist))
    assert found.any()
    from attacks import losses

    margin = np.asarray(losses.margin(quadratic_logits(params, x_adv), y[2:]))
    assert np.all(margin[found] > 0.5)


@pytest.fixture(scope="module")
def small_cnn(digits):
    from defenses import Standard
    from models import CNN, make_logits_fn

    module = CNN(num_classes=10, mean=digits.mean, std=digits.std, width=4, dense=16)
    variables = Standard(epochs=2).train(module, digits, jax.random.key(0))
    return make_logits_fn(module), variables


def test_distance_ordering_on_a_small_cnn(small_cnn, digits, capsys):
    """The literature's ordering of minimal L2 distances on a trained CNN: C&W ≤ DeepFool in
    median (DeepFool's linearisation overshoots, C&W optimises)."""
    from bench.sweep import engine

    f, params = small_cnn
    x, y = digits.x_test[:32], digits.y_test[:32]
    medians = {}
    for name, attack in (("cw", cw_lib.CW()), ("deepfool", df_lib.DeepFool())):
        _, _, _, info = engine.attack_correct(attack, f, params, x, y, [0.0], jax.random.key(0),
                                              batch_size=32, with_info=True)
        d = info["distance"][0]
        assert np.isfinite(d).mean() > 0.9, name
        medians[name] = float(np.median(d[np.isfinite(d) & (d > 0)]))
    with capsys.disabled():
        print("\nmedian L2 on the digits cnn (32 images): "
              + ", ".join(f"{k} {v:.4f}" for k, v in medians.items()))
    assert medians["cw"] <= medians["deepfool"]


def test_cw_eps_zero_through_the_engine_is_clean(four_class):
    """C&W is L2-only, so the every-attack L∞ engine test does not reach it: ε = 0 through the
    engine gives exactly the clean mask, and robust accuracy falls with ε."""
    from bench.sweep import engine

    params, x, y = four_class
    x, y = np.asarray(x), np.asarray(y)
    clean = engine.clean_correct(quadratic_logits, params, x, y)
    masks, _, _ = engine.attack_correct(cw_lib.CW(steps=20, search_steps=2), quadratic_logits, params,
                                        x, y, [0.0, 0.2, 10.0], jax.random.key(0))
    np.testing.assert_array_equal(masks[0], clean)
    assert masks[2].sum() < masks[1].sum() <= clean.sum()


def test_matches_torchattacks_on_identical_weights(capsys):
    """C&W as torchattacks runs it (one Adam run at c = 1, no search, no bisection) and
    DeepFool L2 on a 10-class linear model with identical weights in JAX and torch: per-example
    L2 distances agree where both succeed. The logits are kept positive: torchattacks' C&W
    takes max_{j≠y} over (1 − onehot)·z, which reads 0 for the true class."""
    pytest.importorskip("torchattacks")
    import torch
    import torchattacks

    from bench.pytorch.crosscheck import torch_attack

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        kw, kx = jax.random.split(jax.random.key(21))
        w = 0.3 * jax.random.normal(kw, (64, 10))
        b = jnp.full((10,), 20.0)
        x = jax.random.uniform(kx, (12, 8, 8, 1))
        params = (w, b)
        y = jnp.argmax(linear_logits(params, x), -1).astype(jnp.int32)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
        with torch.no_grad():
            model[1].weight.copy_(torch.tensor(np.asarray(w).T))
            model[1].bias.copy_(torch.tensor(np.asarray(b)))
        xt = torch.tensor(np.asarray(x)).permute(0, 3, 1, 2).contiguous()
        yt = torch.tensor(np.asarray(y), dtype=torch.long)
        out = []
        for attack in (cw_lib.CW(steps=50, search_steps=1, refine=0, lr=0.01),
                       df_lib.DeepFool(norm="l2")):
            name = "cw" if isinstance(attack, cw_lib.CW) else "deepfool"
            ta = torch_attack(name, attack, model, 1.0, 10, 0)
            assert isinstance(ta, (torchattacks.CW, torchattacks.DeepFool))
            adv = ta(xt, yt)
            with torch.no_grad():
                fooled = (model(adv).argmax(1) != yt).numpy()
            ref = np.where(fooled, np.linalg.norm((adv - xt).numpy().reshape(12, -1), axis=1), np.inf)
            _, dist = jax.jit(lambda x, y: attack.minimize(linear_logits, params, x, y,
                                                          jax.random.key(0)))(x, y)
            dist = np.asarray(dist)
            both = np.isfinite(ref) & np.isfinite(dist)
            assert both.sum() >= 8
            rel = np.abs(dist[both] / ref[both] - 1)
            out.append(f"{name} median rel. diff {np.median(rel):.1e} (n={both.sum()})")
            assert np.median(rel) < 1e-3, name
    finally:
        torch.set_num_threads(threads)
    with capsys.disabled():
        print("\nvs torchattacks: " + "; ".join(out))


def test_cw_binary_search_by_hand():
    """c: 1 fails → 10 (no upper bound yet) fails → 100 succeeds → 55 succeeds → 32.5 fails →
    43.75; T, T, F, T, T from 1: 0.5, 0.25, 0.375, 0.3125, 0.28125."""
    const = jnp.array([1.0, 1.0])
    lower, upper = jnp.zeros(2), jnp.full(2, cw_lib._NO_UPPER)
    seen = []
    for found in ([False, True], [False, True], [True, False], [True, True], [False, True]):
        const, lower, upper = cw_lib.search_update(jnp.array(found), const, lower, upper)
        seen.append(np.asarray(const).tolist())
    np.testing.assert_allclose(np.asarray(seen)[:, 0], [10.0, 100.0, 55.0, 32.5, 43.75])
    np.testing.assert_allclose(np.asarray(seen)[:, 1], [0.5, 0.25, 0.375, 0.3125, 0.28125])
