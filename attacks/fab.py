"""FAB: the fast adaptive boundary attack (Croce & Hein, ICML 2020), a minimum-norm attack.

FAB-T (``targeted=True``, the default) is AutoAttack's ``fab-t``: for each of the top
``n_target_classes`` classes under the clean logits it linearises f = z_t − z_y at the
current iterate with one input gradient, projects the iterate and the clean point onto the
hyperplane {f + ⟨∇f, δ⟩ = 0} ∩ [0, 1] in the threat norm (exact solvers: a bracketed
Newton water level for L∞ and L2, a sort for L1), and takes the biased step
x ← clip((1−α)(x + ηδ) + α(x₀ + ηδ₀)), α = min(‖δ‖/(‖δ‖+‖δ₀‖), α_max). Whenever the new
point is misclassified it is kept if closer than the best so far and pulled back towards x₀
by the factor β. Untargeted FAB (``targeted=False``) linearises
every z_j − z_y (the full input Jacobian, K backward passes) and follows the hyperplane of
the closest class by |f_j| / ‖∇f_j‖_dual. Targets and restarts are ``vmap`` axes; restart 0
starts at x, later ones at a random point at distance ``eps_init``/2, as in the reference
(github.com/fra31/auto-attack, ``fab_base.py``). Success is the untargeted criterion
(prediction ≠ y) in both versions, as in the reference.

Cost per target and restart: steps × (one forward + input-gradient pass, one forward pass
for the success check, two box-constrained projections, ~24 elementwise passes each).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from attacks import base, checks, fastpath, losses, threat

DEFAULT_EPS_INIT: dict[str, float] = {"linf": 0.3, "l2": 1.0, "l1": 5.0}
"""The reference's radius for random restarts when ``eps_init`` is not given."""

_NO_MOVE = 1e-8   # the reference's floor for ‖δ‖ in α
_REL_ZERO = 1e-10  # L2: hyperplane coefficients below this fraction of the largest are zero


# --------------------------------------------------------------------------------------
# Projections onto a hyperplane intersected with the box [0, 1]^D.
#
# Every solver takes points t [N, D], normals w [N, D] and offsets b [N] and returns the
# displacement d [N, D] of smallest norm with ⟨w, t + d⟩ = b and t + d ∈ [0, 1]^D; where
# the hyperplane does not meet the box, the box corner that moves ⟨w, ·⟩ furthest towards b
# (as the reference does). Coordinates with w_i = 0 never move.
# --------------------------------------------------------------------------------------


def _oriented(t, w, b):
    """Flips each row so that ⟨w, t⟩ − b = c ≥ 0: then d must decrease ⟨w, ·⟩ by c. Returns
    (c, |w|, the move direction −sign(w) of each coordinate, its box capacity p ≥ 0)."""
    c = jnp.sum(w * t, axis=1) - b
    w = jnp.where(c[:, None] >= 0, w, -w)
    cap = jnp.where(w > 0, t, 1.0 - t)
    return jnp.abs(c), jnp.abs(w), -jnp.sign(w), jnp.maximum(cap, 0.0)


_BISECTIONS = 20  # geometric bisection steps that bracket the water level ...
_NEWTON = 4       # ... then Newton steps, exact on the bracket's last linear piece


def _water_level(q, r, c):
    """The λ ≥ 0 with Σ_i q_i·min(λ, r_i) = c for weights q ≥ 0 and breakpoints r ≥ 0, per row,
    and whether it exists (c < Σ q_i r_i).

    The left side F(λ) is increasing, concave and piecewise linear. λ is bracketed between
    c / Σq (where F ≤ c) and max r by geometric bisection, then Newton steps from the lower
    end: on a concave function they stay below the root and land on it exactly once they
    reach its linear piece. This costs ~24 elementwise passes over the row; the sort of the
    breakpoints that the reference uses costs 10–20× more on CPU.
    """
    tiny = jnp.finfo(q.dtype).tiny
    level = lambda lam: jnp.sum(q * jnp.minimum(lam[:, None], r), axis=1)  # noqa: E731
    lo = c / jnp.maximum(jnp.sum(q, axis=1), tiny)
    hi = jnp.maximum(jnp.max(r, axis=1), lo)

    def bisect(_, bounds):
        lo, hi = bounds
        mid = jnp.sqrt(lo * hi)
        below = level(mid) < c
        return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

    def newton(_, lam):
        slope = jnp.sum(jnp.where(r > lam[:, None], q, 0.0), axis=1)
        return jnp.maximum(lam, lam + (c - level(lam)) / jnp.maximum(slope, tiny))

    lo, _ = jax.lax.fori_loop(0, _BISECTIONS, bisect, (lo, hi))
    lam = jax.lax.fori_loop(0, _NEWTON, newton, lo)
    return lam, c < jnp.sum(q * r, axis=1)


def projection_linf(t: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
    """Smallest-L∞ d with ⟨w, t + d⟩ = b and t + d ∈ [0, 1] (the reference's ``projection_linf``).

    d_i = −sign(w_i)·min(λ, p_i) with p_i the room in the box: a water level λ solving
    Σ|w_i|·min(λ, p_i) = c.
    """
    c, aw, direction, cap = _oriented(t, w, b)
    live = aw > 0
    lam, feasible = _water_level(aw, jnp.where(live, cap, 0.0), c)
    size = jnp.where(feasible[:, None], jnp.minimum(lam[:, None], cap), cap)
    return jnp.where(live, direction * size, 0.0)


def projection_l2(t: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
    """Smallest-L2 d with ⟨w, t + d⟩ = b and t + d ∈ [0, 1] (the reference's ``projection_l2``).

    d_i = clip(−λ w_i, −t_i, 1 − t_i): a water level λ solving Σ w_i²·min(λ, p_i/|w_i|) = c.
    Each row is first scaled by its largest |w_i| (the hyperplane is unchanged), so tiny
    gradients neither underflow nor overflow.
    """
    scale = jnp.maximum(jnp.max(jnp.abs(w), axis=1), jnp.finfo(w.dtype).tiny)
    c, aw, direction, cap = _oriented(t, w / scale[:, None], b / scale)
    live = aw > _REL_ZERO
    r = jnp.where(live, cap / jnp.where(live, aw, 1.0), 0.0)
    lam, feasible = _water_level(jnp.where(live, aw * aw, 0.0), r, c)
    size = jnp.where(feasible[:, None], jnp.minimum(aw * lam[:, None], cap), cap)
    return jnp.where(live, direction * size, 0.0)


def projection_l1(t: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
    """Smallest-L1 d with ⟨w, t + d⟩ = b and t + d ∈ [0, 1] (the reference's ``projection_l1``).

    Greedy: coordinates in decreasing |w_i| move to the box edge until the rest of c fits in
    the next one, which moves part of the way; the others stay.
    """
    c, aw, direction, cap = _oriented(t, w, b)
    n, dim = w.shape
    live = aw > 0
    room = jnp.where(live, aw * cap, 0.0)                        # decrease each can give
    neg_aw, room_s, cap_s, aw_s, perm = jax.lax.sort(
        (-aw, room, cap, aw, jnp.broadcast_to(jnp.arange(dim), (n, dim))), dimension=1, num_keys=1)
    before = jnp.pad(jnp.cumsum(room_s, axis=1)[:, :-1], ((0, 0), (1, 0)))
    m = jnp.clip(jnp.sum(before < c[:, None], axis=1) - 1, 0, dim - 1)[:, None]
    rest = c[:, None] - jnp.take_along_axis(before, m, axis=1)
    part = rest / jnp.maximum(jnp.take_along_axis(aw_s, m, axis=1), jnp.finfo(w.dtype).tiny)
    k = jnp.arange(dim)[None, :]
    size_s = jnp.where(k < m, cap_s, jnp.where(k == m, jnp.clip(part, 0.0, cap_s), 0.0))
    size = jnp.zeros_like(size_s).at[jnp.arange(n)[:, None], perm].set(size_s)
    feasible = c < jnp.sum(room, axis=1)
    size = jnp.where(feasible[:, None], size, cap)
    return jnp.where(live, direction * size, 0.0)


PROJECTIONS = {"linf": projection_linf, "l2": projection_l2, "l1": projection_l1}


def _dual_norm(g: jax.Array, norm: str) -> jax.Array:
    """The dual norm of each row (last axis) of g: L1 for L∞, L2 for L2, L∞ for L1."""
    if norm == "linf":
        return jnp.sum(jnp.abs(g), axis=-1)
    if norm == "l2":
        return jnp.sqrt(jnp.sum(g * g, axis=-1))
    return jnp.max(jnp.abs(g), axis=-1)


def _row_norm(d: jax.Array, norm: str) -> jax.Array:
    return threat.distance(d, jnp.zeros_like(d), norm)


@dataclasses.dataclass(frozen=True)
class FAB(base.MinimumNorm):
    """FAB (Croce & Hein, 2020): minimally distorted adversarial examples; FAB-T by default.

    A minimum-norm attack: :meth:`minimize` returns, per example, the closest adversarial
    example found and its distance; ``__call__`` keeps it where it lies inside the ε-ball.

    Attributes:
      norm: threat model, ``linf``, ``l2`` or ``l1``.
      targeted: FAB-T (AutoAttack's ``fab-t``): one run per target among the top
        ``n_target_classes`` other classes; else untargeted FAB (full Jacobian per step).
      steps: iterations per run.
      restarts: runs per target; restart 0 starts at x, the others at a random point.
      n_target_classes: targets per example for FAB-T (at most K − 1).
      alpha_max: cap on the weight α of the step from the clean point.
      eta: overshoot of each projection step.
      beta: backward step towards the clean point after a success.
      eps_init: radius scale of the random restarts (they start at distance eps_init / 2,
        as in the reference); ``None`` uses the reference's default for ``norm`` (0.3 L∞,
        1 L2, 5 L1). AutoAttack passes its ε here.
      refine: bisection steps on the segment from x to the closest point found, after the
        runs (one forward pass each; the reference has none, ``refine = 0``). FAB's
        overshoot η and backward step β leave the best iterate up to ~0.5% outside the
        boundary (1.0052·d* on a linear model with the defaults); 12 steps bring it within
        2⁻¹² of the segment's crossing.
    """

    numerics: ClassVar[int] = 1

    norm: str = "linf"
    targeted: bool = True
    steps: int = 100
    restarts: int = 1
    n_target_classes: int = 9
    alpha_max: float = 0.1
    eta: float = 1.05
    beta: float = 0.9
    eps_init: float | None = None
    refine: int = 12

    def __post_init__(self):
        checks.check_choice("norm", self.norm, threat.NORMS)
        checks.check_count("steps", self.steps, checks.MAX_STEPS)
        checks.check_count("restarts", self.restarts, checks.MAX_RESTARTS)
        checks.check_positive("n_target_classes", self.n_target_classes)
        checks.check_range("alpha_max", self.alpha_max, 0.0, 1.0)
        checks.check_positive("eta", self.eta)
        checks.check_range("beta", self.beta, 0.0, 1.0)
        if self.eps_init is not None:
            checks.check_positive("eps_init", self.eps_init)
        checks.check_positive("refine", self.refine, allow_zero=True)

    # ---- one run: one target (or untargeted), one start --------------------------------

    def _start(self, x, key):
        """The reference's random start: x + (eps_init/2)·u/‖u‖, u uniform in the cube (L∞)
        or Gaussian (L2, L1), clipped to [0, 1]."""
        radius = 0.5 * (self.eps_init if self.eps_init is not None else DEFAULT_EPS_INIT[self.norm])
        if self.norm == "linf":
            u = jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0)
        else:
            u = jax.random.normal(key, x.shape, x.dtype)
        n = _row_norm(u.reshape(x.shape[0], -1), self.norm).reshape((-1,) + (1,) * (x.ndim - 1))
        return jnp.clip(x + radius * u / jnp.maximum(n, 1e-12), 0.0, 1.0)

    def _linearise(self, logits_fn, params, z, y, target, key):
        """(f [B], ∇f [B, D]) of the decision function at z: z_t − z_y (FAB-T, one gradient)
        or, untargeted, the z_j − z_y of the closest j by |f_j| / ‖∇f_j‖_dual."""
        bsz = z.shape[0]
        logits = lambda v: base.apply_logits(logits_fn, params, v, key)  # noqa: E731
        if self.targeted:
            def diff(v):
                out = logits(v)
                f = (jnp.take_along_axis(out, target[:, None], 1)
                     - jnp.take_along_axis(out, y[:, None], 1))[:, 0]
                return jnp.sum(f), f

            g, f = jax.grad(diff, has_aux=True)(z)
            return f, g.reshape(bsz, -1)
        out, vjp = jax.vjp(logits, z)
        k = out.shape[-1]
        one_y = jax.nn.one_hot(y, k, dtype=out.dtype)
        cot = jnp.eye(k, dtype=out.dtype)[:, None, :] - one_y[None]            # [K, B, K]
        grads = jax.vmap(lambda ct: vjp(ct)[0])(cot).reshape(k, bsz, -1)      # ∇(z_j − z_y)
        f = (out - jnp.sum(out * one_y, axis=1, keepdims=True)).T              # [K, B]
        f = jnp.where(one_y.T > 0, 1e10, f)
        closest = jnp.argmin(jnp.abs(f) / (1e-12 + _dual_norm(grads, self.norm)), axis=0)
        f = jnp.take_along_axis(f, closest[None], 0)[0]
        g = jnp.take_along_axis(grads, closest[None, :, None], 0)[0]
        return f, g

    def _run(self, logits_fn, params, x, y, target, key, random_start):
        """One FAB run from x (or a random start); per example the closest misclassified
        iterate (x where none) and its distance (inf where none)."""
        bsz = x.shape[0]
        k_start, k_loop = jax.random.split(key)
        x1 = jnp.where(random_start, self._start(x, k_start), x)
        x0 = x.reshape(bsz, -1)
        project = PROJECTIONS[self.norm]
        expand = lambda v: v.reshape((-1,) + (1,) * (x.ndim - 1))  # noqa: E731

        def body(i, carry):
            z, x_best, d_best = carry
            k_lin, k_check = jax.random.split(jax.random.fold_in(k_loop, i))
            f, w = self._linearise(logits_fn, params, z, y, target, k_lin)
            zf = z.reshape(bsz, -1)
            b = jnp.sum(w * zf, axis=1) - f                    # hyperplane ⟨w, v⟩ = b
            d = project(jnp.concatenate([zf, x0]), jnp.concatenate([w, w]),
                        jnp.concatenate([b, b]))
            a = jnp.maximum(_row_norm(d, self.norm), _NO_MOVE)
            d1, d2, a1, a2 = d[:bsz], d[bsz:], a[:bsz], a[bsz:]
            alpha = jnp.clip(a1 / (a1 + a2), 0.0, self.alpha_max)[:, None]
            zf = jnp.clip((1.0 - alpha) * (zf + self.eta * d1) + alpha * (x0 + self.eta * d2),
                          0.0, 1.0)
            z = zf.reshape(x.shape)
            pred = jnp.argmax(base.apply_logits(logits_fn, params, z, k_check), axis=-1)
            success = pred != y
            dist = _row_norm(zf - x0, self.norm)
            better = success & (dist < d_best)
            x_best = jnp.where(expand(better), z, x_best)
            d_best = jnp.where(better, dist, d_best)
            z = jnp.where(expand(success), (x0 + self.beta * (zf - x0)).reshape(x.shape), z)
            return z, x_best, d_best

        init = (x1, x, jnp.full((bsz,), jnp.inf, x.dtype))
        _, x_best, d_best = jax.lax.fori_loop(0, self.steps, body, init)
        return x_best, d_best

    def _refine(self, logits_fn, params, x, x_adv, y, key):
        """The point closest to x on the segment [x, x_adv] that is still misclassified, by
        bisection on t ∈ [0, 1] (x_adv itself, t = 1, is misclassified or equal to x)."""
        return base.bisect_segment(
            x, x_adv, self.refine,
            lambda z, i: jnp.argmax(base.apply_logits(
                logits_fn, params, z, jax.random.fold_in(key, i)), axis=-1) != y,
            project=lambda z: jnp.clip(z, 0.0, 1.0))

    # ---- public ------------------------------------------------------------------------

    @base.compiled
    def minimize(self, logits_fn, params, x, y, key, target=None):
        """Per example the closest adversarial example found and its ``norm`` distance to x.

        Returns (x_adv, dist): dist float32 [B] is ``threat.distance(x_adv, x, norm)``, 0
        where x is misclassified already (x_adv = x), ``inf`` where no run succeeded
        (x_adv = x). FAB-T attacks the given ``target`` [B] if any, else the top
        ``n_target_classes`` other classes under the clean logits.
        """
        logits_fn = fastpath.fast(logits_fn)
        k_clean, k_runs = jax.random.split(key)
        clean = base.apply_logits(logits_fn, params, x, k_clean)
        if self.targeted:
            if target is not None:
                targets = jnp.asarray(target, y.dtype)[None]
            else:
                count = min(self.n_target_classes, clean.shape[-1] - 1)
                targets = losses.top_targets(clean, y, count)         # [T, B]
        else:
            targets = y[None]                                          # unused
        n_t = targets.shape[0]
        runs_t = jnp.tile(targets, (self.restarts, 1))                # [R·T, B]
        keys = jax.random.split(k_runs, self.restarts * n_t)
        random = jnp.repeat(jnp.arange(self.restarts) > 0, n_t)
        xs, ds = jax.vmap(
            lambda t, k, r: self._run(logits_fn, params, x, y, t, k, r))(runs_t, keys, random)
        best = jnp.argmin(ds, axis=0)
        x_adv = jnp.take_along_axis(xs, best.reshape((1, -1) + (1,) * (x.ndim - 1)), 0)[0]
        found = jnp.isfinite(jnp.min(ds, axis=0))
        wrong = jnp.argmax(clean, axis=-1) != y
        keep = found & ~wrong
        x_adv = jnp.where(keep.reshape((-1,) + (1,) * (x.ndim - 1)), x_adv, x)
        if self.refine:
            x_adv = self._refine(logits_fn, params, x, x_adv, y, jax.random.fold_in(k_clean, 1))
        dist = threat.distance(x_adv, x, self.norm).astype(jnp.float32)
        dist = jnp.where(keep | wrong, dist, jnp.inf)
        return jax.lax.stop_gradient(x_adv), jax.lax.stop_gradient(dist)
