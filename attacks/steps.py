"""Attack step rules as optax gradient transformations.

An attack ascends its objective: ``updates, state = rule.update(grad, state)`` gives the
move to add to the current input before projection. Rules with state (APGD's momentum,
C&W's Adam) plug into the same loop as the stateless signed/normalised steps.
"""

from __future__ import annotations

import jax
import optax

from attacks import threat


def scale_by_steepest(norm: str, l1_sparsity: float = 0.99) -> optax.GradientTransformation:
    """Replaces each gradient by its unit-``norm`` steepest-ascent direction."""

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        del params
        return jax.tree.map(lambda g: threat.steepest_direction(g, norm, l1_sparsity), updates), state

    return optax.GradientTransformation(init_fn, update_fn)


def steepest_ascent(norm: str, step_size: jax.Array) -> optax.GradientTransformation:
    """Normalised-gradient ascent: ``step_size`` times the steepest direction of ``norm``.

    ``step_size`` may be a traced array (a per-example array of shape [B, 1, 1, 1] works).
    """
    return optax.chain(scale_by_steepest(norm), optax.scale(step_size))
