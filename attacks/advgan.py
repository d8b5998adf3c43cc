"""AdvGAN (Xiao et al., IJCAI 2018): a generator network that maps an image to its perturbation.

A small fully convolutional Flax generator G is trained once against the target model's
weights on the training split; attacking is then one forward pass of G per batch. Its output
g = tanh(G(x)) ∈ [−1, 1]^D is scaled into the ε-ball of the cell being evaluated (L∞: δ = ε·g;
L2: δ = ε·g / max(‖g‖₂, 1)) and the image clipped to [0, 1], which never leaves the ball. The
generator is trained at ``eps_train`` with

  L_G = mean max(z_y − max_{j≠y} z_j, −κ)                    (C&W's adversarial loss)
      + hinge_weight · mean max(‖δ‖₂ − c, 0)                 (AdvGAN's norm hinge)
      + gan_weight · BCE(D(x + δ), real)                     (only with ``discriminator``)

with c = ``hinge`` × the largest L2 norm of the ε-ball (ε√D for L∞, ε for L2), and, with
``discriminator``, a small convolutional discriminator D trained to tell x from x + δ (the
paper's GAN term; off by default: it makes perturbations look natural, not stronger).

The attack protocol: an ``AdvGAN`` is a recipe (``trainable = True``); :meth:`AdvGAN.fit`
trains a generator and :meth:`AdvGAN.bind` returns the :class:`TrainedAdvGAN` attack that
runs it with the usual kernel signature. The app layer caches the trained variables (see
``bench``); the library only trains, saves nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from attacks import base, checks, losses, threat

DEFAULT_EPS_TRAIN: dict[str, float] = {"linf": 0.1, "l2": 1.0}


class Generator(nn.Module):
    """x ∈ [0, 1]^{H×W×C} -> g ∈ [−1, 1]^{H×W×C}, any image size: an encoder-decoder (two
    stride-2 convolutions down, a global feature vector added at the bottleneck, two stride-2
    transposed convolutions up, resized back to H×W) on the image and two coordinate channels.
    The perturbation that fools a classifier depends on the whole image (its class) and on the
    position of each pixel; a stack of small convolutions sees neither (measured: a three-layer
    3×3 generator moved a digits MLP only from 91% to 86% at L∞ 0.1)."""

    channels: int
    width: int = 16

    @nn.compact
    def __call__(self, x):
        b, h, w, _ = x.shape
        ii, jj = jnp.meshgrid(jnp.linspace(-1.0, 1.0, h), jnp.linspace(-1.0, 1.0, w), indexing="ij")
        coords = jnp.broadcast_to(jnp.stack([ii, jj], -1)[None], (b, h, w, 2)).astype(x.dtype)
        z = jnp.concatenate([2.0 * x - 1.0, coords], axis=-1)
        z1 = nn.relu(nn.Conv(self.width, (3, 3), padding="SAME")(z))
        z2 = nn.relu(nn.Conv(2 * self.width, (3, 3), strides=2, padding="SAME")(z1))
        z3 = nn.relu(nn.Conv(4 * self.width, (3, 3), strides=2, padding="SAME")(z2))
        g = nn.relu(nn.Dense(4 * self.width)(jnp.mean(z3, axis=(1, 2))))
        z3 = z3 + g[:, None, None, :]
        u = nn.relu(nn.ConvTranspose(2 * self.width, (3, 3), strides=(2, 2), padding="SAME")(z3))
        u = nn.relu(nn.ConvTranspose(self.width, (3, 3), strides=(2, 2), padding="SAME")(u))
        u = jax.image.resize(u, (b, h, w, u.shape[-1]), "linear")
        u = jnp.concatenate([u, z1, coords], axis=-1)
        return jnp.tanh(nn.Conv(self.channels, (3, 3), padding="SAME")(u))


class Discriminator(nn.Module):
    """x -> one logit (real vs perturbed): two strided convolutions, mean pool, dense."""

    width: int = 16

    @nn.compact
    def __call__(self, x):
        h = nn.leaky_relu(nn.Conv(self.width, (3, 3), strides=2, padding="SAME")(2.0 * x - 1.0), 0.2)
        h = nn.leaky_relu(nn.Conv(2 * self.width, (3, 3), strides=2, padding="SAME")(h), 0.2)
        return nn.Dense(1)(jnp.mean(h, axis=(1, 2)))[:, 0]


def scale_to_ball(g: jax.Array, eps: jax.Array, norm: str) -> jax.Array:
    """The perturbation ε·g (L∞) or ε·g/max(‖g‖₂, 1) (L2) of a generator output g ∈ [−1, 1]^D."""
    e = threat.per_example(eps, g)
    if norm == "linf":
        return e * g
    n = jnp.sqrt(jnp.sum(g.reshape(g.shape[0], -1) ** 2, axis=1)).reshape(e.shape)
    return e * g / jnp.maximum(n, 1.0)


@dataclasses.dataclass(frozen=True)
class AdvGAN:
    """AdvGAN: a Flax generator trained against the target; attacking is one forward pass.

    A recipe: :meth:`fit` trains the generator on training data, :meth:`bind` turns the
    trained variables into the attack. Calling an unbound ``AdvGAN`` is an error.

    Attributes:
      norm: threat model, ``linf`` or ``l2``.
      eps_train: ε the generator is trained at (None: 0.1 for L∞, 1.0 for L2); at attack
        time its output is scaled to the ε of the cell.
      epochs: passes over the training split.
      batch_size: training batch size (the last incomplete batch of an epoch is dropped).
      lr: Adam learning rate of the generator (and discriminator).
      width: channels of the generator's (and discriminator's) convolutions.
      confidence: κ of the adversarial loss.
      hinge: the norm hinge's bound c as a fraction of the ball's largest L2 norm.
      hinge_weight: weight of the norm hinge.
      discriminator: train with the GAN term (a discriminator), as in the paper.
      gan_weight: weight of the GAN term for the generator.
    """

    # Bump in the same commit as any change that can move this class's numbers (cell ids and checkpoint keys include it).
    numerics: ClassVar[int] = 1

    trainable: ClassVar[bool] = True

    norm: str = "linf"
    eps_train: float | None = None
    epochs: int = 20
    batch_size: int = 128
    lr: float = 3e-3
    width: int = 16
    confidence: float = 0.0
    hinge: float = 0.5
    hinge_weight: float = 1.0
    discriminator: bool = False
    gan_weight: float = 0.1

    def __post_init__(self):
        checks.check_choice("norm", self.norm, ("linf", "l2"))
        if self.eps_train is not None:
            checks.check_positive("eps_train", self.eps_train)
        for name in ("epochs", "batch_size", "width", "lr"):
            checks.check_positive(name, getattr(self, name))
        for name in ("confidence", "hinge", "hinge_weight", "gan_weight"):
            checks.check_positive(name, getattr(self, name), allow_zero=True)

    @property
    def train_eps(self) -> float:
        return self.eps_train if self.eps_train is not None else DEFAULT_EPS_TRAIN[self.norm]

    def init(self, key: jax.Array, x: jax.Array) -> dict:
        """Random generator (and discriminator) variables for images shaped like ``x``."""
        k_g, k_d = jax.random.split(key)
        out = {"generator": Generator(x.shape[-1], self.width).init(k_g, x[:1])}
        if self.discriminator:
            out["discriminator"] = Discriminator(self.width).init(k_d, x[:1])
        return out

    def perturb(self, variables: dict, x: jax.Array, eps: jax.Array) -> jax.Array:
        """x + δ(x) clipped to [0, 1]: inside the ε-ball (the clip moves towards x)."""
        g = Generator(x.shape[-1], self.width).apply(variables["generator"], x)
        return jnp.clip(x + scale_to_ball(g, eps, self.norm), 0.0, 1.0)

    def _losses(self, variables, logits_fn, params, x, y, key):
        """(generator loss, discriminator loss) on one batch, both per-batch means."""
        x_adv = self.perturb(variables, x, jnp.float32(self.train_eps))
        logits = base.apply_logits(logits_fn, params, x_adv, key)
        adv = jnp.mean(jnp.maximum(-losses.margin(logits, y), -self.confidence))
        d = threat.distance(x_adv, x, "l2")
        dim = math.prod(x.shape[1:])
        bound = self.hinge * self.train_eps * (math.sqrt(dim) if self.norm == "linf" else 1.0)
        loss_g = adv + self.hinge_weight * jnp.mean(jnp.maximum(d - bound, 0.0))
        loss_d = jnp.float32(0.0)
        if self.discriminator:
            disc = Discriminator(self.width)
            fake = disc.apply(variables["discriminator"], x_adv)
            loss_g += self.gan_weight * jnp.mean(optax.sigmoid_binary_cross_entropy(
                fake, jnp.ones_like(fake)))
            real = disc.apply(variables["discriminator"], x)
            fake_d = disc.apply(variables["discriminator"], jax.lax.stop_gradient(x_adv))
            loss_d = jnp.mean(optax.sigmoid_binary_cross_entropy(real, jnp.ones_like(real))
                              + optax.sigmoid_binary_cross_entropy(fake_d, jnp.zeros_like(fake_d)))
        return loss_g, loss_d

    def fit(self, logits_fn: Callable, params: Any, x_train: np.ndarray, y_train: np.ndarray,
            key: jax.Array, on_epoch: Callable[[int, float], None] | None = None) -> dict:
        """Trains the generator against ``logits_fn(params, ·)`` on (x_train, y_train).

        One jitted step per batch: Adam on the generator's loss and, with ``discriminator``,
        on the discriminator's. Deterministic for ``key``. Returns the trained variables
        (``{"generator": ...}``, plus ``"discriminator"``).
        """
        n = len(x_train)
        bsz = min(self.batch_size, n)
        k_init, k_loop = jax.random.split(key)
        variables = self.init(k_init, jnp.asarray(x_train[:1]))
        opt = optax.adam(self.lr)
        state = opt.init(variables)

        def step(variables, state, x, y, k):
            def loss_g(v):
                return self._losses({**variables, "generator": v}, logits_fn, params, x, y, k)[0]

            value, grad_g = jax.value_and_grad(loss_g)(variables["generator"])
            grads = {"generator": grad_g}
            if self.discriminator:
                def only_d(v):
                    return self._losses({**variables, "discriminator": v}, logits_fn, params,
                                        x, y, k)[1]

                grads["discriminator"] = jax.grad(only_d)(variables["discriminator"])
            updates, state = opt.update(grads, state, variables)
            return optax.apply_updates(variables, updates), state, value

        step = jax.jit(step)
        x_train, y_train = np.asarray(x_train, np.float32), np.asarray(y_train, np.int32)
        for epoch in range(self.epochs):
            k_epoch = jax.random.fold_in(k_loop, epoch)
            order = np.asarray(jax.random.permutation(jax.random.fold_in(k_epoch, 0), n))
            total = 0.0
            for i in range(n // bsz):
                idx = order[i * bsz:(i + 1) * bsz]
                variables, state, value = step(variables, state, x_train[idx], y_train[idx],
                                               jax.random.fold_in(k_epoch, i + 1))
                total += float(value)
            if on_epoch is not None:
                on_epoch(epoch, total / max(n // bsz, 1))
        return jax.device_get(variables)

    def bind(self, variables: dict) -> TrainedAdvGAN:
        """The attack that applies this trained generator."""
        return TrainedAdvGAN(self, variables, variables_digest(variables))

    def __call__(self, logits_fn, params, x, y, eps, key, target=None):
        raise ValueError("advgan has no trained generator: call attack.fit(logits_fn, params, "
                         "x_train, y_train, key) and attack.bind(variables) first (a sweep "
                         "does this for you)")


def variables_digest(variables: Any) -> str:
    """A short sha256 of a variables pytree (names, shapes and float bits)."""
    h = hashlib.sha256()
    for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(variables)[0],
                             key=lambda kv: jax.tree_util.keystr(kv[0])):
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(jax.tree_util.keystr(path).encode() + str(a.shape).encode() + a.tobytes())
    return h.hexdigest()[:16]


@dataclasses.dataclass(frozen=True, eq=False)
class TrainedAdvGAN:
    """An :class:`AdvGAN` with its trained generator: ``attack(logits_fn, params, x, y, eps,
    key) -> x_adv`` is one forward pass of the generator (the model is not queried).
    Equal (and hashed) by recipe and variables digest, so compiled programs are reused."""

    recipe: AdvGAN
    variables: Any
    digest: str

    @property
    def norm(self) -> str:
        return self.recipe.norm

    def __hash__(self):
        return hash((self.recipe, self.digest))

    def __eq__(self, other):
        return (isinstance(other, TrainedAdvGAN) and self.recipe == other.recipe
                and self.digest == other.digest)

    @base.compiled
    def __call__(self, logits_fn, params, x, y, eps, key, target=None):
        del logits_fn, params, y, key, target
        return jax.lax.stop_gradient(self.recipe.perturb(self.variables, x, eps))

