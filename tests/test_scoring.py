"""The engine scores without a second pass where it can (issue 22, item 3), with the same
per-example result: the attack's own logits at its point (``attacks.base.Scored``), and one
clean pass per sweep unit shared by its clean cell and every attack."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attacks import APGD, APGDDLR, APGDT, PGD, base
from bench.errors import DataError
from bench.sweep import engine as ev
from tests.conftest import quadratic_logits


@pytest.fixture(scope="module")
def quad():
    k1, k2 = jax.random.split(jax.random.key(5))
    w = jax.random.normal(k1, (36, 4))
    b = 0.1 * jax.random.normal(k2, (4,))
    kx, ky = jax.random.split(jax.random.key(8))
    x = np.asarray(jax.random.uniform(kx, (24, 6, 6, 1)))
    y = np.asarray(jax.random.randint(ky, (24,), 0, 4))
    return quadratic_logits, (w, b), x, y


@pytest.mark.parametrize("attack", [PGD(steps=4), PGD(steps=3, restarts=2, loss="margin"),
                                    PGD(steps=3, targeted=True), PGD(steps=2, random_start=False),
                                    APGD(steps=5), APGD(steps=4, restarts=2), APGDDLR(steps=4),
                                    APGDT(steps=4, n_target_classes=2), APGD(steps=3, eot_iter=2)])
@pytest.mark.parametrize("eps", [0.02, 0.2])  # some examples robust (best point) / all fooled
def test_run_scored_logits_are_the_models_at_the_returned_point(quad, attack, eps):
    fn, params, x, y = quad
    e = jnp.float32(eps)
    x_adv, info, logits = attack.run_scored(fn, params, x, y, e, jax.random.key(1))
    assert isinstance(attack, base.Scored)
    np.testing.assert_allclose(logits, fn(params, x_adv), rtol=1e-6, atol=1e-6)
    x_run, info_run = attack.run(fn, params, x, y, e, jax.random.key(1))
    np.testing.assert_array_equal(x_run, x_adv)
    for k in info:
        np.testing.assert_array_equal(info_run[k], info[k])


@pytest.mark.parametrize("attack", [PGD(steps=5), APGD(steps=5), APGDT(steps=4, n_target_classes=2)])
def test_engine_reuse_gives_the_masks_of_a_second_pass(quad, attack):
    fn, params, x, y = quad
    key = jax.random.key(3)
    keys = np.asarray(jax.random.key_data(ev._example_keys(key, len(x))))
    eps = [0.0, 0.05, 0.1, 0.3]
    args = (attack, fn, params, x, y, eps, keys, jax.random.key_impl(key), 10, None)
    reused = ev._run_attack(*args)
    rescored = ev._run_attack(*args, reuse_logits=False)
    np.testing.assert_array_equal(reused[0], rescored[0])
    counts = reused[0].sum(1)
    assert counts[0] > counts[1] > 0 and counts[-1] < counts[1], counts  # some broken, not all


def test_engine_reuse_still_reports_nan_logits(quad):
    _, params, x, y = quad

    def nan_model(p, z):
        return quadratic_logits(p, z) * jnp.nan

    with pytest.raises(Exception, match="NaN/inf logits"):
        ev.attack_correct(PGD(steps=2), nan_model, params, x, y, [0.1], jax.random.key(0), 8,
                          clean=np.ones(len(x), bool))


def test_a_given_clean_mask_is_used_and_checked(quad):
    fn, params, x, y = quad
    key = jax.random.key(4)
    clean = ev.clean_correct(fn, params, x, y, 8)
    own = ev.attack_correct(PGD(steps=3), fn, params, x, y, [0.0, 0.1], key, 8)[0]
    given = ev.attack_correct(PGD(steps=3), fn, params, x, y, [0.0, 0.1], key, 8,
                              clean=clean)[0]
    np.testing.assert_array_equal(own, given)
    np.testing.assert_array_equal(given[0], clean)  # ε = 0 reproduces the clean mask
    # the given mask is what is ANDed: an all-wrong clean mask leaves nothing robust
    none = ev.attack_correct(PGD(steps=3), fn, params, x, y, [0.0], key, 8,
                             clean=np.zeros(len(x), bool))[0]
    assert not none.any()
    with pytest.raises(DataError, match=r"clean has shape \(3,\)"):
        ev.attack_correct(PGD(steps=3), fn, params, x, y, [0.1], key, 8,
                          clean=np.ones(3, bool))


def test_a_sweep_unit_runs_one_clean_pass(tiny_toml, tmp_path, monkeypatch):
    from bench.sweep import runner
    from bench.sweep.config import load_config

    calls = []
    real = ev._clean

    def counting(*args, **kwargs):
        calls.append(len(args[2]))
        return real(*args, **kwargs)

    monkeypatch.setattr(ev, "_clean", counting)
    runner.run_sweep(load_config(tiny_toml), tmp_path / "run", progress=False)
    # tiny.toml: one model, two defenses (units), two attacks each: one clean pass per unit
    assert len(calls) == 2, calls


def test_a_resume_that_adds_only_corruptions_runs_no_clean_pass(tmp_path, monkeypatch):
    """A corruption is not ANDed with the clean mask, so a unit whose only missing cells are
    corruption cells needs no clean pass."""
    from bench.sweep import runner
    from bench.sweep.config import load_config
    from tests.conftest import digits_mlp_toml

    fgsm = '[[attacks]]\nname = "fgsm"\neps = [0.0, 0.1]\n'
    path, out = tmp_path / "c.toml", tmp_path / "run"
    path.write_text(digits_mlp_toml("c", fgsm, eval_examples=20, batch_size=20))
    runner.run_sweep(load_config(path), out, progress=False)
    calls = []
    real = ev._clean
    monkeypatch.setattr(ev, "_clean", lambda *a, **k: calls.append(1) or real(*a, **k))
    path.write_text(digits_mlp_toml("c", fgsm + '[[attacks]]\nname = "corruption"\n'
                                    'kinds = ["brightness"]\neps = [1]\n',
                                    eval_examples=20, batch_size=20))
    records = runner.run_sweep(load_config(path), out, progress=False)
    assert "corruption-brightness" in set(records["attack"]) and calls == []
