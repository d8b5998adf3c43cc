"""The data-augmentation transforms every training procedure applies to its clean batches.

:class:`Augmentation` is built from the settings every procedure has
(``TrainSettings.noise_std``, ``crop_pad``, ``hflip``) and applied by the shared loop
(``defenses.training.fit``) before the procedure's ``perturb``; ``defenses.augment`` holds the
``augment`` defense (standard training with the transforms on). A module of its own so that
the loop can import the transforms and the defense can import the loop without a circle.

Each example gets its own random crop, flip and noise from the step's key; with every
transform off the loop does not even split the key, so training is exactly standard training.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """A random transform of a batch of [0, 1] NHWC images, applied as crop → flip → noise.

    Attributes:
      noise_std: σ of Gaussian pixel noise, added last and clipped to [0, 1]; 0 = off.
      crop_pad: zero-pad every side by this many pixels and crop back to the image size at a
        random offset (a shift by up to ``crop_pad`` pixels each way); 0 = off.
      hflip: mirror left-right with probability 1/2 (not for digits or text).
    """

    noise_std: float = 0.0
    crop_pad: int = 0
    hflip: bool = False

    @property
    def active(self) -> bool:
        """Whether any transform is on (the loop skips augmentation entirely otherwise)."""
        return self.noise_std > 0 or self.crop_pad > 0 or self.hflip

    def check_image_shape(self, image_shape: tuple[int, ...]) -> None:
        """Raises ``ValueError`` when ``crop_pad`` could shift the whole image out of view."""
        h, w = image_shape[:2]
        if self.crop_pad >= min(h, w):
            raise ValueError(f"crop_pad = {self.crop_pad} is impossible for {h}x{w} images; "
                             f"it must be < {min(h, w)}")

    def __call__(self, x: jax.Array, key: jax.Array) -> jax.Array:
        k_crop, k_flip, k_noise = jax.random.split(key, 3)
        if self.crop_pad > 0:
            x = random_crop(x, self.crop_pad, k_crop)
        if self.hflip:
            x = random_hflip(x, k_flip)
        if self.noise_std > 0:
            x = jnp.clip(x + self.noise_std * jax.random.normal(k_noise, x.shape, x.dtype), 0.0, 1.0)
        return x


def random_crop(x: jax.Array, pad: int, key: jax.Array) -> jax.Array:
    """Per example, the image zero-padded by ``pad`` and cropped back at a uniform offset."""
    b, h, w, c = x.shape
    padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    offsets = jax.random.randint(key, (b, 2), 0, 2 * pad + 1)
    crop = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, c))
    return jax.vmap(crop)(padded, offsets)


def random_hflip(x: jax.Array, key: jax.Array) -> jax.Array:
    """Per example, the image mirrored left-right with probability 1/2."""
    flip = jax.random.bernoulli(key, 0.5, x.shape[:1]).reshape((-1, 1, 1, 1))
    return jnp.where(flip, x[:, :, ::-1, :], x)
