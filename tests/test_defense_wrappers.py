"""The shipped inference wrappers: squeeze (BPDA), random-transform (EOT), ensemble, fusion.

Hand-checked properties of each wrapper on tiny functions, then small sweeps through
``bench.sweep.config`` / ``plan`` / ``runner`` on the embedded digits: naive and adaptive rows,
member wrappers reading every member's checkpoint, config errors, determinism of random
defenses for a seed.
"""

import shutil
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from attacks import APGD, PGD
from bench.errors import ConfigError
from bench.sweep import engine
from bench.sweep.config import parse_config
from defenses import Ensemble, Fusion, RandomTransform, Squeeze
from defenses.random_transform import eot, resize_and_pad
from defenses.squeeze import median_filter, reduce_bit_depth
from tests.conftest import linear_logits

VOLATILE = ["seconds", "compile_seconds", "code_version"]


@pytest.fixture(scope="module")
def linear():
    """A 4-class linear model on 5×5×1 images and a batch of 3 images."""
    k1, k2, k3 = jax.random.split(jax.random.key(7), 3)
    params = (jax.random.normal(k1, (25, 4)), jax.random.normal(k2, (4,)))
    x = jax.random.uniform(k3, (3, 5, 5, 1))
    return params, x


def ce_grad(logits_fn, params, x, *key):
    """Input gradient of the summed cross-entropy w.r.t. label 0."""
    def loss(z):
        return -jnp.sum(jax.nn.log_softmax(logits_fn(params, z, *key))[:, 0])
    return jax.grad(loss)(x)


# -- squeeze ---------------------------------------------------------------------------------


def test_bit_depth_and_median_values():
    x = jnp.asarray([0.0, 0.2, 0.26, 0.5, 0.74, 1.0]).reshape(1, 1, 6, 1)
    np.testing.assert_allclose(reduce_bit_depth(x, 1).ravel(), [0, 0, 0, 0, 1, 1])  # 0.5 rounds to even
    np.testing.assert_allclose(reduce_bit_depth(x, 2).ravel(), [0, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 1])
    scipy_ndimage = pytest.importorskip("scipy.ndimage")
    imgs = np.asarray(jax.random.uniform(jax.random.key(0), (2, 6, 7, 2)))
    for w in (1, 2, 3):  # scipy's median_filter, the reference implementation's
        np.testing.assert_array_equal(
            median_filter(jnp.asarray(imgs), w),
            scipy_ndimage.median_filter(imgs, size=(1, w, w, 1), mode="reflect"))


@pytest.mark.parametrize("method", ["bit-depth", "median"])
def test_bpda_gradient_is_the_identity_through_the_squeezer(linear, method):
    """BPDA: same logits as the wrapper; gradient = the model's gradient at the squeezed
    input, passed straight through (the identity's gradient through the squeezer)."""
    params, x = linear
    sq = Squeeze(method=method, bits=2, window=3)
    naive, bpda = sq.wrap(linear_logits), sq.adaptive(linear_logits)
    np.testing.assert_array_equal(bpda(params, x), naive(params, x))
    g_bpda = ce_grad(bpda, params, x)
    g_at_squeezed = ce_grad(linear_logits, params, sq.squeeze(x))
    np.testing.assert_allclose(g_bpda, g_at_squeezed, rtol=1e-6)
    assert jnp.abs(g_bpda).sum() > 0
    if method == "bit-depth":  # rounding masks the gradient of the wrapper itself
        assert jnp.all(ce_grad(naive, params, x) == 0)


# -- random transform / EOT ------------------------------------------------------------------


@pytest.mark.parametrize("method", ["resize-pad", "noise"])
def test_eot_with_one_draw_is_the_plain_gradient_of_that_draw(linear, method):
    params, x = linear
    rt = RandomTransform(method=method, eot_draws=1)
    f = rt.wrap(linear_logits)
    key = jax.random.key(3)
    draw = jax.random.split(key, 1)[0]
    h = rt.adaptive(linear_logits)
    assert f.random and h.random
    np.testing.assert_array_equal(h(params, x, key), f(params, x, draw))
    np.testing.assert_array_equal(ce_grad(h, params, x, key), ce_grad(f, params, x, draw))


def test_eot_averages_the_draws(linear):
    """The EOT stand-in's input gradient is the mean of the draws' (for a loss linear in
    the logits, exactly the mean of the per-draw loss gradients)."""
    params, x = linear
    f = RandomTransform(method="noise", sigma=0.2).wrap(linear_logits)
    key = jax.random.key(5)
    lin = lambda fn, *k: jax.grad(lambda z: jnp.sum(fn(params, z, *k)[:, 1]))(x)  # noqa: E731
    per_draw = [lin(f, k) for k in jax.random.split(key, 4)]
    np.testing.assert_allclose(lin(eot(f, 4), key), np.mean(per_draw, axis=0), rtol=1e-5, atol=1e-6)
    assert not np.allclose(per_draw[0], per_draw[1])  # the draws differ


def test_placement_matrix_is_jax_image_scale_and_translate():
    from defenses.random_transform import placement_matrix

    x = jax.random.uniform(jax.random.key(0), (8, 9, 2))
    for side in (4, 6, 8):
        scale = jnp.float32(side / 8)
        for offset in (0.0, 1.0, 8.0 - side):
            ref = jax.image.scale_and_translate(x, x.shape, (0, 1), jnp.stack([scale, scale]),
                                                jnp.array([offset, offset]), method="linear")
            ours = jnp.einsum("ah,bw,hwc->abc", placement_matrix(8, scale, jnp.float32(offset)),
                              placement_matrix(9, scale, jnp.float32(offset)), x)
            np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_random_transform_draws():
    x = jnp.ones((16, 8, 8, 1))
    y = resize_and_pad(x, jax.random.key(0), 0.5)
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1 + 1e-6
    sizes = np.asarray((y[..., 0] > 0.5).sum(axis=(1, 2)))
    assert len(set(sizes.tolist())) > 1 and sizes.min() >= 16  # shrunk to ≥ 4×4, sizes vary
    first_row = np.asarray(jnp.argmax(y[..., 0].max(axis=2) > 0.5, axis=1))
    assert len(set(first_row.tolist())) > 1  # and so do the offsets
    np.testing.assert_array_equal(y, resize_and_pad(x, jax.random.key(0), 0.5))
    assert not np.array_equal(y, resize_and_pad(x, jax.random.key(1), 0.5))
    np.testing.assert_array_equal(resize_and_pad(x, jax.random.key(0), 1.0), x)  # min_scale 1
    noisy = RandomTransform(method="noise").transform(x * 0.5, jax.random.key(0))
    assert float(noisy.min()) >= 0 and float(noisy.max()) <= 1 and float(jnp.std(noisy)) > 0.05


def test_attacks_get_a_fresh_draw_per_query_point(linear):
    """The engine's attack-facing form of a random model: two-argument calls (PGD) draw
    from the example's key and the query point, so a new point is a new draw and the same
    point the same draw; calls with a key (APGD's EOT) use that key."""
    params, x = linear
    f = RandomTransform(method="noise", sigma=0.3).wrap(linear_logits)
    g = engine._keyed(f)
    pk = (params, jax.random.key(4))
    x2 = x.at[0, 0, 0, 0].add(1e-3)
    np.testing.assert_array_equal(g(pk, x), g(pk, x))
    assert not np.allclose(g(pk, x), g(pk, x2), atol=1e-2)
    assert not np.allclose(g(pk, x), g((params, jax.random.key(5)), x), atol=1e-2)
    np.testing.assert_array_equal(g(pk, x, jax.random.key(9)), f(params, x, jax.random.key(9)))
    assert g.random and jnp.abs(jax.grad(lambda z: g(pk, z).sum())(x)).sum() > 0


def test_two_argument_model_is_wrapped_and_evaluated_deterministically(linear):
    """A user's two-argument logits_fn stays deterministic through the engine; wrapped by a
    random transform it becomes random, and every attack (PGD: no key, APGD: keys of its
    own) gives the same masks for the same keys whatever the batch size."""
    params, x = linear
    y = jnp.argmax(linear_logits(params, x), -1)
    x, y = np.asarray(jnp.concatenate([x] * 4)), np.asarray(jnp.concatenate([y] * 4))
    key, score = jax.random.key(0), jax.random.key(1)
    plain = engine.attack_correct(PGD(steps=3), linear_logits, params, x, y, [0.1], key)[0]
    again = engine.attack_correct(PGD(steps=3), linear_logits, params, x, y, [0.1], key,
                                  score_key=score)[0]
    np.testing.assert_array_equal(plain, again)  # deterministic models ignore the score key
    rt = RandomTransform(min_scale=0.6, eot_draws=2)  # resize-pad
    f, h = rt.wrap(linear_logits), rt.adaptive(linear_logits)
    runs = [engine.attack_correct(PGD(steps=2), f, params, x, y, [0.0, 0.2], key, batch_size=b,
                                  attack_logits_fn=h, score_key=score)[0] for b in (5, 12)]
    np.testing.assert_array_equal(runs[0], runs[1])  # per-example keys: batching is invisible
    apgd = engine.attack_correct(APGD(steps=2, eot_iter=2), f, params, x, y, [0.0, 0.2], key,
                                 batch_size=12, attack_logits_fn=h, score_key=score)[0]
    clean = engine.clean_correct(f, params, x, y, batch_size=5, key=score)
    for masks in (runs[0], apgd):  # ε = 0 is scored on the clean draws
        np.testing.assert_array_equal(masks[0], clean)
        assert masks[1].sum() <= clean.sum()
    other = engine.clean_correct(f, params, x, y, batch_size=5, key=jax.random.key(2))
    assert not np.array_equal(clean, other)  # and those draws come from the key


# -- ensemble and fusion (library) -----------------------------------------------------------


def test_ensemble_of_one_model_equals_the_model(linear):
    params, x = linear
    np.testing.assert_array_equal(
        Ensemble(members=("a",)).wrap([linear_logits])((params,), x), linear_logits(params, x))
    probs = Ensemble(members=("a",), combine="probs").wrap([linear_logits])((params,), x)
    np.testing.assert_allclose(probs, jax.nn.log_softmax(linear_logits(params, x)), atol=1e-6)


def test_ensemble_averages(linear):
    params, x = linear
    g = lambda p, z: 2.0 * linear_logits(p, z) + 1.0  # noqa: E731
    z1, z2 = linear_logits(params, x), g(params, x)
    ens = Ensemble(members=("a", "b"), weights=(3.0, 1.0))
    np.testing.assert_allclose(ens.wrap([linear_logits, g])((params, params), x),
                               0.75 * z1 + 0.25 * z2, rtol=1e-6)
    probs = Ensemble(members=("a", "b"), combine="probs").wrap([linear_logits, g])((params, params), x)
    np.testing.assert_allclose(jnp.exp(probs), 0.5 * jax.nn.softmax(z1) + 0.5 * jax.nn.softmax(z2),
                               rtol=1e-5)
    grads = jax.grad(lambda p: ens.wrap([linear_logits, g])(p, x).sum())((params, params))
    assert all(jnp.abs(leaf).sum() > 0 for leaf in jax.tree.leaves(grads))  # through both


def test_fusion_weight_one_on_m1_equals_m1(linear):
    params, x = linear
    m2 = lambda p, z: -linear_logits(p, z)  # noqa: E731
    z1 = linear_logits(params, x)
    mixed = Fusion(weight=1.0, combine="logits").wrap([linear_logits, m2])((params, params), x)
    np.testing.assert_array_equal(mixed, z1)
    mixed = Fusion(weight=1.0).wrap([linear_logits, m2])((params, params), x)  # probabilities
    np.testing.assert_allclose(mixed, jax.nn.log_softmax(z1), atol=1e-6)
    np.testing.assert_array_equal(  # and weight 0 is M2
        Fusion(weight=0.0, combine="logits").wrap([linear_logits, m2])((params, params), x),
        m2(params, x))


def test_fusion_routes_by_disagreement(linear):
    params, x = linear
    z1 = linear_logits(params, x)
    m2 = lambda p, z: linear_logits(p, z).at[0].multiply(-1.0)  # noqa: E731  disagrees on example 0
    for detector in ("tv", "argmax"):
        fu = Fusion(mode="route", detector=detector, threshold=0.5)
        out = fu.wrap([linear_logits, m2])((params, params), x)
        np.testing.assert_array_equal(out[0], -z1[0])  # M2 answers where they disagree
        np.testing.assert_array_equal(out[1:], z1[1:])  # M1 elsewhere
        soft = fu.adaptive([linear_logits, m2])
        np.testing.assert_array_equal(jnp.argmax(soft((params, params), x), -1), jnp.argmax(out, -1))
        np.testing.assert_allclose(jax.nn.softmax(soft((params, params), x)), jax.nn.softmax(out),
                                   atol=1e-5)
    with_gate = jax.grad(lambda z: soft((params, params), z)[:, 0].sum())(x)
    assert jnp.abs(with_gate).sum() > 0 and fu.needs_adaptive and not Fusion().needs_adaptive


# -- sweeps ----------------------------------------------------------------------------------

MODEL = {"name": "mlp", "width": 32, "depth": 1}
STANDARD = {"name": "standard", "epochs": 3, "lr": 0.01}
PGD_AT = {"name": "pgd-at", "epochs": 1, "lr": 0.01, "eps": 0.2, "steps": 2}
NOISE = {"name": "random-transform", "label": "noise", "method": "noise", "sigma": 0.2,
         "eot_draws": 4}


def sweep(defenses, models=(MODEL,), attacks=None, train_examples=None, **top):
    data = {"name": "digits", "eval_examples": 60}
    if train_examples:
        data["train_examples"] = train_examples
    return {"name": "wrappers", "seed": 1, "data": data,
            "eval": {"batch_size": 60}, "models": [dict(m) for m in models],
            "defenses": [dict(d) for d in defenses],
            "attacks": attacks or [{"name": "pgd", "steps": 5, "random_start": False,
                                    "eps": [0.0, 0.1, 0.2]}], **top}


INPUT_SWEEP = sweep([STANDARD, {"name": "squeeze", "label": "bits", "bits": 2},
                     {"name": "squeeze", "label": "median", "method": "median", "window": 2},
                     NOISE])


@pytest.fixture(scope="module")
def input_run(tmp_path_factory):
    """standard, squeeze (bit depth, median) and random-transform (noise) on one MLP."""
    from bench.sweep import runner

    out = tmp_path_factory.mktemp("inputs") / "run"
    return out, runner.run_sweep(parse_config(INPUT_SWEEP), out, progress=False)


def acc(records):
    return records.set_index(["model", "defense", "attack", "eps"])["robust_acc"]


def test_input_wrappers_report_naive_and_adaptive_rows(input_run):
    _, records = input_run
    a = acc(records)
    assert set(records["defense"]) == {"standard", "bits", "bits (adaptive)", "median",
                                       "median (adaptive)", "noise", "noise (adaptive)"}
    assert len(records) == 7 * 4 and (records["model"] == "mlp").all()
    for d in ("bits", "median", "noise"):
        clean = a["mlp", d, "clean", 0.0]
        assert clean > 0.5 and a["mlp", f"{d} (adaptive)", "clean", 0.0] == clean
        assert a["mlp", d, "pgd", 0.0] == clean == a["mlp", f"{d} (adaptive)", "pgd", 0.0]
    # Bit depth masks the gradient completely: naive PGD (no random start) cannot move; BPDA
    # breaks it.
    assert a["mlp", "bits", "pgd", 0.2] == a["mlp", "bits", "clean", 0.0]
    assert a["mlp", "bits (adaptive)", "pgd", 0.2] < a["mlp", "bits", "pgd", 0.2] - 0.3
    # One draw per query is a noisy gradient; EOT's average is the stronger attack.
    for eps in (0.1, 0.2):
        assert a["mlp", "noise (adaptive)", "pgd", eps] < a["mlp", "noise", "pgd", eps]
    # The median's own (sparse) gradient is exact almost everywhere: no masking to undo, and
    # the naive row is a real attack too.
    assert a["mlp", "median", "pgd", 0.2] < a["mlp", "median", "clean", 0.0] - 0.3


def test_random_defense_sweep_is_deterministic_for_a_seed(input_run, tmp_path):
    """A second run of the random rows into a fresh directory, same seed, gives identical
    records (every key derives from the seed and names; the cells of a unit do not depend
    on the other entries of the config)."""
    from bench.sweep import runner

    first_dir, first = input_run
    shutil.copytree(first_dir / "checkpoints", tmp_path / "checkpoints")  # skip training
    second = runner.run_sweep(parse_config(sweep([STANDARD, NOISE])), tmp_path, progress=False)
    same = first[first["defense"].isin(set(second["defense"]))].reset_index(drop=True)
    cols = [c for c in first.columns if c not in VOLATILE + ["config_id", "run"]]
    pd.testing.assert_frame_equal(same[cols], second[cols])
    assert set(second["defense"]) == {"standard", "noise", "noise (adaptive)"}


MEMBERS = [STANDARD, PGD_AT,
           {"name": "ensemble", "label": "ens", "members": ["standard", "pgd-at"]},
           {"name": "ensemble", "label": "cross", "members": ["mlp/standard", "wide/pgd-at"],
            "combine": "probs"},
           {"name": "fusion", "label": "mix1", "members": ["standard", "pgd-at"], "weight": 1.0,
            "combine": "logits"},
           {"name": "fusion", "label": "route", "members": ["standard", "pgd-at"],
            "mode": "route"}]
TWO_MODELS = (MODEL, {"name": "mlp", "label": "wide", "width": 48, "depth": 1})


@pytest.fixture(scope="module")
def member_run(tmp_path_factory):
    from bench.sweep import runner
    from defenses import PGDAT, Standard

    trains = []
    real = {cls: cls.train for cls in (Standard, PGDAT)}
    with pytest.MonkeyPatch.context() as mp:
        for cls in real:
            mp.setattr(cls, "train", lambda self, *a, _r=real[cls], **k:
                       trains.append(type(self).__name__) or _r(self, *a, **k))
        out = tmp_path_factory.mktemp("members") / "run"
        cfg = parse_config(sweep(MEMBERS, models=TWO_MODELS, train_examples=600, attacks=[
            {"name": "fgsm", "eps": [0.0, 0.1]}]))
        records = runner.run_sweep(cfg, out, progress=False)
    return cfg, out, records, trains


def test_member_wrappers_rows_and_checkpoints(member_run):
    import json

    cfg, out, records, trains = member_run
    assert sorted(trains) == ["PGDAT", "PGDAT", "Standard", "Standard"]  # members never retrain
    rows = set(zip(records["model"], records["defense"]))
    per_model = {"standard", "pgd-at", "ens", "mix1", "route", "route (adaptive)"}
    assert rows == {(m, d) for m in ("mlp", "wide") for d in per_model} | {("mlp+wide", "cross")}
    assert json.loads((out / "plan.json").read_text())["models"] == ["mlp", "wide", "mlp+wide"]
    a = acc(records)
    by = records.set_index(["model", "defense", "attack", "eps"])
    for m in ("mlp", "wide"):
        for cell in (("clean", 0.0), ("fgsm", 0.1)):
            assert a[(m, "mix1", *cell)] == a[(m, "standard", *cell)]
        std, adv = (by.loc[(m, d, "clean", 0.0), "checkpoint"] for d in ("standard", "pgd-at"))
        assert by.loc[(m, "ens", "clean", 0.0), "checkpoint"] == f"{std}+{adv}"
    cross = by.loc[("mlp+wide", "cross", "clean", 0.0)]
    assert cross["checkpoint"] == (by.loc[("mlp", "standard", "clean", 0.0), "checkpoint"] + "+"
                                   + by.loc[("wide", "pgd-at", "clean", 0.0), "checkpoint"])
    assert json.loads(cross["model_options"]) == {"mlp": {"depth": 1, "width": 32},
                                                  "wide": {"depth": 1, "width": 48}}
    assert a["mlp+wide", "cross", "clean", 0.0] > 0.5


def test_member_wrapper_rerun_reuses_everything(member_run, monkeypatch):
    from bench.sweep import runner
    from defenses import PGDAT, Standard

    cfg, out, records, _ = member_run

    def boom(*a, **k):
        raise AssertionError("recomputed a finished cell or retrained")

    for target, name in ((engine, "attack_correct"), (engine, "clean_correct"),
                         (Standard, "train"), (PGDAT, "train")):
        monkeypatch.setattr(target, name, boom)
    pd.testing.assert_frame_equal(runner.run_sweep(cfg, out, progress=False), records)


def test_ensemble_cell_ids_change_with_a_members_weights():
    """Retraining one member (another PGD-AT setting: new weights digest, same model and
    same wrapper options) gives every wrapper that reads it new cell ids, and nothing else."""
    from bench.sweep.plan import make_plan

    def ids(pgd_at_epochs):
        defenses = [STANDARD, {**PGD_AT, "epochs": pgd_at_epochs}, *MEMBERS[2:]]
        plan = make_plan(parse_config(sweep(defenses, models=TWO_MODELS)), "fingerprint")
        return {(u.model.label, u.defense_label): {c.cell_id for c in u.cells} for u in plan.units}

    before, after = ids(1), ids(2)
    assert before.keys() == after.keys()
    changed = {row for row in before if before[row].isdisjoint(after[row])}
    unchanged = {row for row in before if before[row] == after[row]}
    assert changed | unchanged == set(before)
    assert changed == {("mlp+wide", "cross")} | {  # mix1 too: weight 0 still names M2's weights
        (m, d) for m in ("mlp", "wide") for d in ("pgd-at", "ens", "mix1", "route", "route (adaptive)")}
    assert unchanged == {("mlp", "standard"), ("wide", "standard")}


@pytest.mark.parametrize("entry,match", [
    ({"name": "ensemble", "members": ["standard", "nope"]},
     r"\[\[defenses\]\] #3 \(ensemble\): members\[1\] = 'nope' is not a training defense label "
     r"or <model>/<defense> here; choose one of: standard, pgd-at, mlp/standard, mlp/pgd-at"),
    ({"name": "ensemble", "members": []}, r"\[\[defenses\]\] #3: defense 'ensemble': members = \[\] is empty"),
    ({"name": "ensemble", "members": ["standard", "standard"]}, r"#3: .*lists 'standard' twice"),
    ({"name": "ensemble", "members": ["standard", "mlp/pgd-at"]}, r"#3 \(ensemble\): .*mixes"),
    ({"name": "ensemble", "members": ["standard"], "weights": [-1.0]},
     r"#3: defense 'ensemble': weights = -1.0 is impossible; it must be ≥ 0"),
    ({"name": "ensemble", "members": ["standard", "pgd-at"], "weights": [1.0]},
     r"#3: defense 'ensemble': weights = \[1.0\] has 1 entries for 2 members"),
    ({"name": "ensemble", "members": ["standard"], "combine": "max"}, r"combine = 'max' is not allowed"),
    ({"name": "fusion", "members": ["standard", "pgd-at"], "weight": 1.5},
     r"\[\[defenses\]\] #3: defense 'fusion': weight = 1.5 is impossible; it must be in \[0, 1\]"),
    ({"name": "fusion", "members": ["standard"]}, r"#3: defense 'fusion': members = \['standard'\] "
                                                  r"has 1 entries; it must have 2: the clean model M1"),
    ({"name": "fusion", "members": ["standard", "bits"]}, r"members\[1\] = 'bits' is not a training"),
    ({"name": "squeeze", "bits": 9}, r"#3: defense 'squeeze': bits = 9 is impossible"),
    ({"name": "squeeze", "method": "jpeg"}, r"method = 'jpeg' is not allowed; choose one of: bit-depth, median"),
    ({"name": "random-transform", "eot_draws": 0}, r"#3: defense 'random-transform': eot_draws = 0"),
    ({"name": "random-transform", "base": "bits"}, r"wraps base = 'bits', which is not the label"),
])
def test_wrapper_config_errors_are_one_line_with_location(entry, match):
    cfg = sweep([STANDARD, PGD_AT, entry, {"name": "squeeze", "label": "bits"}])
    with pytest.raises(ConfigError, match=match) as e:
        parse_config(cfg)
    assert "\n" not in str(e.value)


def test_members_toml_syntax(tmp_path):
    from bench.sweep.config import load_config

    path = tmp_path / "c.toml"
    path.write_text(textwrap.dedent("""
        [[models]]
        name = "mlp"
        [[models]]
        name = "cnn"
        [[defenses]]
        name = "standard"
        [[defenses]]
        name = "pgd-at"
        [[defenses]]
        name = "ensemble"
        members = ["mlp/standard", "cnn/pgd-at"]
        [[defenses]]
        name = "fusion"
        members = ["standard", "pgd-at"]
        mode = "route"
        [[attacks]]
        name = "pgd"
        eps = [0.1]
    """))
    cfg = load_config(path)
    ens, fus = cfg.defenses[2], cfg.defenses[3]
    assert [(m.model.label, m.defense.label) for m in ens.members] == [("mlp", "standard"),
                                                                       ("cnn", "pgd-at")]
    assert [(m.model, m.defense.label) for m in fus.members] == [(None, "standard"), (None, "pgd-at")]
