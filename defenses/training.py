"""The shared training loop: a jitted optax step over shuffled batches.

Every training defense is this loop plus a ``perturb`` function that turns a clean batch
into the batch the model is trained on (identity for standard training, PGD examples for
Madry et al.'s adversarial training, ...) and, where cross-entropy on that batch is not the
objective, a ``loss`` (TRADES' clean CE + KL term, distillation's soft labels). One step is
augment → perturb → loss → gradient → update, all under one ``jit``; BatchNorm statistics
are updated in training mode, and everything random comes from the explicit key
(``fold_in`` per epoch and step), so a seed fixes the weights.

Data augmentation (``noise_std``, ``crop_pad``, ``hflip``) is a setting of every training
procedure, not a procedure of its own: the loop applies it to the clean batch before
``perturb``, so PGD-AT, TRADES, ... with augmentation is the same config entry with those
options set (``defenses.augmentation`` holds the transforms; the ``augment`` defense is standard
training with them on by default). With all three off the step is exactly the one without
augmentation.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from attacks import checks
from defenses.augmentation import Augmentation
from models.base import init_variables

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("cosine", "constant")


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """Hyper-parameters every training defense has.

    Attributes:
      epochs: passes over the training set.
      batch_size: examples per step (the last incomplete batch of an epoch is dropped).
      optimizer: ``adam`` (AdamW) or ``sgd`` (Nesterov momentum 0.9).
      lr: peak learning rate.
      schedule: ``cosine`` decay to 0 or ``constant``.
      weight_decay: decoupled weight decay.
      noise_std: augmentation: σ of Gaussian pixel noise added to each training image
        (then clipped to [0, 1]); 0 = off.
      crop_pad: augmentation: random crop of the image zero-padded by this many pixels on
        every side (a random shift of up to ``crop_pad`` pixels); 0 = off.
      hflip: augmentation: mirror each training image left-right with probability 1/2.
        Off by default; leave it off for digits and other data that is not mirror-symmetric.
    """

    epochs: int = 15
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 2e-3
    schedule: str = "cosine"
    weight_decay: float = 5e-4
    noise_std: float = 0.0
    crop_pad: int = 0
    hflip: bool = False

    def check(self) -> None:
        checks.check_count("epochs", self.epochs, checks.MAX_EPOCHS)
        checks.check_positive("batch_size", self.batch_size)
        checks.check_positive("lr", self.lr)
        checks.check_positive("weight_decay", self.weight_decay, allow_zero=True)
        checks.check_choice("optimizer", self.optimizer, OPTIMIZERS)
        checks.check_choice("schedule", self.schedule, SCHEDULES)
        checks.check_positive("noise_std", self.noise_std, allow_zero=True)
        checks.check_positive("crop_pad", self.crop_pad, allow_zero=True)

    @property
    def augmentation(self) -> Augmentation:
        """The :class:`defenses.augmentation.Augmentation` the loop applies to each clean batch."""
        return Augmentation(noise_std=self.noise_std, crop_pad=self.crop_pad, hflip=self.hflip)


class TrainState(NamedTuple):
    params: Any
    batch_stats: Any
    opt_state: Any


Perturb = Callable[[Callable, Any, jax.Array, jax.Array, jax.Array], jax.Array]
"""``perturb(logits_fn, variables, x, y, key) -> x_train`` for one batch."""

Loss = Callable[[Callable[[jax.Array], jax.Array], jax.Array, jax.Array, jax.Array], jax.Array]
"""``loss(logits_of, x, x_pert, y) -> scalar`` for one batch: ``x`` is the clean (augmented)
batch, ``x_pert`` what ``perturb`` made of it (``x`` itself without one), ``y`` the batch's
rows of ``y_train`` (integer labels or per-class targets), and ``logits_of(z)`` the model
being trained, in training mode and differentiable in its parameters (each call is one
BatchNorm forward pass)."""


def cross_entropy_loss(logits_of, x, x_pert, y) -> jax.Array:
    """The default :data:`Loss`: mean softmax cross-entropy of the labels on ``x_pert``."""
    del x
    return optax.softmax_cross_entropy_with_integer_labels(logits_of(x_pert), y).mean()


def _optimizer(s: TrainSettings, total_steps: int) -> optax.GradientTransformation:
    lr = (optax.cosine_decay_schedule(s.lr, max(total_steps, 1)) if s.schedule == "cosine"
          else optax.constant_schedule(s.lr))
    if s.optimizer == "adam":
        return optax.adamw(lr, weight_decay=s.weight_decay)
    return optax.chain(optax.add_decayed_weights(s.weight_decay),
                       optax.sgd(lr, momentum=0.9, nesterov=True))


def fit(module, x_train: np.ndarray, y_train: np.ndarray, settings: TrainSettings,
        key: jax.Array, perturb: Perturb | None = None,
        on_epoch: Callable[[int, float], None] | None = None,
        loss: Loss | None = None) -> dict:
    """Trains ``module`` and returns its variables (``params`` and, if any, ``batch_stats``).

    ``perturb`` sees the model in training mode (batch statistics, no running-average
    update), as adversarial-training references do in PyTorch. ``loss`` defaults to
    :func:`cross_entropy_loss`; ``y_train`` may be integer labels [N] or, for a ``loss``
    that wants them, float targets [N, K] (distillation's soft labels).
    """
    n = len(x_train)
    bs = min(settings.batch_size, n)
    steps_per_epoch = n // bs
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size = {settings.batch_size} exceeds the {n} training examples; "
                         f"lower it")
    k_init, k_train = jax.random.split(key)
    variables = init_variables(module, k_init, tuple(x_train.shape[1:]))
    tx = _optimizer(settings, settings.epochs * steps_per_epoch)
    state = TrainState(variables["params"], variables.get("batch_stats", {}),
                       tx.init(variables["params"]))
    has_bn = "batch_stats" in variables
    augmentation = settings.augmentation
    augmentation.check_image_shape(tuple(x_train.shape[1:]))
    loss = cross_entropy_loss if loss is None else loss

    def variables_of(params, batch_stats):
        return {"params": params, "batch_stats": batch_stats} if has_bn else {"params": params}

    def train_logits(variables, x):
        if has_bn:
            return module.apply(variables, x, train=True, mutable=["batch_stats"])[0]
        return module.apply(variables, x, train=True)

    def step(state: TrainState, batch):
        x, y, k = batch
        if augmentation.active:  # off: not even a key split, so the step is unchanged
            k_aug, k = jax.random.split(k)
            x = augmentation(x, k_aug)
        x_pert = x
        if perturb is not None:
            x_pert = perturb(train_logits, variables_of(state.params, state.batch_stats), x, y, k)

        def loss_fn(params):
            stats = state.batch_stats

            def logits_of(z):
                # Each forward pass in training mode updates the running statistics once,
                # as calling a PyTorch model twice does; the last update is kept.
                nonlocal stats
                v = variables_of(params, stats)
                if has_bn:
                    logits, updates = module.apply(v, z, train=True, mutable=["batch_stats"])
                    stats = updates["batch_stats"]
                    return logits
                return module.apply(v, z, train=True)

            value = loss(logits_of, x, x_pert, y)
            return value, stats

        (value, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        return TrainState(optax.apply_updates(state.params, updates), new_stats, opt_state), value

    # One jit around the whole step (attack included); a Python loop over steps, because
    # XLA:CPU runs convolution gradients far slower inside a lax.scan/while body.
    @functools.partial(jax.jit, donate_argnums=(0,))
    def train_step(state, x_all, y_all, idx, k):
        return step(state, (x_all[idx], y_all[idx], k))

    @jax.jit
    def epoch_order(k):
        perm = jax.random.permutation(k, n)[: steps_per_epoch * bs]
        return perm.reshape(steps_per_epoch, bs)

    x_all, y_all = jnp.asarray(x_train), jnp.asarray(y_train)
    for e in range(settings.epochs):
        k_epoch = jax.random.fold_in(k_train, e)
        order = epoch_order(k_epoch)
        total = 0.0
        for i in range(steps_per_epoch):
            state, value = train_step(state, x_all, y_all, order[i], jax.random.fold_in(k_epoch, i))
            total += value
        epoch_loss = total / steps_per_epoch
        if on_epoch is not None:
            on_epoch(e, float(epoch_loss))
    epoch_loss = float(epoch_loss)
    if not np.isfinite(epoch_loss):
        raise ValueError(f"training diverged (loss = {epoch_loss}); lower lr (now {settings.lr})")
    return jax.device_get(variables_of(state.params, state.batch_stats))
