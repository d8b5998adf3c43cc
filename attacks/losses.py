"""Per-example attack objectives, success tests and target selection.

Every attack maximises ``objective``: the loss of the true label (untargeted) or the
negative loss of a target label (targeted), so both forms share one kernel.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

LOSSES: tuple[str, ...] = ("ce", "margin")
TARGET_MODES: tuple[str, ...] = ("random", "least-likely")


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Softmax cross-entropy of ``labels`` per example, shape [B]."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def margin(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Carlini-Wagner margin max_{j≠y} z_j − z_y per example; positive iff misclassified."""
    num_classes = logits.shape[-1]
    one_hot = jax.nn.one_hot(labels, num_classes, dtype=bool)
    z_y = jnp.sum(jnp.where(one_hot, logits, 0.0), axis=-1)
    z_other = jnp.max(jnp.where(one_hot, -jnp.inf, logits), axis=-1)
    return z_other - z_y


_LOSS_FNS: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "ce": cross_entropy,
    "margin": margin,
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


def attack_labels(attack, logits_fn, params, x, y, key, target=None):
    """The labels an attack's objective uses: ``y`` (untargeted), the given ``target``, or
    targets picked by ``attack.target`` from the clean logits."""
    if not attack.targeted:
        return y
    if target is not None:
        return target
    return pick_targets(logits_fn(params, x), y, key, attack.target)
