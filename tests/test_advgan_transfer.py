"""AdvGAN (trained generator attack) and transfer attacks: the kernels, the generator cache in
the run directory, and transfer cells through a sweep."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attacks
from attacks import advgan, threat
from bench.errors import ConfigError
from bench.sweep import engine
from bench.sweep.config import parse_config
from tests.conftest import digits_mlp_toml


@pytest.fixture(scope="module")
def trained_gan(trained_mlp, digits):
    """AdvGAN L∞ trained for 6 epochs on 512 training digits against the digits MLP of
    conftest (on all 1,437 it fools more, 78% vs 84% accuracy left, at 3× the test time)."""
    f, params = trained_mlp
    recipe = advgan.AdvGAN(norm="linf", eps_train=0.1, epochs=6, lr=5e-3)
    variables = recipe.fit(f, params, digits.x_train[:512], digits.y_train[:512],
                           jax.random.key(0))
    return recipe, variables


def test_advgan_in_ball_and_box_and_beats_uniform_noise(trained_gan, trained_mlp, digits):
    """The trained generator's examples stay in the ε-ball and [0, 1] at every ε (scalar and
    per example, including ε = 0 → x), and at ε = 0.1 fool the model more often than
    uniform noise in the same L∞ ball does."""
    recipe, variables = trained_gan
    f, params = trained_mlp
    attack = recipe.bind(variables)
    x, y = digits.x_test, digits.y_test
    run = jax.jit(lambda e: attack(f, params, jnp.asarray(x), jnp.asarray(y), e, jax.random.key(0)))
    for eps in (0.0, 0.05, 0.3, np.linspace(0, 0.5, len(x)).astype(np.float32)):
        x_adv = np.asarray(run(jnp.asarray(eps, jnp.float32)))
        dist = np.asarray(threat.distance(x_adv, x, "linf"))
        assert np.all(dist <= np.asarray(eps) * (1 + 1e-6) + 1e-7)
        assert x_adv.min() >= 0 and x_adv.max() <= 1
    np.testing.assert_array_equal(np.asarray(run(jnp.float32(0.0))), x)
    eps = 0.1
    acc_gan = float(np.mean(np.argmax(f(params, run(jnp.float32(eps))), -1) == y))
    noise = np.clip(x + np.random.default_rng(0).uniform(-eps, eps, x.shape), 0, 1)
    acc_noise = float(np.mean(np.argmax(f(params, jnp.asarray(noise, jnp.float32)), -1) == y))
    clean = float(np.mean(np.argmax(f(params, jnp.asarray(x)), -1) == y))
    print(f"\nAdvGAN L∞ 0.1 on the digits MLP: clean {clean:.3f}, uniform noise {acc_noise:.3f}, "
          f"advgan {acc_gan:.3f}")
    assert acc_gan < acc_noise - 0.05  # measured: 0.839 vs 0.917


def test_advgan_l2_stays_in_the_ball():
    recipe = advgan.AdvGAN(norm="l2")
    x = jax.random.uniform(jax.random.key(1), (16, 8, 8, 1))
    variables = recipe.init(jax.random.key(2), x)
    run = jax.jit(lambda e: recipe.bind(variables)(None, None, x, None, e, None))
    for eps in (0.0, 0.5, 2.0, 50.0):
        x_adv = run(jnp.float32(eps))
        assert np.all(np.asarray(threat.distance(x_adv, x, "l2")) <= eps * (1 + 1e-6) + 1e-7)
        assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1


def test_advgan_fit_is_deterministic_for_a_key(trained_mlp, digits):
    f, params = trained_mlp
    recipe = advgan.AdvGAN(epochs=1, batch_size=64, discriminator=True)
    x, y = digits.x_train[:128], digits.y_train[:128]
    a = recipe.fit(f, params, x, y, jax.random.key(5))
    b = recipe.fit(f, params, x, y, jax.random.key(5))
    c = recipe.fit(f, params, x, y, jax.random.key(6))
    assert set(a) == {"generator", "discriminator"}
    assert advgan.variables_digest(a) == advgan.variables_digest(b)
    assert advgan.variables_digest(a) != advgan.variables_digest(c)
    assert recipe.bind(a) == recipe.bind(b) and hash(recipe.bind(a)) == hash(recipe.bind(b))


def test_unbound_advgan_and_unresolved_transfer_are_errors():
    with pytest.raises(ValueError, match="no trained generator"):
        advgan.AdvGAN()(None, None, jnp.zeros((1, 2, 2, 1)), None, 0.1, None)
    with pytest.raises(ValueError, match="not resolved"):
        attacks.Transfer()(None, None, jnp.zeros((1, 2, 2, 1)), None, 0.1, None)
    for bad in (dict(norm="l1"), dict(epochs=0), dict(eps_train=0.0), dict(hinge=-1.0)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            advgan.AdvGAN(**bad)


def test_transfer_kernel_is_the_crafter_on_the_given_model(linear_model, images):
    f, params = linear_model
    x, y = images
    pgd = attacks.PGD(steps=3)
    t = attacks.Transfer.of(pgd, ["m/d"])
    key = jax.random.key(0)
    np.testing.assert_array_equal(np.asarray(t(f, params, x, y, 0.1, key)),
                                  np.asarray(pgd(f, params, x, y, 0.1, key)))
    assert t.norm == "linf" and t.surrogate == ("m/d",)


# ---- through a sweep ---------------------------------------------------------------------------

SWEEP = digits_mlp_toml("gan", train_examples=256, epochs="{epochs}", rest="""
    [[defenses]]
    name = "pgd-at"
    label = "at"
    epochs = 1
    steps = 1
    [[attacks]]
    name = "pgd"
    steps = 2
    eps = [0.0, 0.1]
    [[attacks]]
    name = "advgan"
    epochs = 1
    lr = {lr}
    eps = {gan_eps}
    [[attacks]]
    name = "transfer"
    attack = "pgd"
    surrogate = ["mlp/standard"]
    eps = [0.0, 0.1]
    [[attacks]]
    name = "transfer"
    attack = "advgan"
    surrogate = ["mlp/standard"]
    eps = [0.1]
    [[attacks]]
    name = "transfer"
    label = "ens"
    attack = "pgd"
    surrogate = ["mlp/standard", "mlp/at"]
    eps = [0.1]
""")


def _sweep(out, epochs=2, lr=1e-3, gan_eps="[0.1]"):
    from bench.sweep.runner import run_sweep

    cfg = parse_config(__import__("tomllib").loads(
        SWEEP.format(epochs=epochs, lr=lr, gan_eps=gan_eps)))
    return run_sweep(cfg, out, progress=False)


def _details(records, attack):
    return [json.loads(d) for d in records[records.attack == attack].details]


def test_sweep_transfer_to_itself_equals_white_box_and_generators_are_cached(tmp_path):
    """In one sweep: transfer from a model to itself reproduces its white-box cells mask for
    mask (PGD, and AdvGAN with the same generator file); the target row pgd-at differs from
    its own white-box PGD; the ensemble row names both surrogates. Rerunning with a new ε reuses
    the generators (no training, same files; its cells record the cached training time)."""
    from bench.store.records import RunDir

    out = tmp_path / "run"
    records = _sweep(out)
    run = RunDir(out)
    gens = sorted((out / "generators").iterdir())
    assert len(gens) == 2  # one per target row (mlp/standard, mlp/at); transfer reuses the first

    def masks(defense, attack):
        rows = records[(records.defense == defense) & (records.attack == attack)]
        return {e: run.read_mask(c) for e, c in zip(rows.eps, rows.cell_id)}

    white, trans = masks("standard", "pgd"), masks("standard", "transfer:pgd@mlp/standard")
    assert set(white) == set(trans) == {0.0, 0.1}
    for e in white:
        np.testing.assert_array_equal(white[e], trans[e])
    np.testing.assert_array_equal(masks("standard", "advgan")[0.1],
                                  masks("standard", "transfer:advgan@mlp/standard")[0.1])
    assert not np.array_equal(masks("at", "pgd")[0.1], masks("at", "transfer:pgd@mlp/standard")[0.1])
    d_white = _details(records[records.defense == "standard"], "advgan")[0]
    d_trans = _details(records[records.defense == "at"], "transfer:advgan@mlp/standard")[0]
    assert d_white["generator"] == d_trans["generator"] and d_trans["surrogate"] == ["mlp/standard"]
    assert d_white["generator_train_seconds"] > 0
    assert _details(records, "ens")[0]["surrogate"] == ["mlp/standard", "mlp/at"]

    # The pgd-at row's transfer cell scores the very examples crafted for the surrogate's own
    # white-box cell (its key), recomputed here by hand through the engine.
    from bench.sweep.plan import key_for, make_plan
    from bench.sweep.runner import _pick, _Weights

    class Bar:
        def set_postfix_str(self, *a, **k):
            pass

    cfg = parse_config(__import__("tomllib").loads(SWEEP.format(epochs=2, lr=1e-3, gan_eps="[0.1]")))
    from bench.sweep.data import load_dataset

    data = load_dataset("digits", train_examples=256)
    plan_obj = make_plan(cfg, data.fingerprint())
    w = _Weights(run, plan_obj, data, Bar())
    std, at = (next(u for u in plan_obj.units if u.defense.label == lab) for lab in ("standard", "at"))
    _, fn = w.module(std.model)
    pgd = next(a for a in cfg.attacks if a.label == "pgd")
    m, _, _ = engine.attack_correct(pgd.attack, _pick(fn, 0), (w(at.training), w(std.training)),
                                    data.x_test[:40], data.y_test[:40], [0.1],
                                    key_for(cfg.seed, *std.attack_key_parts(pgd)), 40,
                                    attack_logits_fn=_pick(fn, 1))
    np.testing.assert_array_equal(m[0], masks("at", "transfer:pgd@mlp/standard")[0.1])

    mtimes = {p.name: p.stat().st_mtime_ns for p in gens}
    records = _sweep(out, gan_eps="[0.1, 0.2]")   # new cells, same generators
    assert {p.name: p.stat().st_mtime_ns for p in (out / "generators").iterdir()} == mtimes
    new = records[(records.attack == "advgan") & (records.eps == 0.2)]
    assert all(d["generator_cached"] for d in map(json.loads, new.details))
    assert new.seconds.max() < d_white["generator_train_seconds"]


def test_generator_cache_key_follows_options_weights_and_data():
    """The generator file changes with the AdvGAN options, the target's weights (a retrained
    target), the seed and the data; not with the ε list or an unrelated attack."""
    import tomllib

    from bench.sweep.plan import make_plan
    from bench.sweep.runner import _unit_ident, generator_file

    def name(fingerprint="fp", **fmt):
        cfg = parse_config(tomllib.loads(SWEEP.format(**{"epochs": 2, "lr": 1e-3,
                                                         "gan_eps": "[0.1]", **fmt})))
        plan = make_plan(cfg, fingerprint)
        unit = next(u for u in plan.units if u.defense.label == "standard")
        a = next(a for a in cfg.attacks if a.name == "advgan")
        return generator_file(a, a.attack, _unit_ident(unit), "mlp/standard", plan)

    base = name()
    assert base.startswith("mlp_standard") and ".advgan-linf." in base and base.endswith(".safetensors")
    assert name(gan_eps="[0.1, 0.2]") == base
    assert name(lr=2e-3) != base        # options
    assert name(epochs=3) != base       # the target is retrained: new weights digest
    assert name(fingerprint="other") != base


def test_transfer_cells_are_keyed_by_the_surrogate_weights():
    """Retraining only the surrogate changes the transfer cells' ids on another row, not the
    white-box ones there."""
    from bench.sweep.plan import make_plan

    def cells(epochs):
        cfg = parse_config(__import__("tomllib").loads(SWEEP.format(epochs=epochs, lr=1e-3,
                                                                      gan_eps="[0.1]")))
        plan = make_plan(cfg, "fingerprint")
        unit = next(u for u in plan.units if u.defense.label == "at")
        return {(c.attack.label if c.attack else "clean", c.eps): c.cell_id for c in unit.cells}

    a, b = cells(2), cells(3)
    assert a[("pgd", 0.1)] == b[("pgd", 0.1)]
    assert a[("transfer:pgd@mlp/standard", 0.1)] != b[("transfer:pgd@mlp/standard", 0.1)]


@pytest.mark.parametrize("edit,match", [
    (("surrogate = [\"mlp/standard\"]\neps = [0.0", "surrogate = [\"mlp/nope\"]\neps = [0.0"),
     "surrogate\\[0\\] = 'mlp/nope' is not a <model>/<defense> label of this sweep; choose one of: "
     "mlp/standard, mlp/at"),
    (("attack = \"pgd\"\nsurrogate = [\"mlp/standard\"]", "attack = \"fgsm\"\nsurrogate = [\"mlp/standard\"]"),
     "attack = 'fgsm' is not the label of another attack here; choose one of: pgd"),
    (("surrogate = [\"mlp/standard\", \"mlp/at\"]", "surrogate = []"), "names no model"),
    (("surrogate = [\"mlp/standard\", \"mlp/at\"]", "surrogate = [\"mlp/at\", \"mlp/at\"]"),
     "repeats a label"),
])
def test_transfer_config_errors(edit, match):
    text = SWEEP.format(epochs=1, lr=1e-3, gan_eps="[0.1]")
    assert edit[0] in text
    with pytest.raises(ConfigError, match="^\\[\\[attacks\\]\\] #[35] \\(transfer\\): .*" + match) as e:
        parse_config(__import__("tomllib").loads(text.replace(edit[0], edit[1], 1)))
    assert "\n" not in str(e.value)


def test_scale_to_ball_by_hand():
    """L∞: ε·g. L2: ε·g when ‖g‖₂ ≤ 1 (the generator may use less than ε), else on the sphere."""
    g = jnp.stack([jnp.full((2, 2, 1), 0.1), jnp.full((2, 2, 1), 0.9)])   # ‖g‖₂ = 0.2 and 1.8
    eps = jnp.array([0.5, 0.5])
    np.testing.assert_allclose(advgan.scale_to_ball(g, eps, "linf"), 0.5 * g)
    d = np.asarray(advgan.scale_to_ball(g, eps, "l2"))
    np.testing.assert_allclose(d[0], 0.5 * np.asarray(g[0]), rtol=1e-6)
    np.testing.assert_allclose(d[1], 0.5 * np.asarray(g[1]) / 1.8, rtol=1e-6)


def test_evaluate_api_trains_advgan_or_says_how(trained_mlp, digits):
    import bench

    f, params = trained_mlp
    with pytest.raises(ConfigError, match="trains on a training split; pass data as a data-set name"):
        bench.evaluate(f, params, (digits.x_test[:8], digits.y_test[:8]),
                       [{"name": "advgan", "epochs": 1, "eps": [0.1]}])
    with pytest.raises(ConfigError, match="transfer needs its crafting attack"):
        bench.evaluate(f, params, "digits", [{"name": "transfer", "eps": [0.1]}], eval_examples=8)
