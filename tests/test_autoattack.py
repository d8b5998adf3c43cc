"""AutoAttack's cascade in the engine, minimum-norm scoring and attack info in records."""

import jax
import numpy as np
import pytest

import attacks
import bench
from bench.sweep import engine


@pytest.fixture(scope="module")
def small(trained_mlp, digits):
    f, params = trained_mlp
    return f, params, digits.x_test[:32], digits.y_test[:32]


AA = attacks.AutoAttack(steps=5, queries=40)
EPS = [0.05, 0.1]


def test_cascade_equals_worst_case_of_stages_on_all_points(small):
    """The cascade (each stage on the still-robust points, padded buckets) gives the same
    per-example result as the pure kernel (every stage on every point) and as the
    per-example worst case of the stages run separately with the same keys; it is below
    every stage and below PGD."""
    f, params, x, y = small
    key = jax.random.key(5)
    # Batch 8: every bucket has one shape, so each stage compiles once here and the separate
    # stage runs below reuse those executables (the kernel path, AutoAttack.run, is held to
    # the same keys by test_kernel_equals_cascade_on_one_batch).
    cascade, _, _, info = engine.attack_correct(AA, f, params, x, y, EPS, key, batch_size=8,
                                                with_info=True)
    clean = engine.clean_correct(f, params, x, y)
    worst = np.broadcast_to(clean, cascade.shape).copy()
    n = len(x)
    example_keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, np.arange(n))
    for s, (_, stage) in enumerate(AA.stages(), start=1):
        keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(example_keys, s)
        ok, _, _, _ = engine._run_attack(stage, f, params, x, y, EPS,
                                         np.asarray(jax.random.key_data(keys)),
                                         jax.random.key_impl(key), 8, None)
        assert np.all(cascade <= ok)  # never above a stage, per example
        worst &= ok
    np.testing.assert_array_equal(cascade, worst)
    pgd, _, _ = engine.attack_correct(attacks.PGD(steps=10), f, params, x, y, EPS, key)
    assert np.all(cascade.mean(1) <= pgd.mean(1))
    # Stage bookkeeping: -1 misclassified clean, 0 robust, s broken by stage s.
    np.testing.assert_array_equal(info["stage"] == 0, cascade)
    np.testing.assert_array_equal((info["stage"] == -1)[0], ~clean)
    assert np.all(cascade.mean(1)[:-1] >= cascade.mean(1)[1:])  # non-increasing in ε


def test_kernel_equals_cascade_on_one_batch(small):
    """The pure kernel (AutoAttack.run: every stage on every point, first success kept) and
    the engine's cascade give the same masks and stage bookkeeping for the same key."""
    f, params, x, y = small
    key = jax.random.key(6)
    x, y = x[:16], y[:16]
    # Batch 8, as above: the cascade's stage executables are already compiled.
    # ε = 0.03: APGD-CE breaks some points and APGD-T others, so the bookkeeping of a later
    # stage is compared too.
    cascade, _, _, info = engine.attack_correct(AA, f, params, x, y, [0.03], key, batch_size=8,
                                                with_info=True)
    kernel, _, _, kinfo = engine.attack_correct(AA, f, params, x, y, [0.03], key, batch_size=8,
                                                with_info=True, cascade=False)
    np.testing.assert_array_equal(cascade, kernel)
    np.testing.assert_array_equal(info["stage"], kinfo["stage"])
    assert {1, 2} <= set(np.unique(info["stage"]))  # the first and a later stage broke points


def test_autoattack_records_say_which_stage_broke_how_many(small):
    import json

    f, params, x, y = small
    records = bench.evaluate(f, params, (x, y), [AA], eps=EPS, batch_size=8)
    for _, row in records[records["attack"] == "autoattack"].iterrows():
        details = json.loads(row["details"])
        assert list(details["broken_by"]) == [name for name, _ in AA.stages()]
        broken = sum(details["broken_by"].values())
        assert broken + details["misclassified_clean"] + row["correct"] == row["examples"]


def test_square_records_carry_queries(small):
    f, params, x, y = small
    records = bench.evaluate(f, params, (x, y), [attacks.Square(queries=60)], eps=[0.0, 0.2])
    row = records[(records["attack"] == "square") & (records["eps"] == 0.2)].iloc[0]
    assert row["correct"] < records.iloc[0]["correct"]  # it broke some points
    assert 1 <= row["queries_median"] <= 60 and 1 <= row["queries_mean"] <= 60
    at_zero = records[(records["attack"] == "square") & (records["eps"] == 0.0)].iloc[0]
    assert np.isnan(at_zero["queries_mean"])  # nothing fooled at ε = 0


def test_minimum_norm_attack_scores_every_eps_from_one_run(small):
    """FAB runs once; the accuracy at each ε equals calling the kernel at that ε, and the
    per-example distances come back as info."""
    f, params, x, y = small
    fab = attacks.FAB(steps=10, n_target_classes=3)
    eps = [0.0, 0.03, 0.08, 0.2]
    key = jax.random.key(2)
    masks, _, _, info = engine.attack_correct(fab, f, params, x, y, eps, key, with_info=True)
    dist = info["distance"][0]
    np.testing.assert_array_equal(info["distance"][1], dist)
    clean = engine.clean_correct(f, params, x, y)
    for i, e in enumerate(eps):
        np.testing.assert_array_equal(masks[i], clean & ~(dist <= e))
    assert masks[-1].sum() < masks[0].sum()


def test_torch_twin_and_the_crosscheck_mapping():
    """The PyTorch twin computes the cnn's logits; every registered attack that torchattacks
    also has maps to it with the same budget."""
    pytest.importorskip("torch")
    pytest.importorskip("torchattacks")
    from bench.pytorch.crosscheck import torch_attack
    from bench.pytorch.torch_twin import cnn_twin
    from models import CNN, init_variables

    module = CNN(num_classes=10, mean=(0.4,), std=(0.3,), width=4, dense=8)
    params = init_variables(module, jax.random.key(0), (8, 8, 1))
    x = np.asarray(jax.random.uniform(jax.random.key(1), (5, 8, 8, 1)))
    net = cnn_twin(module, params, x)
    for name, attack in [("pgd", attacks.PGD()), ("apgd-ce", attacks.APGD()),
                         ("apgd-t", attacks.APGDT(norm="l2")), ("fab", attacks.FAB()),
                         ("square", attacks.Square()), ("autoattack", attacks.AutoAttack())]:
        ta = torch_attack(name, attack, net, 0.1, 10, 0)
        assert ta is not None, name
        for sub in getattr(ta, "attacks", [ta]):  # AutoAttack: torchattacks' MultiAttack
            assert abs(float(sub.eps) - 0.1) < 1e-9, (name, sub)
            if hasattr(sub, "steps") and name != "pgd":
                assert sub.steps == attack.stages()[0][1].steps if name == "autoattack" \
                    else sub.steps == attack.steps, (name, sub)
    assert torch_attack("pgd", attacks.PGD(norm="l1"), net, 0.1, 10, 0) is None
    import torch

    from bench.pytorch.torch_twin import to_torch
    from models import make_logits_fn

    with torch.no_grad():
        twin = net(to_torch(x)).numpy()
    np.testing.assert_allclose(twin, make_logits_fn(module)(params, x), atol=1e-5)


def _settings(attack):
    keep = ("norm", "steps", "restarts", "loss", "n_target_classes", "targeted", "refine",
            "queries", "p_init", "resc_schedule", "rho", "eot_iter", "alpha_max", "eta", "beta")
    return {k: getattr(attack, k) for k in keep if hasattr(attack, k)}


def test_standard_stages_follow_the_reference():
    """fra31/auto-attack, autoattack.py: APGD(n_restarts=1 in set_version, n_iter=100, rho=.75,
    eot_iter=1), APGDAttack_targeted(n_iter=100, n_target_classes=9, n_restarts=1),
    FABAttack_PT(n_iter=100, n_restarts=1, n_target_classes=9; no final bisection), and
    SquareAttack(p_init=.8, n_queries=5000, resc_schedule=False), whose loop runs n_queries
    iterations after the initial query (our budget counts that query: 5001)."""
    got = {name: _settings(a) for name, a in attacks.AutoAttack().stages()}
    assert list(got) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert got["apgd-ce"] == dict(norm="linf", steps=100, restarts=1, loss="ce", rho=0.75,
                                  eot_iter=1)
    assert {k: got["apgd-t"][k] for k in ("steps", "restarts", "n_target_classes", "rho")} \
        == dict(steps=100, restarts=1, n_target_classes=9, rho=0.75)
    assert got["fab-t"] == dict(norm="linf", steps=100, restarts=1, n_target_classes=9,
                                targeted=True, refine=0, alpha_max=0.1, eta=1.05, beta=0.9)
    assert got["square"] == dict(norm="linf", restarts=1, loss="margin", queries=5001,
                                 targeted=False, p_init=0.8, resc_schedule=False)
    # the L2 version has the same settings but the norm
    l2 = {name: _settings(a) for name, a in attacks.AutoAttack(norm="l2").stages()}
    assert {n: {**s, "norm": "linf"} for n, s in l2.items()} == got


def test_stronger_fab_and_square_settings_are_options_of_every_version():
    """fab_refine reaches every FAB stage (standard and plus), square_resc_schedule every
    Square stage; both are fields, so a cell that uses them has its own id."""
    for version in ("standard", "plus"):
        aa = attacks.AutoAttack(version=version, fab_refine=12, square_resc_schedule=True,
                                queries=99)
        stages = dict(aa.stages())
        fabs = [a for n, a in stages.items() if n.startswith("fab")]
        assert fabs and all(a.refine == 12 for a in fabs)
        assert stages["square"].resc_schedule is True and stages["square"].queries == 100
        plain = dict(attacks.AutoAttack(version=version).stages())
        assert all(a.refine == 0 for n, a in plain.items() if n.startswith("fab"))
    from bench.sweep.plan import stable_hash

    assert stable_hash(attacks.AutoAttack()) != stable_hash(attacks.AutoAttack(fab_refine=12))
    with pytest.raises(ValueError, match="fab_refine"):
        attacks.AutoAttack(fab_refine=-1)


def test_square_stage_spends_queries_iterations_after_the_initial_query(small):
    """The reference counts the initial query and then runs n_queries iterations, so an
    example it never fools costs n_queries + 1 queries; AutoAttack(queries=7)'s Square does
    the same (ε = 0 fools nothing)."""
    f, params, x, y = small
    square = dict(attacks.AutoAttack(queries=7).stages())["square"]
    _, _, _, info = engine.attack_correct(square, f, params, x[:4], y[:4], [0.0],
                                          jax.random.key(0), with_info=True)
    clean = engine.clean_correct(f, params, x[:4], y[:4])
    assert clean.any()
    np.testing.assert_array_equal(info["queries"][0][clean], 8)
