"""Auto-PGD (Croce & Hein, ICML 2020): APGD-CE, APGD-DLR and APGD-T.

A port of ``autoattack/autopgd_base.py`` (fra31/auto-attack) for the L∞ and L2 threat
models: a random start on the sphere of radius ε, a first step of size 2ε, heavy-ball
momentum (α = 0.75) between projected steepest-ascent steps, and a step size that halves at
checkpoints where the loss stalled, restarting from the best point found. Every per-example
decision of the reference (which examples halve, restart, improve, succeed) is a ``where``
over the batch, so one compiled program runs any batch size, B = 1 included.

Cost per restart (and per target class for APGD-T, per draw for ``eot_iter`` > 1): exactly
``steps`` forward + input-gradient passes (the reference's initial gradient included: its
last gradient is never used, so the final iterate gets a plain forward) and one forward;
APGD-T adds one clean forward to pick its targets. Memory: six input-sized arrays per run
(current, previous, best and fooling points; current and best gradients), and APGD-T runs
its targets × restarts at once.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from attacks import base, checks, fastpath, losses, threat

NORMS: tuple[str, ...] = ("linf", "l2")
APGD_LOSSES: tuple[str, ...] = ("ce", "dlr")


def checkpoints(n_iter: int) -> tuple[int, ...]:
    """Iteration counts after which APGD checks its step size (the reference's schedule).

    ``p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06)`` in whole
    iterations, as the reference computes it: the first window is ``max(⌊0.22 n⌋, 1)``
    iterations, each next one ``max(⌊0.03 n⌋, 1)`` shorter but at least
    ``max(⌊0.06 n⌋, 1)``.
    ``checkpoints(100) == (22, 41, 57, 70, 80, 87, 93, 99)``.
    """
    window = max(int(0.22 * n_iter), 1)
    window_min = max(int(0.06 * n_iter), 1)
    size_decr = max(int(0.03 * n_iter), 1)
    out, done = [], window
    while done <= n_iter:
        out.append(done)
        window = max(window - size_decr, window_min)
        done += window
    return tuple(out)


def _schedule(n_iter: int, rho: float) -> tuple[np.ndarray, np.ndarray]:
    """Per iteration i (0-based): is its end a checkpoint, and the most loss increases in the
    window ending there for which the step size still halves (``count ≤ rho · window``,
    floored in float64 so the int comparison is exact)."""
    is_check = np.zeros(n_iter, bool)
    max_incr = np.zeros(n_iter, np.int32)
    prev = 0
    for c in checkpoints(n_iter):
        is_check[c - 1] = True
        max_incr[c - 1] = math.floor((c - prev) * rho)
        prev = c
    return is_check, max_incr


def halve_step(increases, max_increases, reduced_last, best_at_last_check, best):
    """The reference's test at a checkpoint, per example: halve the step size when (1) the
    loss increased in at most ``max_increases`` (= ⌊rho · window⌋) of the window's
    iterations, or (2) the step was not halved at the previous checkpoint and the best loss
    has not improved since."""
    return (increases <= max_increases) | (~reduced_last & (best_at_last_check >= best))


@dataclasses.dataclass(frozen=True)
class _APGDBase:
    """Options and kernel shared by APGD and APGD-T; see :class:`APGD` for their meaning."""

    norm: str = "linf"
    steps: int = 100
    restarts: int = 1
    rho: float = 0.75
    momentum: float = 0.75
    eot_iter: int = 1
    unroll: int = 0

    def __post_init__(self):
        if self.norm == "l1":
            raise ValueError("APGD supports linf and l2; norm = 'l1' is not allowed")
        checks.check_choice("norm", self.norm, NORMS)
        checks.check_count("steps", self.steps, checks.MAX_STEPS)
        checks.check_count("restarts", self.restarts, checks.MAX_RESTARTS)
        checks.check_range("rho", self.rho, 0.0, 1.0)
        checks.check_range("momentum", self.momentum, 0.0, 1.0)
        checks.check_count("eot_iter", self.eot_iter, checks.MAX_RESTARTS)
        checks.check_positive("unroll", self.unroll, allow_zero=True)

    # -- pieces ---------------------------------------------------------------------------

    def _random_start(self, key, x, eps):
        """The reference's start: x + ε t/‖t‖ (t uniform in [−1, 1] for L∞, Gaussian for
        L2), a point on the sphere of the norm, clipped to the box."""
        e = threat.per_example(eps, x)
        flat = lambda a: a.reshape(a.shape[0], -1)
        if self.norm == "linf":
            t = jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0)
            n = jnp.max(jnp.abs(flat(t)), axis=1)
        else:
            t = jax.random.normal(key, x.shape, x.dtype)
            n = jnp.sqrt(jnp.sum(flat(t) ** 2, axis=1))
        return threat.project(x + e * t / (n.reshape(e.shape) + 1e-12), x, eps, self.norm)

    def _evaluator(self, logits_fn, params, y, target, hit_target):
        """``evaluate(z, key, with_grad) -> (objective [B], success [B], gradient or None,
        logits [B, K])``.

        The gradient (and the objective) are averaged over ``eot_iter`` keys; success is
        judged on the first draw's logits, which are returned (float32).
        """
        if target is None:
            loss_fn = losses.cross_entropy if self.loss == "ce" else losses.dlr
            objective = lambda logits: loss_fn(logits, y)
        else:
            objective = lambda logits: losses.dlr_targeted(logits, y, target)

        def success(logits):
            pred = jnp.argmax(logits, axis=-1)
            return pred == target if hit_target else pred != y

        def obj_and_aux(z, key):
            logits = base.apply_logits(logits_fn, params, z, key)
            obj = objective(logits)
            return jnp.sum(obj), (obj, success(logits), logits.astype(jnp.float32))

        grad_fn = jax.grad(obj_and_aux, has_aux=True)

        def evaluate(z, key, with_grad):
            keys = jax.random.split(key, self.eot_iter)
            if not with_grad:
                _, (obj, succ, logits) = obj_and_aux(z, keys[0])
                return obj, succ, None, logits
            if self.eot_iter == 1:
                g, (obj, succ, logits) = grad_fn(z, keys[0])
                return obj, succ, g, logits
            g, (obj, succ, logits) = jax.vmap(grad_fn, in_axes=(None, 0))(z, keys)
            return jnp.mean(obj, axis=0), succ[0], jnp.mean(g, axis=0), logits[0]

        return evaluate

    def _direction(self, g):
        # L2: the steepest direction rescales before squaring, so tiny (exact) gradients of
        # confident examples do not underflow to a zero step as the reference's g/‖g‖ would.
        return threat.steepest_direction(g, self.norm)

    def _one_run(self, logits_fn, params, x, y, target, hit_target, eps, key):
        """One APGD run: ``(x_out, score, info, logits)`` with ``score`` as in ``base.score``
        and ``logits`` (first draw) at ``x_out``."""
        n = self.steps
        e = threat.per_example(eps, x)
        bshape = e.shape  # [B, 1, ..., 1]
        evaluate = self._evaluator(logits_fn, params, y, target, hit_target)
        is_check, max_incr = (jnp.asarray(a) for a in _schedule(n, self.rho))
        k_init, k_eval = jax.random.split(key)
        mask = lambda m: m.reshape(bshape)

        x0 = self._random_start(k_init, x, eps)
        loss0, succ0, g0, logits0 = evaluate(x0, jax.random.fold_in(k_eval, 0), True)
        state = dict(
            x_cur=x0, x_prev=x0, grad=g0, step=2.0 * e,
            x_best=x0, loss_best=loss0, grad_best=g0, logits_best=logits0,
            x_adv=x0, success=succ0, logits_adv=logits0,
            first=jnp.where(succ0, 0, -1).astype(jnp.int32),  # first fooling iterate
            # The reference's first window compares the first loss with an unwritten (zero)
            # row of its loss history; we keep that to reproduce its decisions exactly.
            loss_prev=jnp.zeros_like(loss0),
            n_incr=jnp.zeros(loss0.shape, jnp.int32),
            loss_best_last=loss0,
            reduced_last=jnp.ones(loss0.shape, bool),
            halvings=jnp.zeros(loss0.shape, jnp.int32),
        )

        def step(i, s):
            """x_{i+1} from x_i: z = P(x_i + η d(g)), then
            x_{i+1} = P(x_i + α(z − x_i) + (1 − α)(x_i − x_{i−1})), α = 1 at the first step."""
            a = jnp.where(i == 0, 1.0, self.momentum).astype(x.dtype)
            x_cur = s["x_cur"]
            z = threat.project(x_cur + s["step"] * self._direction(s["grad"]), x, eps, self.norm)
            return threat.project(x_cur + a * (z - x_cur) + (1 - a) * (x_cur - s["x_prev"]),
                                  x, eps, self.norm)

        def record(i, s, x_new, loss, succ, g, logits):
            """The reference's bookkeeping after iteration i: best points, success, and the
            step-size check when iteration i ends a window. ``g`` is None after the last step.
            The logits at the fooling and at the best point travel with them."""
            s = dict(s)
            s["x_adv"] = jnp.where(mask(succ), x_new, s["x_adv"])
            s["logits_adv"] = jnp.where(succ[:, None], logits, s["logits_adv"])
            s["first"] = jnp.where((s["first"] < 0) & succ, i + 1, s["first"])
            s["success"] = s["success"] | succ
            n_incr = s["n_incr"] + (loss > s["loss_prev"]).astype(jnp.int32)
            s["loss_prev"] = loss
            better = loss > s["loss_best"]
            s["x_best"] = jnp.where(mask(better), x_new, s["x_best"])
            s["logits_best"] = jnp.where(better[:, None], logits, s["logits_best"])
            s["loss_best"] = jnp.where(better, loss, s["loss_best"])
            s["x_prev"] = s["x_cur"]
            s["x_cur"] = x_new
            if g is None:
                return s
            s["grad_best"] = jnp.where(mask(better), g, s["grad_best"])
            check = is_check[i]
            halve = check & halve_step(n_incr, max_incr[i], s["reduced_last"],
                                       s["loss_best_last"], s["loss_best"])
            s["step"] = jnp.where(mask(halve), 0.5 * s["step"], s["step"])
            s["halvings"] = s["halvings"] + halve.astype(jnp.int32)
            s["x_cur"] = jnp.where(mask(halve), s["x_best"], x_new)
            s["grad"] = jnp.where(mask(halve), s["grad_best"], g)
            s["reduced_last"] = jnp.where(check, halve, s["reduced_last"])
            s["loss_best_last"] = jnp.where(check, s["loss_best"], s["loss_best_last"])
            s["n_incr"] = jnp.where(check, 0, n_incr)
            return s

        def body(i, s):
            x_new = step(i, s)
            loss, succ, g, logits = evaluate(x_new, jax.random.fold_in(k_eval, i + 1), True)
            return record(i, s, x_new, loss, succ, g, logits)

        cpu = jax.default_backend() == "cpu"
        unroll = self.unroll or (n if cpu and n <= 50 else 1)
        s = jax.lax.fori_loop(0, n - 1, body, state, unroll=max(1, min(unroll, max(n - 1, 1))))
        x_last = step(n - 1, s)
        loss, succ, _, logits = evaluate(x_last, jax.random.fold_in(k_eval, n), False)
        s = record(n - 1, s, x_last, loss, succ, None, logits)

        x_out = jnp.where(mask(s["success"]), s["x_adv"], s["x_best"])
        logits_out = jnp.where(s["success"][:, None], s["logits_adv"], s["logits_best"])
        info = {"success": s["success"], "loss": s["loss_best"], "halvings": s["halvings"],
                "first_fooled_step": s["first"]}
        return x_out, base.score(s["success"], s["loss_best"]), info, logits_out

    def _runs(self, logits_fn, params, x, y, targets, hit_target, eps, key):
        """Every (target, restart) run as one ``vmap``; per example the first successful run
        wins, else the one with the highest objective. ``targets`` is [T, B] or None.
        Returns ``(x_adv, info, logits at x_adv)``."""
        if targets is None:
            keys = jax.random.split(key, self.restarts)
            one = lambda k: self._one_run(logits_fn, params, x, y, None, hit_target, eps, k)
            if self.restarts == 1:
                x_adv, _, info, logits = one(keys[0])
                return x_adv, info, logits
            xs, scores, infos, all_logits = jax.vmap(one)(keys)
        else:
            t_idx = jnp.repeat(jnp.arange(targets.shape[0]), self.restarts)
            keys = jax.random.split(key, t_idx.shape[0])
            one = lambda t, k: self._one_run(logits_fn, params, x, y, targets[t], hit_target,
                                             eps, k)
            xs, scores, infos, all_logits = jax.vmap(one)(t_idx, keys)
            infos = dict(infos, target=jnp.broadcast_to(targets[t_idx], scores.shape))
        idx = jnp.argmax(scores, axis=0)
        info = {k: jnp.take_along_axis(v, idx[None], axis=0)[0] for k, v in infos.items()}
        # the earliest step at which any run fooled the example, not the winning run's
        big = jnp.iinfo(jnp.int32).max
        first = jnp.min(jnp.where(infos["first_fooled_step"] < 0, big,
                                  infos["first_fooled_step"]), axis=0)
        info["first_fooled_step"] = jnp.where(first == big, -1, first)
        return (base.best_over_restarts(xs, scores), info,
                base.best_over_restarts(all_logits, scores))

    def run(self, logits_fn, params, x, y, eps, key, target=None):
        """``(x_adv, info)``: :meth:`run_scored` without the logits."""
        return self.run_scored(logits_fn, params, x, y, eps, key, target)[:2]

    def __call__(self, logits_fn, params, x, y, eps, key, target=None):
        return self.run(logits_fn, params, x, y, eps, key, target)[0]


@dataclasses.dataclass(frozen=True)
class APGD(_APGDBase):
    """APGD (Croce & Hein, 2020): untargeted Auto-PGD on cross-entropy or DLR.

    Per example: the last iterate that fools the model if any, else the highest-loss point.
    Cost: ``restarts × eot_iter × steps`` forward + input-gradient passes and ``restarts``
    forwards.

    Attributes:
      norm: threat model, ``linf`` or ``l2``.
      steps: iterations per restart (AutoAttack: 100).
      restarts: independent random starts, a ``vmap`` axis; the best per example wins.
      loss: ``ce`` (APGD-CE) or ``dlr`` (APGD-DLR, needs ≥ 3 classes).
      rho: the step size halves at a checkpoint when at most ``rho`` of the iterations since
        the previous one increased the loss.
      momentum: α, the weight of the new projected step against the previous move.
      eot_iter: gradients averaged over this many model keys (EOT for random models).
      unroll: loop unrolling; ``0`` (auto) unrolls on CPU up to 50 steps, as PGD does.
    """

    numerics: ClassVar[int] = 2  # 2: DLR's plateau gradient exactly zero (losses.dlr)

    loss: str = "ce"

    def __post_init__(self):
        super().__post_init__()
        checks.check_choice("loss", self.loss, APGD_LOSSES)

    @base.compiled
    def run_scored(self, logits_fn, params, x, y, eps, key, target=None):
        """``(x_adv, info, logits)``; ``info`` has per-example ``success``, ``loss`` (the best
        objective) and ``halvings`` (step-size reductions) of the winning restart; ``logits``
        the model's at ``x_adv`` (computed with its gradient: no extra pass).
        ``target`` is ignored: APGD is untargeted (use :class:`APGDT`)."""
        logits_fn = fastpath.fast(logits_fn)
        del target
        if self.loss == "dlr" and _num_classes(logits_fn, params, x) < 3:
            raise ValueError("APGD with loss 'dlr' needs at least 3 classes")
        x_adv, info, logits = self._runs(logits_fn, params, x, y, None, False, eps, key)
        return jax.lax.stop_gradient(x_adv), info, jax.lax.stop_gradient(logits)


@dataclasses.dataclass(frozen=True)
class APGDDLR(APGD):
    """APGD on the DLR loss (AutoAttack's ``apgd-dlr``): :class:`APGD` with ``loss = "dlr"``."""

    numerics: ClassVar[int] = 2  # 2: DLR's plateau gradient exactly zero (losses.dlr)

    loss: str = "dlr"


@dataclasses.dataclass(frozen=True)
class APGDT(_APGDBase):
    """APGD-T (Croce & Hein, 2020): APGD on the targeted DLR loss, one run per target.

    Targets are the ``min(n_target_classes, K − 1)`` most likely classes other than the label
    under the clean logits (AutoAttack's top-9), a ``vmap`` axis together with restarts; per
    example the first successful (target, restart) wins, else the highest objective. As in
    the reference, a run succeeds when the model misclassifies, whatever the class. With an
    explicit ``target`` only that class is attacked and success means predicting it.
    Needs ≥ 4 classes. Cost: ``T × restarts × eot_iter × steps`` forward + input-gradient
    passes, ``T × restarts`` forwards and one clean forward (T the number of targets).

    Attributes: those of :class:`APGD` except ``loss``, and
      n_target_classes: how many target classes to attack (AutoAttack: 9).
    """

    numerics: ClassVar[int] = 1

    n_target_classes: int = 9

    def __post_init__(self):
        super().__post_init__()
        checks.check_positive("n_target_classes", self.n_target_classes)

    @base.compiled
    def run_scored(self, logits_fn, params, x, y, eps, key, target=None):
        """``(x_adv, info, logits)``; ``info`` as :meth:`APGD.run_scored` plus ``target``, the
        winning run's target class."""
        logits_fn = fastpath.fast(logits_fn)
        k_clean, k_runs = jax.random.split(key)
        if target is not None:
            if _num_classes(logits_fn, params, x) < 4:
                raise ValueError("APGD-T needs at least 4 classes")
            targets = jnp.asarray(target, y.dtype).reshape(1, -1)
            hit_target = True
        else:
            clean = base.apply_logits(logits_fn, params, x, k_clean)
            num_classes = clean.shape[-1]
            if num_classes < 4:
                raise ValueError("APGD-T needs at least 4 classes")
            count = min(self.n_target_classes, num_classes - 1)
            targets = losses.top_targets(clean, y, count)
            hit_target = False
        x_adv, info, logits = self._runs(logits_fn, params, x, y, targets, hit_target, eps,
                                         k_runs)
        return jax.lax.stop_gradient(x_adv), info, jax.lax.stop_gradient(logits)


def _num_classes(logits_fn, params, x) -> int:
    """The model's number of classes, from shapes only (no computation)."""
    shape = jax.eval_shape(lambda p, z: base.apply_logits(logits_fn, p, z, jax.random.key(0)),
                           params, x)
    return shape.shape[-1]
