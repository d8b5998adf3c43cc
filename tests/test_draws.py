"""Random models scored over several draws: an example counts as correct (clean) or robust only
if it is classified correctly in every draw; AutoAttack runs its rand version on them.

The model of most tests is a two-class toy whose correctness in each draw is known by hand:
example i, whose first pixel is t_i, is correct in a draw with key k exactly when
``uniform(k) > t_i`` (logits ``[u - t, 0]``, label 0; a float subtraction has the exact sign).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bench
from attacks import FGSM
from bench.errors import ConfigError
from bench.reports import checklist
from bench.store.records import RunDir
from bench.sweep import engine as ev
from bench.sweep import runner
from bench.sweep.config import load_config, parse_config
from bench.sweep.plan import make_plan
from defenses import RandomTransform, is_random
from tests.conftest import digits_mlp_toml


def coin(params, x, key):
    """Correct (class 0) exactly when the draw's uniform exceeds the first pixel."""
    u = jax.random.uniform(key, (x.shape[0],))
    t = x[:, 0, 0, 0]
    return jnp.stack([u - t, jnp.zeros_like(u)], axis=-1)


coin.random = True

N, DRAWS = 40, 6
T = (np.arange(N) % 8 / 8.0).astype(np.float32)  # thresholds 0, 1/8, ..., 7/8: exact sums
X = np.zeros((N, 2, 2, 1), np.float32)
X[:, 0, 0, 0] = T
Y = np.zeros(N, np.int32)
SCORE_KEY = jax.random.key(7)


def uniform_of(key) -> float:
    return float(jax.random.uniform(key, (1,))[0])


def by_hand(shift: float = 0.0, draws: int = DRAWS) -> np.ndarray:
    """[N, draws]: example i correct in draw d with its first pixel at t_i + shift in [0, 1]."""
    out = np.zeros((N, draws), bool)
    for i in range(N):
        k = jax.random.fold_in(SCORE_KEY, i)
        keys = [k] + [jax.random.fold_in(jax.random.fold_in(k, 0xD2A5), d)
                      for d in range(1, draws)]
        out[i] = [uniform_of(kd) > min(max(T[i] + shift, 0.0), 1.0) for kd in keys]
    return out


@dataclasses.dataclass(frozen=True)
class Shift:
    """A toy attack: every pixel moved by ``frac`` · ε (inside the ball and the box)."""

    norm: str = "linf"
    frac: float = 1.0

    def __call__(self, logits_fn, params, x, y, eps, key, target=None):
        return jnp.clip(x + self.frac * eps, 0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class TwoShifts:
    """A toy cascade: half the budget, then all of it."""

    norm: str = "linf"

    def stages(self):
        return (("half", Shift(frac=0.5)), ("full", Shift()))


def test_draw_zero_is_the_key_used_before_and_draws_only_add():
    k = jax.random.key(11)
    keys = jax.random.key_data(ev.draw_keys(k, 5))
    assert (keys[0] == jax.random.key_data(k)).all()
    assert (jax.random.key_data(ev.draw_keys(k, 3)) == keys[:3]).all()  # draw d independent of D
    assert len({tuple(np.asarray(r)) for r in keys}) == 5


def test_clean_accuracy_is_the_and_over_draws_and_its_mean_is_recorded():
    hand = by_hand()
    assert 0 < hand.all(1).sum() < hand[:, 0].sum()  # the toy is random enough to tell
    mask, info = ev.clean_correct(coin, None, X, Y, batch_size=16, key=SCORE_KEY,
                                  draws=DRAWS, with_info=True)
    np.testing.assert_array_equal(info["draw_correct"], hand)
    np.testing.assert_array_equal(mask, hand.all(1))
    # one draw: exactly the single draw with fold_in(score key, i), as before draws existed
    np.testing.assert_array_equal(
        ev.clean_correct(coin, None, X, Y, batch_size=7, key=SCORE_KEY, draws=1), hand[:, 0])


def test_an_attack_is_scored_per_draw_and_anded_with_clean():
    masks, _, _, info = ev.attack_correct(Shift(), coin, None, X, Y, [0.0, 0.125],
                                          jax.random.key(1), batch_size=16, with_info=True,
                                          score_key=SCORE_KEY, draws=DRAWS)
    clean, shifted = by_hand(), by_hand(0.125)
    np.testing.assert_array_equal(info["draw_correct"][0], clean)  # ε = 0 reproduces clean
    np.testing.assert_array_equal(info["draw_correct"][1], clean & shifted)
    np.testing.assert_array_equal(masks, np.stack([clean.all(1), (clean & shifted).all(1)]))
    assert masks[1].sum() < (clean[:, 0] & shifted[:, 0]).sum()  # below the single-draw number
    # an attack that makes points easier: robust still needs correct at x in that same draw
    masks, _, _, info = ev.attack_correct(Shift(frac=-1.0), coin, None, X, Y, [0.25],
                                          jax.random.key(1), batch_size=16, with_info=True,
                                          score_key=SCORE_KEY, draws=DRAWS)
    lowered = by_hand(-0.25)
    assert (lowered & ~clean).any()
    np.testing.assert_array_equal(info["draw_correct"][0], clean & lowered)
    np.testing.assert_array_equal(masks[0], (clean & lowered).all(1))


def test_a_cascade_breaks_a_point_in_any_draw_and_keeps_the_draws():
    masks, _, _, info = ev.attack_correct(TwoShifts(), coin, None, X, Y, [0.25],
                                          jax.random.key(1), batch_size=16, with_info=True,
                                          score_key=SCORE_KEY, draws=DRAWS)
    clean, half, full = by_hand(), by_hand(0.125), by_hand(0.25)
    robust1 = (clean & half).all(1)
    expected_stage = np.where(~clean.all(1), -1, np.where(~robust1, 1,
                                                          np.where((clean & full).all(1), 0, 2)))
    np.testing.assert_array_equal(info["stage"][0], expected_stage)
    np.testing.assert_array_equal(masks[0], (clean & half & full).all(1))
    # per draw, exactly the cascade scored with that draw alone: clean, then correct at each
    # stage's point while robust in that draw
    np.testing.assert_array_equal(info["draw_correct"][0], clean & half & full)
    assert ((clean & half).any(1) & ~robust1).any()  # stage 2 ran on points some draw kept


def linear(params, x):
    return x.reshape(len(x), -1) @ params


def test_a_deterministic_model_ignores_draws():
    params = jnp.asarray(np.random.default_rng(0).normal(size=(4, 2)), jnp.float32)
    x = np.random.default_rng(1).uniform(size=(N, 2, 2, 1)).astype(np.float32)
    one = ev.clean_correct(linear, params, x, Y, key=SCORE_KEY, draws=1)
    ten, info = ev.clean_correct(linear, params, x, Y, key=SCORE_KEY, draws=10, with_info=True)
    np.testing.assert_array_equal(one, ten)
    assert info == {}
    a1 = ev.attack_correct(FGSM(), linear, params, x, Y, [0.1], jax.random.key(2),
                           with_info=True, draws=1)
    a10 = ev.attack_correct(FGSM(), linear, params, x, Y, [0.1], jax.random.key(2),
                            with_info=True, draws=10)
    np.testing.assert_array_equal(a1[0], a10[0])
    assert "draw_correct" not in a10[3]


def test_draws_must_be_a_whole_number_from_one():
    for bad in (0, -1, "x", 2.5, True, 1001):
        with pytest.raises(ConfigError, match="draws"):
            ev.check_draws(bad)
    assert ev.check_draws(np.int64(3)) == 3


def test_evaluate_records_draws_and_their_mean():
    frame = bench.evaluate(coin, None, (X, Y), [FGSM()], eps=[0.125], seed=0, draws=DRAWS)
    clean = frame[frame["attack"] == "clean"].iloc[0]
    import json

    d = json.loads(clean["details"])
    assert d["draws"] == DRAWS and len(d["draw_acc"]) == DRAWS
    assert clean["robust_acc"] < min(d["draw_acc"])  # AND over draws ≤ every single draw
    assert d["draw_acc_mean"] == pytest.approx(np.mean(d["draw_acc"]))
    one = bench.evaluate(coin, None, (X, Y), [FGSM()], eps=[0.125], seed=0, draws=1)
    assert set(one["cell_id"]).isdisjoint(frame["cell_id"])  # draws are part of the identity
    assert one[one["attack"] == "clean"].iloc[0]["robust_acc"] == pytest.approx(d["draw_acc"][0])
    with pytest.raises(ConfigError, match="draws = 0"):
        bench.evaluate(coin, None, (X, Y), [FGSM()], eps=[0.1], draws=0)


def _config(aa_options: str = "", draws: str = "") -> str:
    return digits_mlp_toml("draws", seed=None, eval_examples=30, batch_size=30,
                           eval_extra=draws, rest=f"""
        [[defenses]]
        name = "random-transform"
        label = "noise"
        method = "noise"
        sigma = 0.3
        eot_draws = 2
        [[attacks]]
        name = "fgsm"
        eps = [0.0, 0.1]
        [[attacks]]
        name = "pgd"
        steps = 2
        eps = [0.1]
        [[attacks]]
        name = "autoattack"
        steps = 2
        queries = 10
        eot_iter = 2
        eps = [0.1]
        {aa_options}
    """)


def _plan(text: str):
    import tomllib

    return make_plan(parse_config(tomllib.loads(text)), "fingerprint")


def _versions(plan) -> dict:
    return {u.defense_label: u.cells[-1].attack.attack.version for u in plan.units}


def test_autoattack_runs_rand_on_random_rows_unless_version_is_set():
    assert is_random(RandomTransform()) and not is_random(FGSM())
    assert _versions(_plan(_config())) == {"standard": "standard", "noise": "rand",
                                           "noise (adaptive)": "rand"}
    for version in ("standard", "plus"):
        assert set(_versions(_plan(_config(f'version = "{version}"'))).values()) == {version}
    # the Python API: an instance's default version counts as unset, a changed one as set
    from attacks import AutoAttack

    from bench.sweep.api import _attack_specs, api_unit

    specs = _attack_specs([AutoAttack(), AutoAttack(version="plus"),
                           {"name": "autoattack", "version": "standard"}], [0.1])
    assert [s[3] for s in specs] == [frozenset(), {"version"}, {"version"}]
    unit = api_unit("m", "d", specs, "data", 0, True, 3)
    assert [c.attack.attack.version for c in unit.cells[1:]] == ["rand", "plus", "standard"]
    unit = api_unit("m", "d", specs, "data", 0, False, 3)
    assert [c.attack.attack.version for c in unit.cells[1:]] == ["standard", "plus", "standard"]
    unit = api_unit("m", "d", [("aa", AutoAttack(), (0.1,), frozenset(), ())], "data", 0, True, 3)
    assert unit.cells[-1].attack.attack.version == "rand"
    assert unit.cells[-1].attack.preset == (("version", "rand"),)


def test_draws_change_random_cells_only():
    base, more = _plan(_config()), _plan(_config(draws="draws = 3"))
    for u, v in zip(base.units, more.units):
        same = [c.cell_id for c in u.cells] == [c.cell_id for c in v.cells]
        assert same == (not u.random), u.defense_label
        assert (u.draws, v.draws) == ((10, 3) if u.random else (1, 1))


@pytest.mark.parametrize("value,match", [("0", "draws = 0"), ('"x"', "draws"),
                                         ("2000", "draws = 2000"), ("true", "draws")])
def test_a_bad_draws_is_a_one_line_config_error(value, match):
    with pytest.raises(ConfigError, match=match) as e:
        _plan(_config(draws=f"draws = {value}"))
    assert "\n" not in str(e.value) and "[eval]" in str(e.value)


def test_a_sweep_scores_random_rows_over_draws_and_resumes_only_them(tmp_path):
    path = tmp_path / "draws.toml"
    path.write_text(_config(draws="draws = 3"))
    out = tmp_path / "run"
    first = runner.run_sweep(load_config(path), out, progress=False)
    run = RunDir(out)
    aa = first[(first["defense"] == "noise") & (first["attack"] == "autoattack")].iloc[0]
    assert '"version": "rand"' in aa["attack_options"]
    assert '"random_model_options": {"version": "rand"}' in aa["details"]
    clean = first[(first["defense"] == "noise") & (first["attack"] == "clean")].iloc[0]
    info = run.read_info(clean["cell_id"])["draw_correct"]
    assert info.shape == (30, 3) and clean["correct"] == info.all(1).sum()
    # ε = 0 reproduces the clean mask over the same draws
    zero = first[(first["defense"] == "noise") & (first["attack"] == "fgsm")
                 & (first["eps"] == 0)].iloc[0]
    np.testing.assert_array_equal(run.read_mask(zero["cell_id"]), run.read_mask(clean["cell_id"]))

    items = {i.key: i for i in checklist.checklist(run, first)}
    rows = items["draws"].rows
    assert {(r["defense"], r["attack"]) for r in rows} == {
        (d, a) for d in ("noise", "noise (adaptive)") for a in ("clean", "fgsm", "pgd",
                                                               "autoattack")}
    row = next(r for r in rows if r["defense"] == "noise" and r["attack"] == "clean")
    single = 100 * info.mean(0)
    assert (row["single-draw min (%)"], row["single-draw max (%)"]) == (single.min(), single.max())
    assert row["all draws (%)"] == 100 * info.all(1).mean()
    assert row["drop by the last draw (pp)"] == 100 * (info[:, :2].all(1).mean()
                                                       - info.all(1).mean())
    # a multi-draw cell has no budget curve (its mask is not what the attack saw)
    stable = {(r["defense"], r["attack"]) for r in items["stable"].rows}
    assert ("standard", "pgd") in stable and not any(d.startswith("noise") for d, _ in stable)

    path.write_text(_config(draws="draws = 4"))
    before = {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}
    second = runner.run_sweep(load_config(path), out, progress=False)
    kept = second[second["cell_id"].map(lambda c: f"{c}.json" in before)]
    assert set(kept["defense"]) == {"standard"}
    assert set(second["defense"]) - set(kept["defense"]) == {"noise", "noise (adaptive)"}
    for c in kept["cell_id"]:
        assert (out / "cells" / f"{c}.json").stat().st_mtime_ns == before[f"{c}.json"]
    c4 = second[(second["defense"] == "noise") & (second["attack"] == "clean")].iloc[0]
    assert c4["correct"] <= clean["correct"]  # a fourth draw can only remove examples
    np.testing.assert_array_equal(run.read_info(c4["cell_id"])["draw_correct"][:, :3], info)
