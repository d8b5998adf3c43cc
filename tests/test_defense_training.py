"""Training procedures beyond standard and PGD-AT: FGSM-AT/-RS, TRADES, distillation,
augmentation and label flipping (issue 8). Tiny MLPs on a few hundred 8×8 digits."""

import dataclasses
import textwrap
import tomllib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import attacks
from attacks import threat
from bench.errors import ConfigError
from bench.sweep.config import parse_config
from bench.sweep.registry import DEFENSES
from defenses import (
    FGSMAT,
    FGSMRS,
    PGDAT,
    TRADES,
    Augment,
    Augmentation,
    Distillation,
    LabelFlip,
    Standard,
    TrainSettings,
    fit,
    flip_labels,
)
from defenses.trades import kl_divergence
from models import MLP, init_variables, make_logits_fn

FAST = {"epochs": 2, "batch_size": 64}
TRAINING = sorted(n for n, c in DEFENSES.items() if getattr(c, "kind", "training") == "training")


@pytest.fixture(scope="module")
def data():
    from bench.sweep.data import load_dataset

    return load_dataset("digits", train_examples=256)


@pytest.fixture(scope="module")
def mlp(data):
    return MLP(num_classes=10, mean=data.mean, std=data.std, width=16, depth=1)


@pytest.fixture(scope="module")
def standard_weights(mlp, data):
    return Standard(**FAST).train(mlp, data, jax.random.key(0))


def assert_same(a, b, **tol):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        if tol:
            np.testing.assert_allclose(u, v, **tol)
        else:
            np.testing.assert_array_equal(u, v)


def assert_differ(a, b):
    assert any(not np.allclose(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def interior_batch(n=256, shape=(6, 6, 1), seed=7):
    """Images in [0.3, 0.7] (small budgets never reach the box) and labels of 3 classes."""
    kx, ky = jax.random.split(jax.random.key(seed))
    return (jax.random.uniform(kx, (n,) + shape, minval=0.3, maxval=0.7),
            jax.random.randint(ky, (n,), 0, 3))


# ---------------------------------------------------------------- every training defense

@pytest.mark.parametrize("name", TRAINING)
def test_every_training_defense_is_deterministic_for_its_key(name, mlp, data):
    """Same key → bit-identical weights; finite; not the init."""
    fields = {f.name for f in dataclasses.fields(DEFENSES[name])}
    quick = {k: v for k, v in {"steps": 1, "teacher_epochs": 1}.items() if k in fields}
    defense = DEFENSES.build(name, {"epochs": 1, "batch_size": 64} | quick)
    v1 = defense.train(mlp, data, jax.random.key(0))
    v2 = defense.train(mlp, data, jax.random.key(0))
    assert_same(v1, v2)
    assert_differ(v1, init_variables(mlp, jax.random.key(0), data.image_shape))
    assert all(np.all(np.isfinite(a)) for a in jax.tree.leaves(v1))


def test_every_option_is_settable_from_toml():
    """Each new defense from a TOML config with every option off its default."""
    text = textwrap.dedent("""
        [[models]]
        name = "mlp"
        [[defenses]]
        name = "fgsm-at"
        eps = 0.2
        norm = "l2"
        random_start = true
        rel_step_size = 2
        [[defenses]]
        name = "fgsm-rs"
        eps = 0.05
        norm = "l1"
        rel_step_size = 1.5
        random_start = false
        [[defenses]]
        name = "trades"
        eps = 0.3
        norm = "l1"
        steps = 4
        rel_step_size = 0.5
        beta = 1
        init_std = 0.01
        [[defenses]]
        name = "distillation"
        temperature = 20
        teacher_epochs = 3
        [[defenses]]
        name = "augment"
        noise_std = 0.05
        crop_pad = 4
        hflip = true
        [[defenses]]
        name = "label-flip"
        fraction = 0.4
        mapping = "pair"
        source = 3
        target = 8
        poison_seed = 5
        [[defenses]]
        name = "pgd-at"
        label = "pgd-at+aug"
        crop_pad = 1
        hflip = true
        noise_std = 0.02
        [[attacks]]
        name = "fgsm"
        eps = [0.1]
    """)
    raw = tomllib.loads(text)
    cfg = parse_config(tomllib.loads(text))
    assert [d.name for d in cfg.defenses] == [e["name"] for e in raw["defenses"]]
    base = {f.name for f in dataclasses.fields(TrainSettings)}
    for entry, d in zip(raw["defenses"], cfg.defenses):
        cls = DEFENSES[entry["name"]]
        if cls is not PGDAT:  # every option of the new procedures is in the TOML above
            assert {f.name for f in dataclasses.fields(cls)} - base <= set(entry), entry["name"]
        for key, value in entry.items():
            if key not in ("name", "label"):
                got, default = getattr(d.defense, key), getattr(cls(), key)
                assert got == value and got != default, (entry["name"], key, got)
                assert default is None or type(got) is type(default), (entry["name"], key, got)


BAD_OPTIONS = [
    ("standard", {"noise_std": -0.1}, "noise_std = -0.1 is impossible"),
    ("standard", {"crop_pad": -1}, "crop_pad = -1 is impossible"),
    ("fgsm-at", {"eps": 0.0}, "eps = 0.0 is impossible"),
    # The one budget check (defenses.base.check_budget) of every adversarial procedure:
    ("pgd-at", {"eps": 0.0}, "eps = 0.0 is impossible"),
    ("pgd-at", {"norm": "l3"}, "norm = 'l3' is not allowed"),
    ("pgd-at", {"eps": 1.5}, "eps = 1.5 is beyond the largest meaningful linf budget"),
    ("fgsm-rs", {"eps": 2.0}, "eps = 2.0 is beyond the largest meaningful linf budget"),
    ("trades", {"eps": 1.5}, "eps = 1.5 is beyond the largest meaningful linf budget"),
    ("fgsm-at", {"rel_step_size": 0.0}, "rel_step_size = 0.0 is impossible"),
    ("fgsm-rs", {"norm": "l3"}, "norm = 'l3' is not allowed"),
    ("trades", {"beta": -1.0}, "beta = -1.0 is impossible"),
    ("trades", {"steps": 0}, "steps = 0 is impossible"),
    ("trades", {"eps": -0.1}, "eps = -0.1 is impossible"),
    ("trades", {"rel_step_size": 0.0}, "rel_step_size = 0.0 is impossible"),
    ("trades", {"init_std": -0.001}, "init_std = -0.001 is impossible"),
    ("trades", {"norm": "l0"}, "norm = 'l0' is not allowed"),
    ("distillation", {"temperature": 0.0}, "temperature = 0.0 is impossible"),
    ("distillation", {"teacher_epochs": 0}, "teacher_epochs = 0 is impossible"),
    ("augment", {"noise_std": -1.0}, "noise_std = -1.0 is impossible"),
    ("augment", {"crop_pad": -2}, "crop_pad = -2 is impossible"),
    ("label-flip", {"fraction": 1.5}, r"fraction = 1.5 is impossible; it must be in \[0, 1\]"),
    ("label-flip", {"fraction": -0.1}, "fraction = -0.1 is impossible"),
    ("label-flip", {"mapping": "swap"}, "mapping = 'swap' is not allowed; choose one of: uniform, next, pair"),
    ("label-flip", {"source": 3}, "source = 3 is only used with mapping = 'pair'"),
    ("label-flip", {"mapping": "next", "target": 3}, "target = 3 is only used with mapping = 'pair'"),
    ("label-flip", {"mapping": "pair", "source": 1}, "target is missing"),
    ("label-flip", {"mapping": "pair", "target": 1}, "source is missing"),
    ("label-flip", {"mapping": "pair", "source": 2, "target": 2}, "target = 2 is impossible"),
    ("label-flip", {"mapping": "pair", "source": -1, "target": 2}, "source = -1 is impossible"),
    ("label-flip", {"poison_seed": -1}, "poison_seed = -1 is impossible"),
]


@pytest.mark.parametrize("name,options,message", BAD_OPTIONS)
def test_bad_options_raise_naming_the_option(name, options, message):
    with pytest.raises(ValueError, match=message):  # the library's own error
        DEFENSES[name](**options)
    with pytest.raises(ConfigError, match=rf"\[\[defenses\]\] #1: defense '{name}': {message}"):
        DEFENSES.build(name, options, "[[defenses]] #1")


def test_wrong_option_types_are_config_errors():
    with pytest.raises(ConfigError, match="beta = '6' has the wrong type; expected float"):
        DEFENSES.build("trades", {"beta": "6"})
    with pytest.raises(ConfigError, match="hflip = 1 has the wrong type; expected bool"):
        DEFENSES.build("augment", {"hflip": 1})
    with pytest.raises(ConfigError, match="source = 1.5 has the wrong type; expected int"):
        DEFENSES.build("label-flip", {"mapping": "pair", "source": 1.5, "target": 2})


# ---------------------------------------------------------------- FGSM-AT / FGSM-RS

@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fgsm_rs_examples_lie_in_ball_and_box_and_differ_from_fgsm_at(norm, linear_model):
    f, params = linear_model
    x, y = interior_batch()
    eps = 0.1 if norm == "linf" else 0.5
    rs = FGSMRS(eps=eps, norm=norm).perturb(f, params, x, y, jax.random.key(0))
    at = FGSMAT(eps=eps, norm=norm).perturb(f, params, x, y, jax.random.key(0))
    for x_adv in (rs, at):
        assert np.all(threat.distance(x_adv, x, norm) <= eps * (1 + 1e-5))
        assert np.all((x_adv >= 0) & (x_adv <= 1))
    assert np.all(np.any(np.abs(np.asarray(rs - at)) > 1e-6, axis=(1, 2, 3)))  # every example
    # with a start in the box's corner, the box clips too
    corner = jnp.zeros_like(x)
    rs0 = FGSMRS(eps=eps, norm=norm).perturb(f, params, corner, y, jax.random.key(0))
    assert np.all((rs0 >= 0) & (rs0 <= 1)) and np.all(threat.distance(rs0, corner, norm) <= eps * (1 + 1e-5))


def test_fgsm_rs_steps_1_25_eps_from_a_uniform_start(linear_model):
    """L∞, away from the box: the start u ~ U(−ε, ε) moves by 1.25 ε·sign(g) and is clipped to
    the ball, so a coordinate ends on the ball's face with probability 0.625 (0.5 for a step
    of ε, 1 without the random start), and its start is recovered where it is not."""
    f, params = linear_model
    x, y = interior_batch(512)
    eps = 0.1
    rs = np.asarray(FGSMRS(eps=eps).perturb(f, params, x, y, jax.random.key(3)))
    d = np.abs(rs - np.asarray(x))
    on_face = np.isclose(d, eps, atol=1e-6).mean()
    assert abs(on_face - 0.625) < 0.02, on_face
    start = np.asarray(threat.random_init(jax.random.key(3), x, eps, "linf"))
    moved = rs - start
    inside = ~np.isclose(d, eps, atol=1e-6)
    np.testing.assert_allclose(np.abs(moved[inside]), 1.25 * eps, atol=1e-5)


def test_fgsm_at_is_the_benchmark_fgsm_attack(trained_mlp, digits):
    f, v = trained_mlp
    x, y = jnp.asarray(digits.x_test[:64]), jnp.asarray(digits.y_test[:64])
    mine = FGSMAT(eps=0.1).perturb(f, v, x, y, jax.random.key(0))
    np.testing.assert_array_equal(mine, attacks.FGSM()(f, v, x, y, 0.1, jax.random.key(0)))


# ---------------------------------------------------------------- TRADES

def test_trades_with_beta_zero_is_standard_training(mlp, data, standard_weights):
    """Not bit for bit: XLA fuses the step with the (zero-weighted) KL term differently, which
    moves the last float32 bit of a few weights (measured: at most 5e-10 after 8 steps)."""
    trades = TRADES(beta=0.0, steps=2, **FAST).train(mlp, data, jax.random.key(0))
    assert_same(trades, standard_weights, rtol=1e-5, atol=1e-7)


def test_trades_loss_is_clean_ce_plus_beta_kl_clean_to_adversarial():
    """Hand-computed in float64: CE(f(x), y) + β · mean KL(softmax f(x) ‖ softmax f(x'))."""
    rng = np.random.default_rng(0)
    clean, adv = rng.normal(size=(5, 4)) * 3, rng.normal(size=(5, 4)) * 3
    y = np.array([0, 1, 2, 3, 1])

    def log_softmax(z):
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    lp, lq = log_softmax(clean), log_softmax(adv)
    ce = -lp[np.arange(5), y].mean()
    kl = (np.exp(lp) * (lp - lq)).sum(axis=1).mean()
    identity = lambda z: z  # the "model" returns its input: x is the logits
    got = TRADES(beta=2.5).loss(identity, jnp.asarray(clean, jnp.float32),
                                jnp.asarray(adv, jnp.float32), jnp.asarray(y))
    np.testing.assert_allclose(got, ce + 2.5 * kl, rtol=1e-5)
    assert kl > 0 and abs(kl - (np.exp(lq) * (lq - lp)).sum(axis=1).mean()) > 1e-3  # direction matters


def test_trades_examples_lie_in_ball_and_box_and_raise_the_kl(trained_mlp, digits):
    f, v = trained_mlp
    x, y = jnp.asarray(digits.x_test[:128]), jnp.asarray(digits.y_test[:128])
    trades = TRADES(eps=0.1, steps=5)
    x_adv = trades.perturb(f, v, x, y, jax.random.key(0))
    assert np.all(threat.distance(x_adv, x, "linf") <= 0.1 + 1e-6)
    assert np.all((x_adv >= 0) & (x_adv <= 1))
    kl = lambda z: float(kl_divergence(f(v, x), f(v, z)).mean())
    noise = threat.project(x + 0.001 * jax.random.normal(jax.random.key(0), x.shape), x, 0.1, "linf")
    assert kl(x_adv) > 100 * kl(noise) and kl(x_adv) > 0.1


def test_trades_with_beta_trains_differently(mlp, data, standard_weights):
    trades = TRADES(beta=6.0, steps=2, **FAST).train(mlp, data, jax.random.key(0))
    assert_differ(trades, standard_weights)


# ---------------------------------------------------------------- distillation

def test_distillation_student_at_t1_on_one_hot_labels_is_standard_training(mlp, data, standard_weights):
    one_hot = np.asarray(jax.nn.one_hot(data.y_train, data.num_classes))
    student = Distillation(temperature=1.0, **FAST).train_student(mlp, data.x_train, one_hot,
                                                                  jax.random.key(0))
    assert_same(student, standard_weights, rtol=1e-5, atol=1e-6)


def test_distillation_losses_divide_the_logits_by_t():
    z = jnp.array([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    y = jnp.array([0, 2])
    t = jnp.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    d = Distillation(temperature=4.0)
    identity = lambda a: a
    np.testing.assert_allclose(d.hard_loss(identity, None, z, y),
                               optax.softmax_cross_entropy_with_integer_labels(z / 4, y).mean(), rtol=1e-6)
    np.testing.assert_allclose(d.soft_loss(identity, None, z, t),
                               -(t * jax.nn.log_softmax(z / 4)).sum(axis=1).mean(), rtol=1e-6)


def test_distillation_returns_the_student_of_the_teachers_soft_labels(mlp, data):
    """The pipeline by hand: teacher at T (key split 0), its softmax(logits / T) of the
    training set, the student on those (key split 1) is what ``train`` returns."""
    d = Distillation(temperature=10.0, **FAST)
    got = d.train(mlp, data, jax.random.key(0))
    k_teacher, k_student = jax.random.split(jax.random.key(0))
    teacher = fit(mlp, data.x_train, data.y_train, d, k_teacher, loss=d.hard_loss)
    probs = np.asarray(jax.nn.softmax(make_logits_fn(mlp)(teacher, data.x_train) / 10.0))
    soft = d.soft_labels(mlp, teacher, data.x_train)
    np.testing.assert_allclose(soft, probs, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(soft.sum(axis=1), 1.0, rtol=1e-5)
    assert_same(got, d.train_student(mlp, data.x_train, soft, k_student))
    assert_differ(got, teacher)


def test_distillation_teacher_epochs_default_to_epochs(mlp, data):
    seen = []
    Distillation(temperature=10.0, epochs=2, batch_size=64, teacher_epochs=1).train(
        mlp, data, jax.random.key(0), on_epoch=lambda e, loss: seen.append(e))
    assert seen == [0, 0, 1]
    seen.clear()
    Distillation(temperature=10.0, epochs=1, batch_size=64).train(
        mlp, data, jax.random.key(0), on_epoch=lambda e, loss: seen.append(e))
    assert seen == [0, 0]


# ---------------------------------------------------------------- augmentation

def test_augment_with_every_transform_off_is_standard_training(mlp, data, standard_weights):
    off = Augment(noise_std=0.0, crop_pad=0, hflip=False, **FAST).train(mlp, data, jax.random.key(0))
    assert_same(off, standard_weights)
    assert not Augmentation().active


@pytest.mark.parametrize("option", [{"noise_std": 0.1}, {"crop_pad": 1}, {"hflip": True}])
def test_each_augmentation_changes_training_and_is_a_setting_of_every_procedure(option, mlp, data,
                                                                                 standard_weights):
    aug = Augment(**{"noise_std": 0.0, "crop_pad": 0} | option, **FAST).train(mlp, data, jax.random.key(0))
    assert_differ(aug, standard_weights)
    # The same transforms on the standard procedure are the same training.
    assert_same(aug, Standard(**option, **FAST).train(mlp, data, jax.random.key(0)))


def test_augmentation_comes_before_perturb(mlp, data):
    """With an identity ``perturb`` the training equals augmented standard training, which
    holds only if ``perturb`` receives the augmented batch (and the loss trains on its output)."""
    settings = Augment(**FAST)
    expected = settings.train(mlp, data, jax.random.key(0))
    got = fit(mlp, data.x_train, data.y_train, settings, jax.random.key(0),
              perturb=lambda f, v, x, y, k: x)
    assert_same(got, expected)


def test_pgd_at_composes_with_augmentation(mlp, data):
    plain = PGDAT(steps=1, **FAST).train(mlp, data, jax.random.key(0))
    augmented = PGDAT(steps=1, crop_pad=1, noise_std=0.05, **FAST).train(mlp, data, jax.random.key(0))
    assert_differ(plain, augmented)


def test_random_crop_is_a_zero_filled_shift_of_at_most_pad():
    x = jax.random.uniform(jax.random.key(0), (64, 6, 5, 2), minval=0.1, maxval=1.0)
    out = np.asarray(Augmentation(crop_pad=2)(x, jax.random.key(1)))
    xs = np.asarray(x)
    shifts = set()
    for i in range(len(xs)):
        padded = np.pad(xs[i], ((2, 2), (2, 2), (0, 0)))
        found = [(dy, dx) for dy in range(5) for dx in range(5)
                 if np.array_equal(padded[dy:dy + 6, dx:dx + 5], out[i])]
        assert found, i
        shifts.add(found[0])
    assert len(shifts) > 10  # offsets differ per example


def test_hflip_mirrors_about_half_of_the_images_and_noise_stays_in_the_box():
    x = jax.random.uniform(jax.random.key(0), (200, 4, 4, 1))
    out = np.asarray(Augmentation(hflip=True)(x, jax.random.key(1)))
    same = np.all(out == np.asarray(x), axis=(1, 2, 3))
    mirrored = np.all(out == np.asarray(x)[:, :, ::-1], axis=(1, 2, 3))
    assert np.all(same | mirrored) and 60 < mirrored.sum() < 140
    noisy = np.asarray(Augmentation(noise_std=0.2)(x, jax.random.key(2)))
    assert noisy.min() >= 0 and noisy.max() <= 1
    middle = (np.asarray(x) > 0.4) & (np.asarray(x) < 0.6)  # rarely clipped
    assert 0.17 < np.std((noisy - np.asarray(x))[middle]) < 0.22


def test_crop_pad_must_be_smaller_than_the_image(mlp, data):
    with pytest.raises(ValueError, match="crop_pad = 8 is impossible for 8x8 images; it must be < 8"):
        Augment(crop_pad=8, epochs=1).train(mlp, data, jax.random.key(0))


# ---------------------------------------------------------------- label flipping

@pytest.mark.parametrize("mapping", ["uniform", "next"])
@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.333, 1.0])
def test_label_flip_flips_exactly_round_p_n_labels(mapping, fraction):
    y = np.asarray(jax.random.randint(jax.random.key(0), (1003,), 0, 10), np.int32)
    poisoned, flipped = flip_labels(y, 10, fraction, jax.random.key(1), mapping)
    assert flipped.sum() == {0.0: 0, 0.1: 100, 0.333: 334, 1.0: 1003}[fraction]  # round(p·n)
    assert np.all(poisoned[flipped] != y[flipped]) and np.all(poisoned[~flipped] == y[~flipped])
    assert poisoned.dtype == y.dtype and poisoned.min() >= 0 and poisoned.max() < 10
    if mapping == "next":
        np.testing.assert_array_equal(poisoned[flipped], (y[flipped] + 1) % 10)
    elif flipped.sum() > 50:
        moves = (poisoned[flipped] - y[flipped]) % 10
        assert set(moves.tolist()) == set(range(1, 10))  # every other class is reached


def test_label_flip_is_reproducible_and_the_seed_picks_the_examples():
    y = np.arange(500, dtype=np.int32) % 10
    a = LabelFlip(fraction=0.2, poison_seed=0).poison(y, 10)
    b = LabelFlip(fraction=0.2, poison_seed=0).poison(y, 10)
    c = LabelFlip(fraction=0.2, poison_seed=1).poison(y, 10)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[1].sum() == c[1].sum() == 100
    assert not np.array_equal(a[1], c[1]) and (a[1] & c[1]).sum() < 50


def test_label_flip_pair_flips_a_share_of_the_source_class():
    y = np.arange(300, dtype=np.int32) % 3  # 100 per class
    poisoned, flipped = LabelFlip(fraction=0.25, mapping="pair", source=1, target=2).poison(y, 3)
    assert flipped.sum() == 25 and np.all(y[flipped] == 1) and np.all(poisoned[flipped] == 2)
    assert np.all(poisoned[~flipped] == y[~flipped])
    with pytest.raises(ValueError, match="target = 3 is impossible; the data has classes 0..2"):
        LabelFlip(mapping="pair", source=1, target=3).poison(y, 3)


def test_label_flip_trains_standard_on_the_poisoned_labels(mlp, data, standard_weights):
    assert_same(LabelFlip(fraction=0.0, **FAST).train(mlp, data, jax.random.key(0)), standard_weights)
    lf = LabelFlip(fraction=0.3, mapping="next", **FAST)
    poisoned = dataclasses.replace(data, y_train=lf.poison(data.y_train, data.num_classes)[0])
    got = lf.train(mlp, data, jax.random.key(0))
    assert_same(got, Standard(**FAST).train(mlp, poisoned, jax.random.key(0)))
    assert_differ(got, standard_weights)
