"""FAB / FAB-T: exact hyperplane-box projections, closed-form minimal distances on linear
models, the minimum-norm contract, and agreement with torchattacks' FAB."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attacks import fab, threat
from tests.conftest import linear_logits, quadratic_logits

NORMS = ("linf", "l2", "l1")
DUAL = {"linf": 1, "l2": 2, "l1": np.inf}


# ---- projections ---------------------------------------------------------------------


def _problems(seed, n=24, dim=30):
    """Random points in the box, normals with some zero coordinates and offsets b, half of
    them with the hyperplane meeting the box (b = ⟨w, u⟩ for a box point u)."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, 1, (n, dim)).astype(np.float32)
    w = rng.normal(size=(n, dim)).astype(np.float32)
    w[:, :4] *= rng.uniform(size=(n, 1)) < 0.5
    u = rng.uniform(0, 1, (n, dim)).astype(np.float32)
    b = (w * u).sum(1) + np.where(np.arange(n) < n // 2, 0.0, rng.normal(0, 8, n))
    return t, w, b.astype(np.float32)


def _lp_optimum(t, w, b, norm):
    """min ‖d‖ s.t. ⟨w, t + d⟩ = b, 0 ≤ t + d ≤ 1 as a linear program (L∞ and L1)."""
    from scipy.optimize import linprog

    dim = t.size
    if norm == "linf":   # variables (d, s): min s, |d_i| ≤ s
        cost = np.r_[np.zeros(dim), 1.0]
        a_ub = np.block([[np.eye(dim), -np.ones((dim, 1))], [-np.eye(dim), -np.ones((dim, 1))]])
        a_eq = np.r_[w, 0.0][None]
        bounds = [(-ti, 1 - ti) for ti in t] + [(0, None)]
    else:                # variables (d, u): min Σu, |d_i| ≤ u_i
        cost = np.r_[np.zeros(dim), np.ones(dim)]
        a_ub = np.block([[np.eye(dim), -np.eye(dim)], [-np.eye(dim), -np.eye(dim)]])
        a_eq = np.r_[w, np.zeros(dim)][None]
        bounds = [(-ti, 1 - ti) for ti in t] + [(0, None)] * dim
    res = linprog(cost, a_ub, np.zeros(2 * dim), a_eq, [b - w @ t], bounds=bounds,
                  method="highs")
    return res.fun if res.status == 0 else None


@pytest.mark.parametrize("norm", NORMS)
def test_projection_is_the_smallest_feasible_point(norm):
    t, w, b = _problems(0)
    d = np.asarray(fab.PROJECTIONS[norm](jnp.asarray(t), jnp.asarray(w), jnp.asarray(b)), np.float64)
    size = np.asarray(threat.distance(jnp.asarray(d), jnp.zeros_like(d), norm))
    meets = np.arange(len(b)) < len(b) // 2
    on_plane = np.abs((w * (t + d)).sum(1) - b) <= 1e-4 * (1 + np.abs(w).sum(1))
    assert on_plane[meets].all()
    assert np.all(t + d >= -1e-6) and np.all(t + d <= 1 + 1e-6)
    assert np.all(d[w == 0] == 0)
    # Where the plane misses the box: the corner moving ⟨w, ·⟩ furthest towards b.
    sign = np.sign((w * t).sum(1) - b)[:, None]
    corner = np.where(sign * w > 0, -t, 1 - t) * (w != 0)
    np.testing.assert_allclose(d[~meets & ~on_plane], corner[~meets & ~on_plane], atol=1e-6)
    # No smaller feasible point among many: crossings of the plane on segments between
    # random box points on either side of it.
    rng = np.random.default_rng(1)
    for i in np.flatnonzero(meets):
        u = rng.uniform(0, 1, (4000, t.shape[1]))
        s = u @ w[i] - b[i]
        lo, hi = u[s < 0][:200], u[s > 0][:200]
        sl, sh = s[s < 0][:200, None], s[s > 0][:200, None]
        cross = (lo[:, None] + (hi[None] - lo[:, None]) * (sl / (sl - sh.T))[..., None]).reshape(-1, t.shape[1])
        other = np.asarray(threat.distance(jnp.asarray(cross - t[i], jnp.float32),
                                           jnp.zeros(cross.shape, jnp.float32), norm))
        assert size[i] <= other.min() * (1 + 1e-5) + 1e-6
        if norm in ("linf", "l1"):
            pytest.importorskip("scipy")
            best = _lp_optimum(t[i].astype(np.float64), w[i].astype(np.float64), float(b[i]), norm)
            np.testing.assert_allclose(size[i], best, rtol=1e-4, atol=1e-6)
        else:   # KKT: d = clip(−λw, −t, 1 − t) for one λ ≥ 0
            free = (np.abs(d[i]) > 1e-6) & (t[i] + d[i] > 1e-6) & (t[i] + d[i] < 1 - 1e-6)
            lam = np.median(-d[i][free] / w[i][free])
            np.testing.assert_allclose(d[i], np.clip(-lam * w[i], -t[i], 1 - t[i]), atol=1e-5)


def test_projection_l2_closed_form_inside_the_box():
    rng = np.random.default_rng(3)
    t = rng.uniform(0.4, 0.6, (16, 50)).astype(np.float32)
    w = rng.normal(size=(16, 50)).astype(np.float32)
    b = ((w * t).sum(1) + rng.normal(0, 0.3, 16)).astype(np.float32)
    d = fab.projection_l2(jnp.asarray(t), jnp.asarray(w), jnp.asarray(b))
    want = ((b - (w * t).sum(1)) / (w * w).sum(1))[:, None] * w
    np.testing.assert_allclose(np.asarray(d), want, atol=1e-6)


@pytest.mark.parametrize("norm", NORMS)
def test_projection_matches_the_reference(norm):
    """Equal to the reference solvers (torchattacks ships copies of fab_projections.py),
    where the plane meets the box and where it does not."""
    pytest.importorskip("torchattacks")
    import torch
    from torchattacks.attacks import fab as tfab

    for seed, dim in ((4, 20), (5, 300)):
        t, w, b = _problems(seed, n=40, dim=dim)
        mine = fab.PROJECTIONS[norm](jnp.asarray(t), jnp.asarray(w), jnp.asarray(b))
        ref = getattr(tfab, f"projection_{norm}")(torch.tensor(t), torch.tensor(w), torch.tensor(b))
        np.testing.assert_allclose(np.asarray(mine), ref.numpy(), atol=1e-5)


# ---- closed form on linear models ----------------------------------------------------


def _linear_problem(norm, classes=5, batch=24):
    """A linear model whose minimal perturbations stay far from the box, and the exact
    minimal distances d* = min_{j≠y} (z_y − z_j) / ‖w_y − w_j‖_dual."""
    kw, kb, kx = jax.random.split(jax.random.key(11), 3)
    w = 0.3 * jax.random.normal(kw, (36, classes))
    b = 0.1 * jax.random.normal(kb, (classes,))
    x = jax.random.uniform(kx, (batch, 6, 6, 1), minval=0.45, maxval=0.55)
    z = linear_logits((w, b), x)
    y = jnp.argmax(z, -1)
    gap = jnp.take_along_axis(z, y[:, None], 1) - z
    dual = jnp.linalg.norm(w[:, y].T[:, None, :] - w.T[None], ord=DUAL[norm], axis=-1)
    best = jnp.where(jnp.arange(classes) == y[:, None], jnp.inf, gap / jnp.where(dual > 0, dual, 1)).min(1)
    # The box does not bind: the minimal move of every coordinate stays below 0.45; and
    # no example's logit margin is so small that float32 logits cannot resolve it.
    assert float(best.max()) < 0.4
    margin = jnp.where(jnp.arange(classes) == y[:, None], jnp.inf, gap).min(1)
    keep = np.flatnonzero(np.asarray(margin) > 5e-3)
    assert len(keep) >= batch - 4
    return (w, b), x[keep], y[keep], np.asarray(best)[keep]


def _ratio_on_a_line(eta, beta, alpha_max, steps):
    """FAB's best distance over d* on a linear model with the box not binding: every iterate
    stays on the segment from x to its projection, at s·d*, and both projections have norms
    (1 − s)·d* and d*, whatever the norm; so the run reduces to this recursion."""
    s, best = 0.0, np.inf
    for _ in range(steps):
        alpha = min((1 - s) / (2 - s), alpha_max)
        s = (1 - alpha) * (s + eta * (1 - s)) + alpha * eta
        if s > 1:
            best, s = min(best, s), beta * s
    return best


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("targeted", [True, False])
def test_closed_form_minimal_distance(norm, targeted):
    params, x, y, best = _linear_problem(norm)
    # Without the final bisection (refine = 0, the reference) the defaults stop 0.52%
    # outside: after the first success at 1.05·d* the backward step lands at 0.945·d*, whose
    # next step overshoots to 1.0052·d*, exactly what the recursion on the line predicts. The
    # bisection on [x, x_best] (the default) then lands within 1e-3, on the boundary's side.
    for options in (dict(refine=0), dict()):
        attack = fab.FAB(norm=norm, targeted=targeted, **options)
        x_adv, dist = jax.jit(
            lambda x, y: attack.minimize(linear_logits, params, x, y, jax.random.key(0)))(x, y)
        ratio = np.asarray(dist) / best
        assert np.all(np.argmax(linear_logits(params, x_adv), -1) != np.asarray(y))
        if attack.refine == 0:
            want = _ratio_on_a_line(attack.eta, attack.beta, attack.alpha_max, attack.steps)
            np.testing.assert_allclose(ratio, want, rtol=2e-4)
            assert np.all(ratio > 1.004)
        else:
            np.testing.assert_allclose(ratio, 1.0, rtol=1e-3)
            assert np.all(ratio >= 1.0 - 1e-4)


# ---- the attack contract ---------------------------------------------------------------


@pytest.fixture(scope="module")
def four_class():
    """A 4-class quadratic model on 6×6 images; the first three examples misclassified."""
    kw, kx = jax.random.split(jax.random.key(5))
    params = (2.0 * jax.random.normal(kw, (36, 4)), jnp.zeros(4))
    x = jax.random.uniform(kx, (12, 6, 6, 1))
    y = jnp.argmax(quadratic_logits(params, x), -1).astype(jnp.int32)
    return params, x, y.at[:3].set((y[:3] + 1) % 4)


@pytest.mark.parametrize("norm", NORMS)
def test_call_inside_ball_and_box(four_class, norm):
    params, x, y = four_class
    attack = fab.FAB(norm=norm, steps=20, n_target_classes=2)
    call = jax.jit(lambda eps, k: attack(quadratic_logits, params, x, y, eps, k))
    key = jax.random.key(3)
    x_adv0, dist = jax.jit(lambda k: attack.minimize(quadratic_logits, params, x, y, k))(key)
    pred = np.argmax(quadratic_logits(params, x), -1)
    dist = np.asarray(dist)
    assert np.all(dist[pred != np.asarray(y)] == 0)
    for eps in (0.0, 0.05, 1.0, 100.0):
        x_adv = call(jnp.float32(eps), key)
        d = np.asarray(threat.distance(x_adv, x, norm))
        assert np.all(d <= eps * (1 + 1e-6) + 1e-7)
        assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
        # Exactly the minimal examples within ε, x elsewhere.
        within = (dist <= eps)[:, None, None, None]
        np.testing.assert_allclose(np.asarray(x_adv), np.where(within, x_adv0, x), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(call(jnp.float32(0.0), key)), np.asarray(x))
    # Per-example ε.
    eps = jnp.linspace(0.0, 2.0, x.shape[0])
    x_adv = call(eps, key)
    assert np.all(np.asarray(threat.distance(x_adv, x, norm)) <= np.asarray(eps) + 1e-7)


def test_dist_inf_exactly_where_nothing_found(four_class):
    params, x, y = four_class
    # Too few steps and targets to fool every example.
    attack = fab.FAB(norm="l2", steps=1, n_target_classes=1)
    x_adv, dist = attack.minimize(quadratic_logits, params, x, y, jax.random.key(0))
    dist = np.asarray(dist)
    assert dist.dtype == np.float32
    fooled = np.argmax(quadratic_logits(params, x_adv), -1) != np.asarray(y)
    assert np.isinf(dist).any() and np.isfinite(dist).any()
    np.testing.assert_array_equal(np.isfinite(dist), fooled)
    np.testing.assert_array_equal(np.asarray(x_adv)[np.isinf(dist)], np.asarray(x)[np.isinf(dist)])
    np.testing.assert_allclose(dist[np.isfinite(dist)],
                               np.asarray(threat.distance(x_adv, x, "l2"))[np.isfinite(dist)])


@pytest.mark.parametrize("targeted", [True, False])
def test_deterministic_and_batch_of_one(four_class, targeted):
    params, x, y = four_class
    key = jax.random.key(9)
    # Restart 0 starts at x: batch of 12 and the engine's way (vmap over examples, batch 1
    # each, one key per example) agree.
    first = fab.FAB(norm="linf", steps=15, targeted=targeted)
    _, d_b = jax.jit(lambda x, y, k: first.minimize(quadratic_logits, params, x, y, k))(x, y, key)
    keys = jax.random.split(key, x.shape[0])
    _, d_1 = jax.jit(jax.vmap(
        lambda xi, yi, k: first.minimize(quadratic_logits, params, xi[None], yi[None], k)))(x, y, keys)
    np.testing.assert_allclose(np.asarray(d_1)[:, 0], np.asarray(d_b), rtol=1e-5)
    # With a random restart: the same for the same key, and never worse than restart 0 alone.
    attack = fab.FAB(norm="linf", steps=15, restarts=2, targeted=targeted, eps_init=0.2)
    run = jax.jit(lambda x, y, k: attack.minimize(quadratic_logits, params, x, y, k))
    a1, d1 = run(x, y, key)
    a2, d2 = run(x, y, key)
    np.testing.assert_array_equal(np.asarray(a1), np.asarray(a2))
    np.testing.assert_array_equal(np.asarray(d1), np.asarray(d2))
    assert np.all(np.asarray(d1) <= np.asarray(d_b) * (1 + 1e-5))


def test_options_are_checked():
    with pytest.raises(ValueError, match="norm"):
        fab.FAB(norm="l3")
    for bad in (dict(steps=0), dict(restarts=0), dict(alpha_max=1.5), dict(beta=-0.1),
                dict(eta=0.0), dict(n_target_classes=0), dict(eps_init=-1.0), dict(refine=-1)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            fab.FAB(**bad)
    assert fab.FAB.minimum_norm and fab.FAB().targeted


# ---- against torchattacks -----------------------------------------------------------------


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_matches_torchattacks(norm, capsys):
    """FAB-T on a 10-class linear model with identical weights in JAX and torch: per-example
    minimal distances over the 9 targets (torchattacks' single targeted runs) and robust
    accuracy from torchattacks' ``FAB(multi_targeted=True)`` at several ε."""
    pytest.importorskip("torchattacks")
    import torch
    import torchattacks

    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # ~20× faster than contended threads for these tiny ops
    try:
        _compare_with_torchattacks(norm, torch, torchattacks, capsys)
    finally:
        torch.set_num_threads(threads)


def _compare_with_torchattacks(norm, torch, torchattacks, capsys):
    classes, n = 10, 100
    kw, kb, kx = jax.random.split(jax.random.key(21), 3)
    w = 0.2 * jax.random.normal(kw, (64, classes))
    b = 0.1 * jax.random.normal(kb, (classes,))
    x = jax.random.uniform(kx, (n, 8, 8, 1))
    params = (w, b)
    y = jnp.argmax(linear_logits(params, x), -1).astype(jnp.int32)
    steps = 30
    attack = fab.FAB(norm=norm, steps=steps, refine=0)  # the reference has no bisection
    _, dist = jax.jit(lambda x, y: attack.minimize(linear_logits, params, x, y, jax.random.key(0)))(x, y)
    dist = np.asarray(dist)

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, classes))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor(np.asarray(w).T))
        model[1].bias.copy_(torch.tensor(np.asarray(b)))
    xt = torch.tensor(np.asarray(x)).permute(0, 3, 1, 2).contiguous()
    yt = torch.tensor(np.asarray(y), dtype=torch.long)
    tnorm = {"linf": "Linf", "l2": "L2"}[norm]
    ta = torchattacks.FAB(model, norm=tnorm, eps=1e3, steps=steps, multi_targeted=True,
                          n_classes=classes)
    ref = np.full(n, np.inf)
    for target_class in range(2, classes + 1):
        ta.target_class = target_class
        adv = ta.attack_single_run_targeted(xt, yt, use_rand_start=False)
        with torch.no_grad():
            fooled = (model(adv).argmax(1) != yt).numpy()
        d = np.asarray(threat.distance(jnp.asarray(adv.permute(0, 2, 3, 1).numpy()), x, norm))
        ref = np.minimum(ref, np.where(fooled, d, np.inf))
    both = np.isfinite(ref) & np.isfinite(dist)
    np.testing.assert_array_equal(np.isfinite(dist), np.isfinite(ref))
    rel = np.abs(dist[both] / ref[both] - 1)
    call = jax.jit(lambda eps: attack(linear_logits, params, x, y, eps, jax.random.key(0)))
    accs = []
    for eps in np.quantile(ref[both], [0.25, 0.5, 0.75]):
        ta_eps = torchattacks.FAB(model, norm=tnorm, eps=float(eps), steps=steps,
                                  multi_targeted=True, n_classes=classes)
        with torch.no_grad():
            acc_ref = float((model(ta_eps(xt, yt)).argmax(1) == yt).float().mean())
        x_adv = call(jnp.float32(eps))
        acc = float(np.mean(np.argmax(linear_logits(params, x_adv), -1) == np.asarray(y)))
        accs.append((float(eps), acc, acc_ref))
    with capsys.disabled():
        print(f"\nFAB-T {norm} vs torchattacks: median rel. diff {np.median(rel):.2e}, "
              f"max {rel.max():.2e}; (eps, acc, acc_torchattacks): "
              + ", ".join(f"({e:.4f}, {a:.2f}, {r:.2f})" for e, a, r in accs))
    assert np.median(rel) < 1e-4 and rel.max() < 1e-2
    for _, acc, acc_ref in accs:
        assert abs(acc - acc_ref) <= 0.02
