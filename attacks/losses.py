"""Per-example attack objectives, success tests and target selection.

Every attack maximises ``objective``: the loss of the true label (untargeted) or the
negative loss of a target label (targeted), so both forms share one kernel.

Numerics: every loss here has a float32 input gradient that agrees with the float64 one on
very confident inputs (logit gaps of 20–40). The textbook cross-entropy ``logsumexp(z) − z_y``
differentiates to ``softmax(z) − onehot(y)``, whose true-class entry ``p_y − 1`` is formed from
a softmax rounded to exactly 1 once ``1 − p_y`` drops below float32's 6e-8: the gradient then
loses its ``−∇z_y`` term and points the wrong way (measured: cosine 0.23 to the float64
gradient on a confidently trained MNIST model, FGSM robust accuracy overstated by 2.6 pp).
Written as ``softplus(logsumexp_{j≠y}(z_j − z_y))`` the same value differentiates to
``sigmoid(t)·softmax_{j≠y}`` and ``−sigmoid(t)``, every factor exact in float32.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

LOSSES: tuple[str, ...] = ("ce", "margin", "dlr")
TARGET_MODES: tuple[str, ...] = ("random", "least-likely")


def _true_and_others(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(z_y [B], logits with the true class masked to −inf [B, K], one-hot mask [B, K])."""
    one_hot = jax.nn.one_hot(labels, logits.shape[-1], dtype=bool)
    z_y = jnp.sum(jnp.where(one_hot, logits, 0.0), axis=-1)
    return z_y, jnp.where(one_hot, -jnp.inf, logits), one_hot


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Softmax cross-entropy of ``labels`` per example, shape [B], with an exact gradient.

    ``log(1 + Σ_{j≠y} exp(z_j − z_y)) = softplus(logsumexp_{j≠y}(z_j − z_y))``: equal to
    ``logsumexp(z) − z_y`` but never forms ``1 − p_y`` (see the module docstring).
    """
    z_y, others, _ = _true_and_others(logits, labels)
    return jax.nn.softplus(jax.nn.logsumexp(others - z_y[:, None], axis=-1))


def margin(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Carlini-Wagner margin max_{j≠y} z_j − z_y per example; positive iff misclassified."""
    z_y, others, _ = _true_and_others(logits, labels)
    return jnp.max(others, axis=-1) - z_y


@jax.custom_jvp
def _ratio(n: jax.Array, d: jax.Array) -> jax.Array:
    """``n / d`` whose derivative is ``(dn − q·dd) / d`` with ``q = n / d`` the rounded quotient.

    Reverse mode then gives ``d``'s cotangent as exactly ``−q`` times ``n``'s. Where ``n`` and
    ``d`` are the same number (DLR's plateau, see :func:`dlr`) ``q`` is exactly 1 and the two
    cotangents cancel exactly; ``lax.div``'s own rule gives ``g/d`` and ``−g·n/d²``, which
    round differently, so that gradient is rounding noise instead of zero.
    """
    return n / d


@_ratio.defjvp
def _ratio_jvp(primals, tangents):
    n, d = primals
    dn, dd = tangents
    q = n / d
    return q, (dn - q * dd) / d


def dlr(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Difference of logits ratio (Croce & Hein, 2020), untargeted, per example.

    ``−(z_y − max_{j≠y} z_j) / (z_π1 − z_π3 + 1e-12)`` with π the logits sorted in
    decreasing order: the margin loss made invariant to shifting and rescaling the logits.
    Needs at least three classes.

    Plateau: when the label is third (y = π3) the loss is ``(z_π1 − z_π3) / (z_π1 − z_π3)``,
    exactly 1 on an open set, so its gradient is exactly zero. The textbook quotient rule
    computed it as ``1/D − N/D²`` per logit, rounding noise (measured: 363 of 1,000 random
    plateau points had a non-zero logit gradient, up to 1.9e-6, and 362 under
    ``--xla_cpu_max_isa=AVX``). A signed step takes the sign of that noise and moves every
    pixel a whole step in a direction set by the CPU's instruction set and by batching
    (``tests/test_apgd.py::test_deterministic_and_batch_independent[apgd-dlr]``: 0.0375 apart
    under AVX). Here the numerator and the denominator read the same sorted values (``z_y``
    too when the label is among the top three), so on the plateau they are the same float,
    and :func:`_ratio` makes their cotangents cancel exactly: the gradient is exactly zero.
    Values are unchanged bit for bit; elsewhere gradients differ only by rounding.
    """
    z_y, _, _ = _true_and_others(logits, labels)
    top, idx = jax.lax.top_k(logits, 3)
    at = idx == labels[:, None]
    z_y = jnp.where(jnp.any(at, axis=-1), jnp.sum(jnp.where(at, top, 0.0), axis=-1), z_y)
    best_other = jnp.where(at[:, 0], top[:, 1], top[:, 0])
    return _ratio(best_other - z_y, top[:, 0] - top[:, 2] + 1e-12)


def dlr_targeted(logits: jax.Array, labels: jax.Array, target: jax.Array) -> jax.Array:
    """Targeted DLR (Croce & Hein, 2020), the quantity APGD-T ascends, per example.

    ``−(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2 + 1e-12)``; positive iff z_t > z_y. Needs at
    least four classes.
    """
    one_hot_t = jax.nn.one_hot(target, logits.shape[-1], dtype=bool)
    z_y, _, _ = _true_and_others(logits, labels)
    z_t = jnp.sum(jnp.where(one_hot_t, logits, 0.0), axis=-1)
    top = jax.lax.top_k(logits, 4)[0]
    return (z_t - z_y) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


_LOSS_FNS: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "ce": cross_entropy,
    "margin": margin,
    "dlr": dlr,
}


def objective(logits: jax.Array, labels: jax.Array, loss: str, targeted: bool) -> jax.Array:
    """The quantity an attack ascends, per example.

    ``labels`` are the true labels (untargeted) or the targets (targeted).
    """
    value = _LOSS_FNS[loss](logits, labels)
    return -value if targeted else value


def is_adversarial(logits: jax.Array, labels: jax.Array, targeted: bool) -> jax.Array:
    """Success per example: prediction ≠ true label, or prediction = target."""
    pred = jnp.argmax(logits, axis=-1)
    return pred == labels if targeted else pred != labels


def pick_targets(logits: jax.Array, y: jax.Array, key: jax.Array, mode: str) -> jax.Array:
    """Target classes ≠ ``y``: uniformly random or the least likely under clean ``logits``."""
    num_classes = logits.shape[-1]
    if mode == "least-likely":
        masked = jnp.where(jax.nn.one_hot(y, num_classes, dtype=bool), jnp.inf, logits)
        return jnp.argmin(masked, axis=-1).astype(y.dtype)
    if mode == "random":
        shift = jax.random.randint(key, y.shape, 1, num_classes, dtype=y.dtype)
        return (y + shift) % num_classes
    raise ValueError(f"unknown target mode {mode!r}")


def top_targets(logits: jax.Array, y: jax.Array, count: int) -> jax.Array:
    """The ``count`` most likely classes other than ``y`` under ``logits``, [count, B].

    AutoAttack's targets for APGD-T and FAB-T (the top-9 of ten classes: every other class).
    """
    _, others, _ = _true_and_others(logits, y)
    return jax.lax.top_k(others, count)[1].T.astype(y.dtype)


def attack_labels(attack, logits_fn, params, x, y, key, target=None):
    """The labels an attack's objective uses: ``y`` (untargeted), the given ``target``, or
    targets picked by ``attack.target`` from the clean logits."""
    if not attack.targeted:
        return y
    if target is not None:
        return target
    return pick_targets(logits_fn(params, x), y, key, attack.target)
