"""Square Attack (Andriushchenko, Croce, Flammarion & Hein, ECCV 2020): score-based black box.

A random search that only ever *queries* the model (forward passes, never a gradient), so
gradient masking (quantising front ends, non-differentiable pre-processing, shattered
gradients) does not stop it. A port of ``autoattack/square.py`` (github fra31/auto-attack):

- L∞: start from vertical stripes (±ε per column and channel); each iteration sets one random
  square window of side ``s`` to ±ε per channel (random signs) and keeps the candidate if the
  loss decreases or the model is fooled.
- L2: start from a grid of "pseudo-Gaussian" meta perturbations (``_eta``); each iteration
  moves the perturbation mass of two random windows into the first one, with a fresh
  meta perturbation, and renormalises the whole perturbation to ε.

The side ``s`` follows the reference's ``p_selection`` schedule of ``p`` (fraction of pixels
changed) over the iteration index, rescaled to the budget. Everything static about it (the
sides and, for L2, the meta-perturbation patterns of every side) is tabulated in numpy at
trace time, so the loop is one ``lax.while_loop`` of fixed shapes: windows are masks built
from comparisons with traced bounds. Each example draws its own windows and signs (the
reference shares them across a batch), so results are the same alone or in a batch under
``vmap`` with per-example keys. Examples stop being updated, and counted, once fooled; the
loop exits when every example is fooled or the budget is spent.

Departures from the reference, all deliberate:

- ``queries`` is the total budget per example *including* the initial point, so the loop runs
  ``queries − 1`` iterations (the reference runs ``n_queries`` and may use ``n_queries + 1``);
  the ``p`` schedule is rescaled by ``queries`` exactly as the reference rescales it.
- Targeted runs honour ``loss`` (``margin``: minimise max_{j≠t} z_j − z_t); the reference
  always minimises the target's cross-entropy when targeted (torchattacks honours ``loss``).
- Success is ``argmax ≠ y`` (``losses.is_adversarial``, what the benchmark scores) where the
  reference tests ``margin ≤ 0``; they differ only on exact logit ties.
- Examples that fail keep their lowest-loss point (the reference returns the clean input);
  either way the model still classifies them correctly.
- Window corners are drawn from ``{0, …, max(H − s, 1) − 1}`` as the reference's
  ``random_int(0, H − s)`` does (the last row/column of positions is never drawn); kept.
- The L2 initial grid uses side ``max(H // 5, 1)`` and truncates blocks at the border, where
  the reference fails on images under 5 pixels or whose grid overruns the border.

Restarts are a ``vmap`` axis; per example the first restart that fools the model wins
(else the lowest-loss one), and its queries are those of all restarts up to it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from attacks import base, checks, fastpath, losses, threat

SQUARE_NORMS: tuple[str, ...] = ("linf", "l2")
SQUARE_LOSSES: tuple[str, ...] = ("margin", "ce")

_TINY = 1e-12  # the reference's guard in every normalisation


# ---------------------------------------------------------------------------------------
# Static schedule and patterns (numpy, at trace time)


def p_selection(it: int, p_init: float, budget: int, rescale: bool) -> float:
    """The reference's schedule of ``p`` (fraction of features a window covers) at iteration
    ``it``; with ``rescale`` the 10,000-iteration schedule is stretched to ``budget``."""
    if rescale:
        it = int(it / budget * 10000)
    for bound, div in ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32),
                       (4000, 64), (6000, 128), (8000, 256)):
        if it <= bound:
            return p_init / div
    return p_init / 512


def window_side(norm: str, p: float, shape: tuple[int, int, int]) -> int:
    """The reference's window side for fraction ``p`` on an (H, W, C) image."""
    h, w, c = shape
    n_features = c * h * w
    s = int(round(math.sqrt(p * n_features / c)))
    if norm == "linf":
        s = max(s, 1)
    else:
        s = max(s, 3)
        s += 1 if s % 2 == 0 else 0
    return min(s, h, w)


def _eta_rectangles(x: int, y: int) -> np.ndarray:
    """Concentric rectangles with weights 1/(k+1)², unit L2 norm (the reference's)."""
    delta = np.zeros((x, y))
    x_c, y_c = x // 2 + 1, y // 2 + 1
    c0, c1 = x_c - 1, y_c - 1
    for counter in range(max(x_c, y_c)):
        delta[max(c0, 0):min(c0 + 2 * counter + 1, x),
              max(c1, 0):min(c1 + 2 * counter + 1, y)] += 1.0 / (counter + 1) ** 2
        c0 -= 1
        c1 -= 1
    n = np.sqrt(np.sum(delta ** 2))
    return delta / n if n > 0 else delta


def eta(s: int) -> np.ndarray:
    """The L2 meta perturbation of side ``s``: two opposite-signed halves of concentric
    rectangles, unit L2 norm (the reference's ``eta`` before its random transpose)."""
    delta = np.zeros((s, s))
    delta[: s // 2] = _eta_rectangles(s // 2, s)
    delta[s // 2:] = -_eta_rectangles(s - s // 2, s)
    return delta / np.sqrt(np.sum(delta ** 2))


@functools.lru_cache(maxsize=64)
def _schedule(norm: str, iters: int, p_init: float, budget: int, rescale: bool,
              shape: tuple[int, int, int]):
    """Per iteration the window side and (L2) the index of its pattern in a table of the
    patterns of every side used, zero-padded to the largest side: (sides, index, table)."""
    sides = np.array([window_side(norm, p_selection(i, p_init, budget, rescale), shape)
                      for i in range(max(iters, 1))], np.int32)
    distinct = sorted(set(sides.tolist()))
    smax = max(distinct)
    table = np.zeros((len(distinct), smax, smax), np.float32)
    if norm == "l2":
        for k, s in enumerate(distinct):
            table[k, :s, :s] = eta(s)
    index = np.searchsorted(np.array(distinct), sides).astype(np.int32)
    return sides, index, table


@functools.lru_cache(maxsize=16)
def _l2_init_grid(h: int, w: int):
    """The reference's initial grid of ``eta(h // 5)`` blocks: per pixel its block id (−1
    outside every block) and the block's pattern value, plain and transposed."""
    s = max(h // 5, 1)
    start = max((h - 5 * s) // 2, 0)
    pattern = eta(s)
    block = np.full((h, w), -1, np.int32)
    plain = np.zeros((h, w), np.float32)
    transposed = np.zeros((h, w), np.float32)
    nb_w = w // s
    for a in range(h // s):
        for b in range(nb_w):
            r0, c0 = start + a * s, start + b * s
            r1, c1 = min(r0 + s, h), min(c0 + s, w)
            if r0 >= h or c0 >= w:
                continue
            block[r0:r1, c0:c1] = a * nb_w + b
            plain[r0:r1, c0:c1] = pattern[: r1 - r0, : c1 - c0]
            transposed[r0:r1, c0:c1] = pattern.T[: r1 - r0, : c1 - c0]
    return block, plain, transposed, (h // s) * nb_w


# ---------------------------------------------------------------------------------------
# Traced helpers


def _sign(u):
    """±1 from uniforms in [0, 1) (the reference's ``sign(2u − 1)``)."""
    return jnp.where(u > 0.5, 1.0, -1.0)


def _window(u_row, u_col, side, h, w):
    """Per example the s×s window with corner ``⌊u · max(H − s, 1)⌋`` (the reference's
    ``random_int(0, H − s)``): (mask [B, H, W, 1], row0 [B], col0 [B])."""
    r0 = jnp.floor(u_row * jnp.maximum(h - side, 1)).astype(jnp.int32)
    c0 = jnp.floor(u_col * jnp.maximum(w - side, 1)).astype(jnp.int32)
    rows = jnp.arange(h)[None, :]
    cols = jnp.arange(w)[None, :]
    in_r = (rows >= r0[:, None]) & (rows < r0[:, None] + side)
    in_c = (cols >= c0[:, None]) & (cols < c0[:, None] + side)
    return (in_r[:, :, None] & in_c[:, None, :])[..., None], r0, c0


def _sq_norm(a, axis):
    return jnp.sum(a * a, axis=axis, keepdims=True)


@dataclasses.dataclass(frozen=True)
class Square:
    """Square Attack: score-based random search over square windows (no gradients).

    Attributes:
      norm: threat model, ``linf`` or ``l2``.
      queries: model queries per example and restart, the initial point included
        (AutoAttack: 5,000).
      p_init: initial fraction of the features one window covers; decays on the
        reference's schedule.
      restarts: independent runs (a ``vmap`` axis); the first that fools the model wins.
      loss: ``margin`` or ``ce``, minimised by the random search.
      targeted: push towards a target class instead of away from the label.
      target: how targets are picked when ``targeted``: ``random`` or ``least-likely``.
      resc_schedule: stretch the ``p`` schedule (written for 10,000 iterations) to ``queries``.
    """

    numerics: ClassVar[int] = 1

    norm: str = "linf"
    queries: int = 5000
    p_init: float = 0.8
    restarts: int = 1
    loss: str = "margin"
    targeted: bool = False
    target: str = "random"
    resc_schedule: bool = True

    def __post_init__(self):
        checks.check_choice("norm", self.norm, SQUARE_NORMS)
        checks.check_choice("loss", self.loss, SQUARE_LOSSES)
        checks.check_choice("target", self.target, losses.TARGET_MODES)
        checks.check_count("queries", self.queries, checks.MAX_QUERIES)
        checks.check_count("restarts", self.restarts, checks.MAX_RESTARTS)
        checks.check_positive("p_init", self.p_init)
        checks.check_range("p_init", self.p_init, 0.0, 1.0)

    # -- pieces ----------------------------------------------------------------------

    def _to_minimise(self, logits, labels):
        """The reference's ``loss`` (lower is better): −margin / −CE of the label, or
        margin / CE of the target."""
        return -losses.objective(logits, labels, self.loss, self.targeted)

    def _init_linf(self, key, x, e):
        b, _, w, c = x.shape
        u = jax.random.uniform(key, (b, 1, w, c))
        return jnp.clip(x + e * _sign(u), 0.0, 1.0)

    def _init_l2(self, key, x, e):
        b, h, w, c = x.shape
        block, plain, transposed, nb = _l2_init_grid(h, w)
        u = jax.random.uniform(key, (b, nb, 1 + c))
        flip, signs = u[:, :, 0] > 0.5, _sign(u[:, :, 1:])
        idx = jnp.asarray(np.maximum(block, 0)).reshape(-1)
        inside = jnp.asarray(block >= 0)[None, :, :, None]
        pat = jnp.where(flip[:, idx].reshape(b, h, w, 1), transposed[None, ..., None],
                        plain[None, ..., None])
        delta = jnp.where(inside, pat * signs[:, idx, :].reshape(b, h, w, c), 0.0)
        n = jnp.sqrt(_sq_norm(delta, (1, 2, 3)))
        return jnp.clip(x + delta / (n + _TINY) * e, 0.0, 1.0)

    def _candidate_linf(self, u, x, x_best, e, side):
        """The reference's L∞ update; ``u`` [B, 2 + C] uniforms (corner, signs)."""
        b, h, w, c = x.shape
        mask, _, _ = _window(u[:, 0], u[:, 1], side, h, w)
        step = jnp.where(mask, 2.0 * e * _sign(u[:, 2:]).reshape(b, 1, 1, c), 0.0)
        x_new = jnp.clip(x_best + step, x - e, x + e)
        return jnp.clip(x_new, 0.0, 1.0)

    def _candidate_l2(self, u, x, x_best, e, side, pattern):
        """The reference's L2 update; ``u`` [B, 5 + C] uniforms (two corners, transpose,
        signs), ``pattern`` eta(side) zero-padded to [smax, smax]."""
        b, h, w, c = x.shape
        delta = x_best - x
        mask1, r0, c0 = _window(u[:, 0], u[:, 1], side, h, w)
        mask2, _, _ = _window(u[:, 2], u[:, 3], side, h, w)
        smax = pattern.shape[0]
        li = jnp.clip(jnp.arange(h)[None, :, None] - r0[:, None, None], 0, smax - 1)
        lj = jnp.clip(jnp.arange(w)[None, None, :] - c0[:, None, None], 0, smax - 1)
        flip = (u[:, 4] > 0.5)[:, None, None]
        rows, cols = jnp.where(flip, lj, li), jnp.where(flip, li, lj)
        meta = jnp.where(mask1, pattern[rows, cols][..., None], 0.0)  # [B, H, W, 1]

        norm_win1 = jnp.sqrt(_sq_norm(jnp.where(mask1, delta, 0.0), (1, 2)))  # [B,1,1,C]
        norm_img = jnp.sqrt(_sq_norm(delta, (1, 2, 3)))  # [B,1,1,1]
        norm_wins = jnp.sqrt(_sq_norm(jnp.where(mask1 | mask2, delta, 0.0), (1, 2)))
        new = meta * _sign(u[:, 5:]).reshape(b, 1, 1, c)
        new = new + jnp.where(mask1, delta, 0.0) / (_TINY + norm_win1)
        budget = jnp.maximum(e * e - norm_img * norm_img, 0.0) / c + norm_wins * norm_wins
        new = new / (_TINY + jnp.sqrt(_sq_norm(new, (1, 2)))) * jnp.sqrt(budget)
        delta = jnp.where(mask1, new, jnp.where(mask2, 0.0, delta))
        n = jnp.sqrt(_sq_norm(delta, (1, 2, 3)))
        return jnp.clip(x + delta / (n + _TINY) * e, 0.0, 1.0)

    # -- one run ----------------------------------------------------------------------

    def _one_run(self, logits_fn, params, x, labels, eps, key, start_adv):
        """One random search: (x_best, fooled [B], loss_min [B], queries [B] int32).
        ``start_adv`` marks examples already fooled at x, which are left alone."""
        b, h, w, c = x.shape
        e = threat.per_example(eps, x)
        iters = self.queries - 1
        sides, index, table = _schedule(self.norm, iters, float(self.p_init), self.queries,
                                        bool(self.resc_schedule), (h, w, c))
        sides, index, table = jnp.asarray(sides), jnp.asarray(index), jnp.asarray(table)
        k_init, k_loop = jax.random.split(key)

        init = self._init_linf if self.norm == "linf" else self._init_l2
        x0 = init(k_init, x, e)
        logits = logits_fn(params, x0)
        loss0 = self._to_minimise(logits, labels)
        done0 = start_adv | losses.is_adversarial(logits, labels, self.targeted)
        x0 = jnp.where(start_adv[:, None, None, None], x, x0)
        n0 = jnp.where(start_adv, 0, 1).astype(jnp.int32)

        def cond(carry):
            i, _, _, done, _ = carry
            return (i < iters) & jnp.any(~done)

        def body(carry):
            i, x_best, loss_min, done, n = carry
            # one draw per iteration: XLA compiles every threefry call separately (~0.25 s)
            if self.norm == "linf":
                u = jax.random.uniform(jax.random.fold_in(k_loop, i), (b, 2 + c))
                cand = self._candidate_linf(u, x, x_best, e, sides[i])
            else:
                u = jax.random.uniform(jax.random.fold_in(k_loop, i), (b, 5 + c))
                cand = self._candidate_l2(u, x, x_best, e, sides[i], table[index[i]])
            logits = logits_fn(params, cand)
            loss = self._to_minimise(logits, labels)
            fooled = losses.is_adversarial(logits, labels, self.targeted)
            active = ~done
            improved = loss < loss_min
            loss_min = jnp.where(active & improved, loss, loss_min)
            accept = active & (improved | fooled)
            x_best = jnp.where(accept[:, None, None, None], cand, x_best)
            return i + 1, x_best, loss_min, done | (active & fooled), n + active.astype(jnp.int32)

        carry = (jnp.zeros((), jnp.int32), x0, loss0, done0, n0)
        _, x_best, loss_min, done, n = jax.lax.while_loop(cond, body, carry)
        return x_best, done & ~start_adv, loss_min, n

    # -- public ------------------------------------------------------------------------

    @base.compiled
    def run(self, logits_fn, params, x, y, eps, key, target=None):
        """``(x_adv, {"queries": int32 [B]})``: the adversarial batch and, per example, the
        model queries spent until success (all restarts' budgets for failures, 0 for
        examples already adversarial at x: misclassified, or classified as the target when
        ``targeted``). The clean forward pass (as in the reference) is not counted."""
        logits_fn = fastpath.fast(logits_fn)
        k_target, k_runs = jax.random.split(key)
        labels = losses.attack_labels(self, logits_fn, params, x, y, k_target, target)
        start_adv = losses.is_adversarial(logits_fn(params, x), labels, self.targeted)
        keys = jax.random.split(k_runs, self.restarts)
        if self.restarts == 1:
            x_adv, _, _, queries = self._one_run(logits_fn, params, x, labels, eps, keys[0],
                                                 start_adv)
        else:
            xs, fooled, loss_min, qs = jax.vmap(
                lambda k: self._one_run(logits_fn, params, x, labels, eps, k, start_adv))(keys)
            x_adv = base.best_over_restarts(xs, base.score(fooled, -loss_min))
            first = jnp.argmax(fooled, axis=0)
            upto = jnp.where(jnp.any(fooled, axis=0)[None],
                             jnp.arange(self.restarts)[:, None] <= first[None], True)
            queries = jnp.sum(jnp.where(upto, qs, 0), axis=0).astype(jnp.int32)
        x_adv = threat.project(x_adv, x, eps, self.norm)
        return jax.lax.stop_gradient(x_adv), {"queries": queries}

    def __call__(self, logits_fn, params, x, y, eps, key, target=None):
        return self.run(logits_fn, params, x, y, eps, key, target)[0]
