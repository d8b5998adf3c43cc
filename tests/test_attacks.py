"""Attack kernels against hand-computed answers and invariants."""

import dataclasses
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attacks
from attacks import base, corruption, losses, threat
from bench.errors import ConfigError
from bench.sweep import engine
from bench.sweep.registry import ATTACKS

NORMS = attacks.NORMS
SEVERITY = corruption.SEVERITY_NORM


FAST = {"steps": 3, "queries": 30}
"""Option values that make every registered attack cheap enough for the invariant tests."""


def _instance(cls, norm):
    """A fast instance of a registered attack class for ``norm`` (ValueError if unsupported).
    A transfer attack crafts with PGD (on whatever model it is given: here, white-box); a
    trainable attack (AdvGAN) is bound to an untrained generator, whose outputs must keep
    every invariant all the same."""
    if cls is attacks.Transfer:
        return cls.of(attacks.PGD(norm=norm, steps=FAST["steps"]))
    fields = {f.name for f in dataclasses.fields(cls)}
    attack = cls(norm=norm, **{k: v for k, v in FAST.items() if k in fields})
    if getattr(cls, "trainable", False):
        attack = attack.bind(attack.init(jax.random.key(0), jnp.zeros((1, 6, 6, 1))))
    return attack


def all_attacks():
    """One small instance of every registered attack for every norm it supports (fast settings)."""
    out = []
    for name, cls in sorted(ATTACKS.items()):
        supported = 0
        for norm in (*NORMS, SEVERITY):  # a corruption's only threat model is its severity
            try:
                attack = _instance(cls, norm)
            except ValueError:
                continue  # e.g. APGD and Square define no L1 version
            supported += 1
            out.append(pytest.param(attack, id=f"{name}-{norm}"))
        assert supported, f"{name} supports no norm"
    return out


@pytest.fixture(scope="module")
def linear_model4():
    """A random 4-class linear model on 6x6x1 images (APGD-T's targeted DLR needs 4 classes)."""
    from tests.conftest import linear_logits

    w = jax.random.normal(jax.random.key(43), (36, 4))
    return linear_logits, (w + 0.1 * jnp.sign(w), 0.1 * jax.random.normal(jax.random.key(44), (4,)))


@pytest.mark.parametrize("attack", all_attacks())
def test_inside_ball_and_box(attack, linear_model4):
    """Every attack, every norm: outputs inside the ε-ball and [0, 1] for scalar-like and
    per-example budgets (one compile: ε is a traced per-example array), x itself at ε = 0.
    A corruption (``base.ModelBlind``) has no ball: its ε is a severity (rounded, 0..5), so
    it is held to the box and to x at severity 0 (ε 0, 0.01, 0.1)."""
    f, params = linear_model4
    x = jax.random.uniform(jax.random.key(1), (32, 6, 6, 1))  # touches the box edges
    y = jax.random.randint(jax.random.key(2), (32,), 0, 3)
    run = jax.jit(lambda x, e: attack(f, params, x, y, e, jax.random.key(3)))
    per_example = np.tile(np.array([0.0, 0.01, 0.1, 1.0], np.float32), 8)
    for eps in [np.full(32, e, np.float32) for e in (0.0, 0.05, 0.5, 3.0)] + [per_example]:
        x_adv = run(x, eps)
        blind = isinstance(attack, base.ModelBlind)
        if not blind:
            dist = np.asarray(threat.distance(x_adv, x, attack.norm))
            assert np.all(dist <= eps * (1 + 1e-6) + 1e-6), (eps, dist.max())
        assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
        zero = np.round(eps) == 0 if blind else eps == 0
        np.testing.assert_allclose(np.asarray(x_adv)[zero], np.asarray(x)[zero], atol=1e-7)


def one_norm_each():
    """The first of :func:`all_attacks` for every registered attack (the entry points do not
    depend on the norm)."""
    seen, out = set(), []
    for param in all_attacks():
        name = param.id.rsplit("-", 1)[0]
        if name not in seen:
            seen.add(name)
            out.append(param)
    return out


@pytest.mark.parametrize("attack", one_norm_each())
def test_python_calls_reuse_one_compiled_program(attack, linear_model4, caplog):
    """Called from Python with concrete arrays, every attack compiles once per shape (the
    next batch compiles nothing: run eagerly, JAX would compile the attack's loop anew at
    every call) and returns what it returns inside jit."""
    f, params = linear_model4
    x1, x2 = jax.random.uniform(jax.random.key(1), (2, 8, 6, 6, 1))
    y = jax.random.randint(jax.random.key(2), (8,), 0, 4)
    eps, key = np.float32(0.1), jax.random.key(3)
    attack(f, params, x1, y, eps, key)
    with jax.log_compiles(), caplog.at_level(logging.DEBUG):
        x_adv = attack(f, params, x2, y, eps, key)
    compiles = [r.getMessage() for r in caplog.records if "ompil" in r.getMessage()]
    assert not compiles, compiles[:3]
    inside = jax.jit(lambda *a: attack(f, *a))(params, x2, y, eps, key)
    # Equal up to float32 rounding: XLA fuses the two programs differently (1-ulp changes).
    np.testing.assert_allclose(np.asarray(x_adv), np.asarray(inside), rtol=0, atol=1e-6)


def test_fgsm_linf_closed_form(linear_model, images):
    """On a linear model the CE gradient is Wᵀ(softmax − onehot): FGSM moves every pixel by
    exactly ε along sign(Wᵀ(p − e_y)), which we compute by hand."""
    f, (w, b) = linear_model
    x, y = images
    eps = 0.05
    x_adv = attacks.FGSM(norm="linf")(f, (w, b), jnp.asarray(x), jnp.asarray(y), eps, jax.random.key(0))
    p = jax.nn.softmax(x.reshape(16, -1) @ w + b)
    g = (p - jax.nn.one_hot(y, 3)) @ w.T
    expected = np.clip(x + eps * np.sign(np.asarray(g)).reshape(x.shape), 0, 1)
    np.testing.assert_allclose(np.asarray(x_adv), expected, atol=1e-6)
    np.testing.assert_allclose(np.abs(np.asarray(x_adv) - x).max(axis=(1, 2, 3)), eps, rtol=1e-5)


def test_fgsm_l2_closed_form_two_classes(images):
    """Two classes: the gradient points along ±(w₁ − w₀), so L2 FGSM lands exactly at
    x + ε (w_other − w_y)/‖w_other − w_y‖."""
    x, _ = images
    w = jax.random.normal(jax.random.key(5), (36, 2))
    b = jnp.zeros(2)
    y = jnp.asarray(np.arange(16) % 2, jnp.int32)
    eps = 0.2
    f = lambda p, z: z.reshape(z.shape[0], -1) @ p[0] + p[1]
    x_adv = attacks.FGSM(norm="l2")(f, (w, b), jnp.asarray(x), y, eps, jax.random.key(0))
    d = np.asarray(w[:, 1] - w[:, 0])
    direction = np.where(np.asarray(y)[:, None] == 0, d, -d) / np.linalg.norm(d)
    expected = x.reshape(16, -1) + eps * direction
    np.testing.assert_allclose(np.asarray(x_adv).reshape(16, -1), expected, atol=1e-5)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_finds_closed_form_minimal_distance(norm):
    """For f(x) = w·(x − c) the minimal ‖δ‖ that flips the sign is |f(x)| / ‖w‖_dual (when the
    box does not bind): PGD must succeed just above it and cannot succeed below it."""
    w = jax.random.normal(jax.random.key(11), (36,))
    x = 0.5 + 0.02 * np.asarray(jax.random.normal(jax.random.key(12), (16, 6, 6, 1)))
    f = lambda p, z: jnp.stack([jnp.zeros(z.shape[0]), (z.reshape(z.shape[0], -1) - 0.5) @ p], -1)
    fx = (x.reshape(16, -1) - 0.5) @ np.asarray(w)
    y = jnp.asarray((fx > 0).astype(np.int32))
    dmin = np.abs(fx) / np.linalg.norm(np.asarray(w), ord={"linf": 1, "l2": 2}[norm])
    assert np.abs(x - 0.5).max() + dmin.max() < 0.5  # the box [0, 1] never binds
    pgd = attacks.PGD(norm=norm, steps=30, rel_step_size=0.1, loss="margin")
    above = pgd(f, w, jnp.asarray(x), y, jnp.asarray(dmin * 1.02), jax.random.key(0))
    below = pgd(f, w, jnp.asarray(x), y, jnp.asarray(dmin * 0.98), jax.random.key(0))
    assert np.all(np.argmax(f(w, above), -1) != np.asarray(y))
    assert np.all(np.argmax(f(w, below), -1) == np.asarray(y))


def test_targeted_pgd_reaches_target(linear_model, images):
    f, params = linear_model
    x, y = images
    target = (jnp.asarray(y) + 1) % 3
    x_adv = attacks.PGD(steps=20, targeted=True)(f, params, jnp.asarray(x), jnp.asarray(y), 1.0,
                                                 jax.random.key(0), target=target)
    np.testing.assert_array_equal(np.argmax(f(params, x_adv), -1), target)


def test_pick_targets_differ_from_labels():
    y = jnp.arange(100) % 10
    logits = jax.random.normal(jax.random.key(0), (100, 10))
    t = losses.pick_targets(logits, y, jax.random.key(1), "random")
    assert np.all(np.asarray(t) != np.asarray(y))
    ll = losses.pick_targets(logits, y, jax.random.key(1), "least-likely")
    masked = np.where(np.eye(10)[np.asarray(y)] == 1, np.inf, np.asarray(logits))
    np.testing.assert_array_equal(ll, masked.argmin(1))


def test_losses_hand_computed():
    logits = jnp.array([[2.0, 1.0, -1.0], [0.0, 3.0, 1.0]])
    y = jnp.array([0, 2])
    np.testing.assert_allclose(losses.margin(logits, y), [1.0 - 2.0, 3.0 - 1.0])
    lse = np.log(np.exp([2.0, 1.0, -1.0]).sum())
    np.testing.assert_allclose(losses.cross_entropy(logits, y)[0], lse - 2.0, rtol=1e-6)
    np.testing.assert_allclose(losses.objective(logits, y, "margin", targeted=True), [1.0, -2.0])


def test_l1_projection_hand_computed():
    d = jnp.array([[3.0, 1.0], [1.0, 1.0], [0.2, -0.3]])
    out = threat._project_l1_ball(d, jnp.array([[2.0], [1.0], [1.0]]))
    np.testing.assert_allclose(out, [[2.0, 0.0], [0.5, 0.5], [0.2, -0.3]], atol=1e-6)


def test_steepest_directions_have_unit_norm():
    g = jax.random.normal(jax.random.key(0), (5, 6, 6, 1))
    for norm in NORMS:
        d = threat.steepest_direction(g, norm)
        np.testing.assert_allclose(threat.distance(d, jnp.zeros_like(d), norm), 1.0, rtol=1e-5)
        # Ascent: the direction has a positive inner product with the gradient.
        assert np.all(np.sum(np.asarray(d * g), axis=(1, 2, 3)) > 0)


def test_eps_zero_equals_clean_and_accuracy_falls_with_eps(trained_mlp, digits):
    """Every registered attack through the engine: ε = 0 gives exactly the clean mask, and
    robust accuracy never rises with ε (one compiled call per attack; L∞, every attack has
    it; every norm's ball and box are held by test_inside_ball_and_box). Corruptions have no
    L∞ form and no reason to be monotone: tests/test_corruption.py checks their severity 0."""
    f, params = trained_mlp
    x, y = digits.x_test[:32], digits.y_test[:32]
    clean = engine.clean_correct(f, params, x, y)
    eps = [0.0, 0.05, 0.1, 0.3]
    for attack in [a.values[0] for a in all_attacks() if a.values[0].norm == "linf"]:
        # Batch 8: AutoAttack's cascade buckets all have one shape (one compile per stage).
        masks, _, _ = engine.attack_correct(attack, f, params, x, y, eps, jax.random.key(0), 8)
        np.testing.assert_array_equal(masks[0], clean, err_msg=repr(attack))
        acc = masks.mean(1)
        assert np.all(acc[1:] <= acc[:-1]), (attack, acc)


def test_pgd_at_least_as_strong_as_fgsm(trained_mlp, digits):
    f, params = trained_mlp
    x, y = digits.x_test[:200], digits.y_test[:200]
    eps = [0.05, 0.1, 0.2]
    fgsm, _, _ = engine.attack_correct(attacks.FGSM(), f, params, x, y, eps, jax.random.key(0))
    pgd, _, _ = engine.attack_correct(attacks.PGD(steps=10), f, params, x, y, eps, jax.random.key(0))
    clean = engine.clean_correct(f, params, x, y).mean()
    assert clean > 0.9
    assert np.all(pgd.mean(1) <= fgsm.mean(1)), (pgd.mean(1), fgsm.mean(1))
    assert pgd.mean(1)[-1] < clean - 0.3  # the attack actually bites


def test_results_do_not_depend_on_batch_size(trained_mlp, digits):
    f, params = trained_mlp
    x, y = digits.x_test[:60], digits.y_test[:60]
    attack = attacks.PGD(steps=3, restarts=2)
    a, _, _ = engine.attack_correct(attack, f, params, x, y, [0.1, 0.2], jax.random.key(1), 60)
    b, _, _ = engine.attack_correct(attack, f, params, x, y, [0.1, 0.2], jax.random.key(1), 7)
    np.testing.assert_array_equal(a, b)


def test_restarts_are_never_weaker_per_example(linear_model):
    """The best of restarts keeps, per example, any restart that succeeds: with restarts
    whose first key equals a single run's, the result is at least as strong everywhere."""
    f, params = linear_model
    x = jax.random.uniform(jax.random.key(1), (64, 6, 6, 1))
    y = jnp.argmax(f(params, x), -1)
    one = attacks.PGD(steps=2, restarts=1)
    many = attacks.PGD(steps=2, restarts=4)
    fooled = lambda a: np.asarray(jnp.argmax(f(params, a(f, params, x, y, 0.02, jax.random.key(0))), -1) != y)
    assert fooled(many).sum() >= fooled(one).sum()


def test_nan_logits_are_an_error(digits):
    f = lambda p, x: jnp.full((x.shape[0], 10), jnp.nan)
    from bench.errors import RobustaxError

    with pytest.raises(RobustaxError, match="NaN"):
        engine.clean_correct(f, None, digits.x_test[:4], digits.y_test[:4])


@pytest.mark.parametrize("name,options,match", [
    ("pgd", {"stepz": 3}, "has no option 'stepz'; options: .*steps"),
    ("pgd", {"steps": "3"}, "steps = '3' has the wrong type; expected int"),
    ("pgd", {"steps": 0}, "steps = 0 is impossible"),
    ("pgd", {"norm": "l3"}, "norm = 'l3' is not allowed; choose one of: linf, l2, l1"),
    ("fgsm", {"loss": "hinge"}, "loss = 'hinge' is not allowed"),
    ("fgsm", {"start_frac": 1.0}, "start_frac = 1.0 is impossible; it must be in \\[0, 1\\)"),
    ("pgdd", {}, "unknown attack 'pgdd'; choose one of: .*apgd-ce, apgd-dlr, apgd-t, autoattack, .*fab, fgsm, noise, pgd"),
])
def test_attack_option_errors(name, options, match):
    with pytest.raises(ConfigError, match="^\\[\\[attacks\\]\\] #2: .*" + match) as e:
        ATTACKS.build(name, options, "[[attacks]] #2")
    assert "\n" not in str(e.value)


def test_library_raises_plain_value_errors():
    """Constructed from Python, the library's own error names the option (no bench types)."""
    with pytest.raises(ValueError, match="steps = 0 is impossible") as e:
        attacks.PGD(steps=0)
    assert type(e.value) is ValueError


def test_engine_rejects_examples_outside_the_ball(trained_mlp, digits):
    """The engine's run-time check: an attack that leaves its ε-ball is an error, not a number."""
    from bench.errors import RobustaxError

    @dataclasses.dataclass(frozen=True)
    class Overshoot:
        norm: str = "linf"

        def __call__(self, logits_fn, params, x, y, eps, key, target=None):
            return jnp.clip(x + 2 * eps, 0.0, 1.0)

    f, params = trained_mlp
    with pytest.raises(RobustaxError, match="outside the ε-ball or \\[0, 1\\]"):
        engine.attack_correct(Overshoot(), f, params, digits.x_test[:8], digits.y_test[:8],
                              [0.1], jax.random.key(0))


# --- float32 numerics of the losses (renovation §3) ------------------------------------------


def _confident_logits(seed, gaps):
    """Logits whose true class leads every other by at least ``gaps`` (20–40), float32."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(len(gaps), 10)).astype(np.float32)
    y = rng.integers(0, 10, len(gaps))
    z[np.arange(len(gaps)), y] = z.max(1) + np.asarray(gaps, np.float32)
    return z, y


def _reference_grad(z, y, loss):
    """The float64 gradient with respect to the logits, formed without cancellation."""
    z = z.astype(np.float64)
    g = np.zeros_like(z)
    for i, (row, t) in enumerate(zip(z, y)):
        others = np.delete(np.arange(len(row)), t)
        if loss == "ce":  # d/dz_j = p_j (j ≠ y), d/dz_y = −Σ_{j≠y} p_j
            p = np.exp(row - (row.max() + np.log(np.exp(row - row.max()).sum())))
            g[i, others] = p[others]
            g[i, t] = -p[others].sum()
        elif loss == "margin":
            j = others[np.argmax(row[others])]
            g[i, j], g[i, t] = 1.0, -1.0
        elif loss == "dlr":
            order = np.argsort(-row)
            j = others[np.argmax(row[others])]
            denom = row[order[0]] - row[order[2]]
            num = row[j] - row[t]
            g[i, j] += 1 / denom
            g[i, t] -= 1 / denom
            g[i, order[0]] -= num / denom**2
            g[i, order[2]] += num / denom**2
    return g


@pytest.mark.parametrize("loss", losses.LOSSES)
def test_loss_gradients_agree_with_float64_on_confident_inputs(loss):
    """Through a linear model x ↦ Wx the input gradient is Wᵀ g: in float32 it must have the
    sign of the float64 one wherever that is not negligible, for logit gaps of 20–40 (the
    textbook cross-entropy fails this: its true-class entry rounds to 0)."""
    gaps = np.linspace(20, 40, 32)
    z, y = _confident_logits(0, gaps)
    w = np.random.default_rng(1).normal(size=(10, 50)).astype(np.float32)
    g32 = jax.grad(lambda v: jnp.sum(losses._LOSS_FNS[loss](v, jnp.asarray(y))))(jnp.asarray(z))
    g64 = _reference_grad(z, y, loss)
    x32, x64 = np.asarray(g32, np.float64) @ w, g64 @ w.astype(np.float64)
    big = np.abs(x64) > 1e-3 * np.abs(x64).max(axis=1, keepdims=True)
    assert np.all(np.sign(x32[big]) == np.sign(x64[big]))
    cos = (x32 * x64).sum(1) / np.linalg.norm(x32, axis=1) / np.linalg.norm(x64, axis=1)
    assert cos.min() > 0.999, cos.min()


def test_textbook_cross_entropy_fails_the_same_check():
    """The guard above is meaningful: optax's cross-entropy loses the true-class term."""
    import optax

    z, y = _confident_logits(0, np.full(8, 30.0))
    g = jax.grad(lambda v: optax.softmax_cross_entropy_with_integer_labels(v, jnp.asarray(y)).sum())(
        jnp.asarray(z))
    assert np.all(np.asarray(g)[np.arange(8), y] == 0.0)


def _dlr_plateau_logits(n):
    """Random logits and labels ranked third: DLR is exactly 1 on a neighbourhood of each."""
    z = 3.0 * jax.random.normal(jax.random.key(0), (n, 10))
    return z, jnp.argsort(-z, axis=-1)[:, 2]


def test_dlr_gradient_is_exactly_zero_on_its_plateau():
    """With the label third, DLR = (z_π1 − z_π3)/(z_π1 − z_π3) = 1 around the point: the
    gradient must be exactly zero, batched and per example (vmap), not rounding noise whose
    sign a signed step would follow (tests/test_apgd.py's batch independence failed on it)."""
    z, y = _dlr_plateau_logits(1000)
    assert np.all(np.asarray(jax.jit(losses.dlr)(z, y)) == 1.0)
    g = jax.jit(jax.grad(lambda v: jnp.sum(losses.dlr(v, y))))(z)
    g_one = jax.jit(jax.vmap(jax.grad(lambda v, t: losses.dlr(v[None], t[None])[0])))(z, y)
    assert not np.any(np.asarray(g)) and not np.any(np.asarray(g_one))


def test_textbook_dlr_quotient_fails_the_same_check():
    """The check above is meaningful: lax.div's quotient rule (1/D − N/D² per logit) leaves
    rounding noise on the plateau (363 of 1,000 points non-zero when measured)."""
    z, y = _dlr_plateau_logits(1000)

    def textbook(v):
        z_y, others, _ = losses._true_and_others(v, y)
        top = jax.lax.top_k(v, 3)[0]
        return jnp.sum((jnp.max(others, axis=-1) - z_y) / (top[:, 0] - top[:, 2] + 1e-12))

    assert np.any(np.asarray(jax.jit(jax.grad(textbook))(z)))


@pytest.mark.parametrize("cls", [attacks.FGSM, attacks.PGD])
def test_signed_dlr_step_on_its_plateau_does_not_move(cls, linear_model, images):
    """End to end: FGSM and PGD on DLR leave examples whose label the model ranks third where
    they are (zero gradient, sign 0), whatever the instruction set or batching."""
    f, params = linear_model
    x, _ = images
    y = jnp.argsort(-f(params, jnp.asarray(x)), axis=-1)[:, 2]
    attack = cls(loss="dlr") if cls is attacks.FGSM else cls(loss="dlr", steps=3, random_start=False)
    x_adv = attack(f, params, jnp.asarray(x), y, 0.01, jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(x_adv), x)


def test_fgsm_on_a_confident_linear_model_matches_float64(images):
    """End to end: FGSM's step on a confidently classifying linear model is the sign of the
    float64 gradient."""
    x, _ = images
    w = np.asarray(jax.random.normal(jax.random.key(5), (36, 4)))
    f = lambda p, z: z.reshape(z.shape[0], -1) @ p
    z = np.asarray(f(w, x), np.float64)
    top2 = np.sort(z, 1)[:, -2:]
    w = w * (30.0 / np.median(top2[:, 1] - top2[:, 0]))  # median logit gap 30
    z = np.asarray(f(w, x), np.float64)
    y = z.argmax(1)
    gaps = np.diff(np.sort(z, 1)[:, -2:], axis=1)[:, 0]
    assert np.median(gaps) > 20 and np.mean(gaps < 60) > 0.75
    eps = 0.01
    x_adv = attacks.FGSM()(f, jnp.asarray(w), jnp.asarray(x), jnp.asarray(y), eps, jax.random.key(0))
    expected = np.clip(x + eps * np.sign(_reference_grad(z, y, "ce") @ w.T).reshape(x.shape), 0, 1)
    np.testing.assert_allclose(np.asarray(x_adv), expected, atol=1e-6)


def test_l2_direction_survives_tiny_gradients():
    g = jax.random.normal(jax.random.key(0), (3, 6, 6, 1)) * 1e-30
    d = threat.steepest_direction(g, "l2")
    np.testing.assert_allclose(threat.distance(d, jnp.zeros_like(d), "l2"), 1.0, rtol=1e-5)


# --- best restart and best iterate, per example (renovation §4) -------------------------------


def _tanh_net():
    k1, k2 = jax.random.split(jax.random.key(21))
    params = (jax.random.normal(k1, (36, 16)) * 0.8, jax.random.normal(k2, (16, 5)) * 1.5)
    return lambda p, z: jnp.tanh(z.reshape(z.shape[0], -1) @ p[0]) @ p[1], params


def test_best_over_restarts_picks_the_best_per_example():
    xs = jnp.arange(3 * 4, dtype=jnp.float32).reshape(3, 4, 1)
    scores = jnp.array([[1.0, 5.0, -2.0, 0.0], [3.0, 4.0, jnp.inf, 0.0], [2.0, 6.0, 1.0, 0.5]])
    got = attacks.base.best_over_restarts(xs, scores)
    np.testing.assert_array_equal(np.asarray(got)[:, 0], np.asarray(xs)[[1, 2, 1, 2], [0, 1, 2, 3], 0])


def test_pgd_restarts_keep_every_success_per_example():
    """Per example: PGD with R restarts fools the model whenever any of its R runs (the same
    keys, run one by one) does, and otherwise returns the highest-objective run."""
    f, params = _tanh_net()
    x = jax.random.uniform(jax.random.key(1), (48, 6, 6, 1))
    y = jnp.argmax(f(params, x), -1)
    pgd = attacks.PGD(steps=3, restarts=4, rel_step_size=0.5)
    key = jax.random.key(0)
    x_adv = pgd(f, params, x, y, 0.03, key)
    keys = jax.random.split(jax.random.split(key)[1], 4)
    runs = [pgd._one_run(f, params, x, y, 0.03, k) for k in keys]
    scores = np.stack([np.asarray(r[1]) for r in runs])
    assert np.any(np.isinf(scores).any(0) & ~np.isinf(scores).all(0))  # restarts differ somewhere
    fooled_any = np.isinf(scores).any(0)
    fooled = np.asarray(jnp.argmax(f(params, x_adv), -1) != y)
    np.testing.assert_array_equal(fooled, fooled_any)
    obj = np.asarray(losses.cross_entropy(f(params, x_adv), y))
    best = np.max(np.where(np.isinf(scores), -np.inf, scores), 0)
    np.testing.assert_allclose(obj[~fooled_any], best[~fooled_any], rtol=1e-5)


def test_pgd_returns_the_best_iterate_not_the_last():
    """Per example, PGD's output is the first fooling iterate, else the highest-objective one,
    computed here by an independent Python loop over the same steps (no random start)."""
    f, params = _tanh_net()
    x = jax.random.uniform(jax.random.key(3), (64, 6, 6, 1))
    y = jnp.argmax(f(params, x), -1)
    eps, steps = 0.05, 6
    pgd = attacks.PGD(steps=steps, rel_step_size=1.5, random_start=False)
    x_adv = np.asarray(pgd(f, params, x, y, eps, jax.random.key(0)))
    obj_fn = lambda z: losses.cross_entropy(f(params, z), y)
    z, iterates = x, []
    for _ in range(steps + 1):
        iterates.append(np.asarray(z))
        g = jax.grad(lambda v: obj_fn(v).sum())(z)
        z = threat.project(z + 1.5 * eps * jnp.sign(g), x, eps, "linf")
    objs = np.stack([np.asarray(obj_fn(jnp.asarray(i))) for i in iterates])       # [T, B]
    fools = np.stack([np.asarray(jnp.argmax(f(params, jnp.asarray(i)), -1) != y) for i in iterates])
    assert np.any(objs[-1] < objs.max(0) - 1e-3)  # the last iterate is not always the best
    for b in range(len(x)):
        if fools[:, b].any():
            expected = iterates[int(np.argmax(fools[:, b]))][b]
        else:
            expected = iterates[int(np.argmax(objs[:, b]))][b]
        np.testing.assert_allclose(x_adv[b], expected, atol=1e-6, err_msg=f"example {b}")


def test_robust_requires_correct_at_x_too():
    """x lies in every ball: an attack that moves a misclassified x onto a correct point (a
    blind one on a masked or random defense can) does not make it robust."""
    @dataclasses.dataclass(frozen=True)
    class Brighten:
        norm: str = "linf"

        def __call__(self, logits_fn, params, x, y, eps, key, target=None):
            return jnp.clip(x + eps, 0.0, 1.0)

    f = lambda p, z: jnp.stack([jnp.zeros(z.shape[0]), z.reshape(z.shape[0], -1).mean(1) - 0.5], -1)
    x = np.full((4, 2, 2, 1), 0.45, np.float32)   # mean 0.45 < 0.5: predicted 0
    y = np.ones(4, np.int32)                       # label 1: misclassified clean
    masks, _, _ = engine.attack_correct(Brighten(), f, None, x, y, [0.0, 0.1], jax.random.key(0))
    assert np.all(np.argmax(f(None, x + 0.1), -1) == 1)  # the attack's point is correct ...
    assert not masks.any()                                # ... yet nothing is robust
