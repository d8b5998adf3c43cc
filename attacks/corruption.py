"""Common corruptions (Hendrycks & Dietterich 2019; RobustBench's third threat model).

Not an adversarial attack: a fixed, model-blind transformation of each image at a severity
1..5 (0 = the clean image), the "ε" of the ``severity`` threat model. The corruptions are JAX
ports of the reference implementation, the ``imagecorruptions`` package 1.1.2 (bethgelab;
ImageNet-C's code generalised to any image size ≥ 32 px), with its severity parameter tables
as they are. Those parameters were chosen for 224-px ImageNet images: on 8×8 digits the blurs
(a 17×17 defocus disk, a 21–41-px motion kernel) are far harsher than on the images they were
made for, and pixelation at severity 5 leaves 2×2 blocks. Severities are still comparable
across models on the same data, which is what the benchmark reports.

Images are float32 NHWC in [0, 1], grayscale with C = 1; the reference takes uint8 H×W×3 in
[0, 255] and stacks a grayscale image to three equal channels. A grayscale image here is
corrupted as one channel: deterministic corruptions give exactly the reference's (equal)
channels, random ones draw one noise channel instead of three. Results are not quantised to
uint8 (the reference's ``corrupt`` truncates its float output with ``np.uint8``).

Random corruptions take an explicit PRNG key; every draw is ``fold_in(key, i)`` for the i-th
draw of the reference's own sequence (``_uniform``/``_normal``), which lets the tests feed the
reference the very same numbers. Every function is pure and jit/vmap friendly; the severity
may be traced (``lax.switch`` over the five static parameter sets).

All 15 standard corruptions are ported (:data:`NOT_PORTED`, the corruptions a sweep would
skip and why, is empty). ``jpeg_compression`` runs Pillow's JPEG codec, the codec the
reference uses, on the host through ``jax.pure_callback``. ``frost`` blends crops of the
reference's frost photographs, vendored in ``attacks/data/frost/`` as the reference resizes
them for images of at most 315 × 527 px (:data:`FROST_MAX_SIZE`; larger images are refused).
"""

from __future__ import annotations

import dataclasses
import functools
import io
import math
from pathlib import Path
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from attacks import base, checks

KINDS = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur",
         "motion_blur", "zoom_blur", "snow", "frost", "fog", "brightness", "contrast",
         "elastic_transform", "pixelate", "jpeg_compression")
"""The 15 standard corruptions of ImageNet-C / CIFAR-10-C, in the reference's order."""

NOT_PORTED: dict[str, str] = {}
"""Standard corruptions robustax cannot apply, and why (none since frost was ported); a sweep
skips them and names them with this note in every cell of the entry (``details.skipped``)."""

SEVERITIES = (1, 2, 3, 4, 5)
SEVERITY_NORM = "severity"


def available(kind: str) -> bool:
    """Whether ``kind`` is one of the standard corruptions robustax applies."""
    return kind in KINDS and kind not in NOT_PORTED


# ---------------------------------------------------------------- random draws

def _uniform(key, i, shape, lo, hi):
    """The reference's i-th ``np.random.uniform(lo, hi, shape)``, from ``fold_in(key, i)``."""
    return jax.random.uniform(jax.random.fold_in(key, i), shape, jnp.float32, lo, hi)


def _normal(key, i, shape, loc=0.0, scale=1.0):
    """The reference's i-th ``np.random.normal(loc, scale, shape)``, from ``fold_in(key, i)``."""
    return loc + scale * jax.random.normal(jax.random.fold_in(key, i), shape, jnp.float32)


# ---------------------------------------------------------------- static helpers (numpy)

def _reflect101(i: np.ndarray, n: int) -> np.ndarray:
    """OpenCV's BORDER_REFLECT_101 index map (``gfedcb|abcdefgh|gfedcba``), any distance."""
    if n == 1:
        return np.zeros_like(i)
    period = 2 * (n - 1)
    i = np.mod(i, period)
    return np.where(i >= n, period - i, i)


def _symmetric(i, n: int):
    """scipy's ``reflect`` index map (``dcba|abcd|dcba``), any distance; numpy or JAX ints."""
    xp = jnp if isinstance(i, jax.Array) else np
    i = xp.mod(i, 2 * n)
    return xp.where(i >= n, 2 * n - 1 - i, i)


def _gaussian_kernel_cv2(ksize: int, sigma: float) -> np.ndarray:
    """``cv2.getGaussianKernel(ksize, sigma)`` (float64, σ > 0)."""
    t = np.arange(ksize) - (ksize - 1) / 2
    k = np.exp(-t ** 2 / (2 * sigma ** 2))
    return k / k.sum()


def _correlate_reflect101(img: np.ndarray, k: np.ndarray) -> np.ndarray:
    """``cv2.filter2D(img, -1, k)`` of a 2-D float image: correlation, centred anchor,
    BORDER_REFLECT_101."""
    kh, kw = k.shape
    rows = _reflect101(np.arange(-(kh // 2), img.shape[0] + kh // 2), img.shape[0])
    cols = _reflect101(np.arange(-(kw // 2), img.shape[1] + kw // 2), img.shape[1])
    p = img[rows][:, cols]
    out = np.zeros(img.shape, np.float64)
    for a in range(kh):
        for b in range(kw):
            out += k[a, b] * p[a:a + img.shape[0], b:b + img.shape[1]]
    return out


@functools.cache
def _disk(radius: int, alias_blur: float) -> np.ndarray:
    """The reference's antialiased disk kernel (``disk``: an aliased disk normalised to sum 1,
    then ``cv2.GaussianBlur`` with a 3×3 (radius ≤ 8) or 5×5 window)."""
    if radius <= 8:
        L, ksize = np.arange(-8, 9), 3
    else:
        L, ksize = np.arange(-radius, radius + 1), 5
    X, Y = np.meshgrid(L, L)
    d = np.array(X ** 2 + Y ** 2 <= radius ** 2, np.float32)
    d /= d.sum()
    g = _gaussian_kernel_cv2(ksize, alias_blur)
    return _correlate_reflect101(d.astype(np.float64), np.outer(g, g)).astype(np.float32)


def _linear_zoom_matrix(n_in: int, n_out: int) -> np.ndarray:
    """scipy.ndimage.zoom's order-1 interpolation (``grid_mode=False``) of one axis as an
    [n_out, n_in] matrix: output o samples input o·(n_in − 1)/(n_out − 1)."""
    m = np.zeros((n_out, n_in), np.float64)
    scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    for o in range(n_out):
        p = o * scale
        i0 = min(int(math.floor(p)), n_in - 1)
        f = p - i0
        m[o, i0] += 1 - f
        if f > 0:
            m[o, min(i0 + 1, n_in - 1)] += f
    return m


@functools.cache
def _clipped_zoom_matrix(n: int, factor: float, crop: bool = True) -> np.ndarray:
    """The reference's ``clipped_zoom`` of one axis: crop the centre ⌈n/factor⌉ pixels, zoom
    them back by ``factor`` (``scipy.ndimage.zoom``, order 1) and keep the first ``n``: an
    [n, n] matrix (``crop=False``: all ``round(⌈n/factor⌉·factor)`` rows, as snow uses it)."""
    ch = int(np.ceil(n / float(factor)))
    top = (n - ch) // 2
    n_out = int(round(ch * factor))
    z = _linear_zoom_matrix(ch, n_out)
    if not crop:
        m = np.zeros((n_out, n), np.float64)
        m[:, top:top + ch] = z
        return m.astype(np.float32)
    z = z[:n]
    m = np.zeros((len(z), n), np.float64)
    m[:, top:top + ch] = z
    if len(m) < n:  # the reference adds a short layer into the top-left corner
        m = np.concatenate([m, np.zeros((n - len(m), n))])
    return m.astype(np.float32)


@functools.cache
def _pil_box_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Pillow's ``Image.BOX`` resampling of one axis (``precompute_coeffs`` in Resample.c) as
    an [n_out, n_in] matrix (Pillow then rounds to 8 bits; not done here)."""
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    m = np.zeros((n_out, n_in), np.float64)
    for xx in range(n_out):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), n_in)
        for x in range(xmin, xmax):
            t = (x - center + 0.5) / filterscale
            m[xx, x] = 1.0 if -0.5 < t <= 0.5 else 0.0
        if m[xx].sum() > 0:
            m[xx] /= m[xx].sum()
    return m.astype(np.float32)


def _pil_nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """Pillow's ``Image.NEAREST`` resize of one axis: output x reads input ⌊(x + ½)·n_in/n_out⌋."""
    return np.minimum(np.floor((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(int), n_in - 1)


def _gaussian_filter_1d_weights(sigma: float, truncate: float) -> np.ndarray:
    """scipy.ndimage.gaussian_filter1d's weights (radius ⌊truncate·σ + ½⌋)."""
    radius = int(truncate * sigma + 0.5)
    t = np.arange(-radius, radius + 1)
    w = np.exp(-0.5 / sigma ** 2 * t ** 2) if sigma > 0 else (t == 0).astype(float)
    return w / w.sum()


# ---------------------------------------------------------------- JAX pieces

def _filter_axis(x: jax.Array, w: np.ndarray, axis: int, index_map) -> jax.Array:
    """Correlation of ``x`` along ``axis`` with the 1-D weights ``w`` (centred), borders
    extended by ``index_map(i, n)``."""
    n = x.shape[axis]
    r = len(w) // 2
    idx = index_map(np.arange(-r, n + r), n)
    p = jnp.take(x, jnp.asarray(idx), axis=axis)
    out = 0.0
    for j, wj in enumerate(w):
        out = out + float(wj) * jax.lax.slice_in_dim(p, j, j + n, axis=axis)
    return out


def _correlate2d(x: jax.Array, k: np.ndarray) -> jax.Array:
    """``cv2.filter2D`` per channel of an H×W×C image (BORDER_REFLECT_101)."""
    H, W, _ = x.shape
    kh, kw = k.shape
    rows = _reflect101(np.arange(-(kh // 2), H + kh // 2), H)
    cols = _reflect101(np.arange(-(kw // 2), W + kw // 2), W)
    p = x[jnp.asarray(rows)][:, jnp.asarray(cols)]
    out = jnp.zeros_like(x)
    for a in range(kh):
        for b in range(kw):
            if k[a, b] != 0:
                out = out + float(k[a, b]) * p[a:a + H, b:b + W]
    return out


def _shift(x: jax.Array, dx: jax.Array, dy: jax.Array) -> jax.Array:
    """The reference's ``shift``: a translation by (dx, dy) with edge pixels repeated."""
    H, W = x.shape[:2]
    rows = jnp.clip(jnp.arange(H) - dy, 0, H - 1)
    cols = jnp.clip(jnp.arange(W) - dx, 0, W - 1)
    return x[rows][:, cols]


def _motion_blur_core(x: jax.Array, radius: int, sigma: float, angle: jax.Array) -> jax.Array:
    """The reference's ``_motion_blur``: a one-sided Gaussian kernel of ``2·radius + 1`` taps
    along ``angle`` (degrees), shifted copies summed; taps beyond the image stop the sum (the
    reference's ``break``), without renormalising."""
    width = 2 * radius + 1
    k = np.exp(-np.arange(width) ** 2 / (2 * sigma ** 2)) / (np.sqrt(2 * np.pi) * sigma)
    k = k / k.sum()
    rad = jnp.deg2rad(angle)
    # point = (width·sin, width·cos), hypot = width: i·point/hypot = i·(sin, cos)
    sin, cos = jnp.sin(rad), jnp.cos(rad)
    H, W = x.shape[:2]
    out = jnp.zeros_like(x)
    alive = jnp.bool_(True)
    for i in range(width):
        dy = -jnp.ceil(i * sin - 0.5).astype(jnp.int32)
        dx = -jnp.ceil(i * cos - 0.5).astype(jnp.int32)
        alive = alive & (jnp.abs(dy) < H) & (jnp.abs(dx) < W)
        out = out + jnp.where(alive, float(k[i]), 0.0) * _shift(x, dx, dy)
    return out


def _plasma_fractal(key: jax.Array, mapsize: int, wibbledecay: float) -> jax.Array:
    """The reference's diamond-square height map in [0, 1] (``plasma_fractal``), its three
    ``np.random.uniform`` draws per level taken in the same order."""
    m = jnp.zeros((mapsize, mapsize), jnp.float32)
    step, wibble, draw = mapsize, 100.0, 0

    def wibbled(a, i, wib):
        return a / 4 + wib * _uniform(key, i, a.shape, -wib, wib)

    while step >= 2:
        half = step // 2
        corner = m[0::step, 0::step]
        sq = corner + jnp.roll(corner, -1, axis=0)
        sq = sq + jnp.roll(sq, -1, axis=1)
        m = m.at[half::step, half::step].set(wibbled(sq, draw, wibble))
        draw += 1
        dr = m[half::step, half::step]
        ul = m[0::step, 0::step]
        lt = dr + jnp.roll(dr, 1, axis=0) + ul + jnp.roll(ul, -1, axis=1)
        m = m.at[0::step, half::step].set(wibbled(lt, draw, wibble))
        draw += 1
        tt = dr + jnp.roll(dr, 1, axis=1) + ul + jnp.roll(ul, -1, axis=0)
        m = m.at[half::step, 0::step].set(wibbled(tt, draw, wibble))
        draw += 1
        step //= 2
        wibble /= wibbledecay
    m = m - m.min()
    return m / m.max()


def _bilinear_reflect(img: jax.Array, r: jax.Array, c: jax.Array) -> jax.Array:
    """``scipy.ndimage.map_coordinates(img, (r, c), order=1, mode='reflect')`` of an H×W×C
    image at real coordinates ``r``, ``c`` ([H, W] each), per channel."""
    H, W = img.shape[:2]
    r0, c0 = jnp.floor(r), jnp.floor(c)
    fr, fc = (r - r0)[..., None], (c - c0)[..., None]
    r0, c0 = r0.astype(jnp.int32), c0.astype(jnp.int32)
    R0, R1 = _symmetric(r0, H), _symmetric(r0 + 1, H)
    C0, C1 = _symmetric(c0, W), _symmetric(c0 + 1, W)
    return ((1 - fr) * ((1 - fc) * img[R0, C0] + fc * img[R0, C1])
            + fr * ((1 - fc) * img[R1, C0] + fc * img[R1, C1]))


# ---------------------------------------------------------------- the corruptions
# Each takes one H×W×C image in [0, 1], a static severity 1..5 and a key; parameter tables
# are the reference's (imagecorruptions 1.1.2, corruptions.py).

def gaussian_noise(x, s, key):
    c = [.08, .12, 0.18, 0.26, 0.38][s - 1]
    return jnp.clip(x + _normal(key, 0, x.shape, scale=c), 0, 1)


def shot_noise(x, s, key):
    c = [60, 25, 12, 5, 3][s - 1]
    lam = x * c
    return jnp.clip(jax.random.poisson(jax.random.fold_in(key, 0), lam).astype(x.dtype) / c, 0, 1)


def impulse_noise(x, s, key):
    """skimage's ``random_noise(mode='s&p', amount=c)``: each value flipped with probability
    c, to 1 or 0 with even odds."""
    c = [.03, .06, .09, 0.17, 0.27][s - 1]
    flipped = _uniform(key, 0, x.shape, 0.0, 1.0) < c
    salted = _uniform(key, 1, x.shape, 0.0, 1.0) < 0.5
    return jnp.where(flipped, jnp.where(salted, 1.0, 0.0), x).astype(x.dtype)


def defocus_blur(x, s, key):
    del key
    radius, alias = [(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)][s - 1]
    return jnp.clip(_correlate2d(x, _disk(radius, alias)), 0, 1)


def motion_blur(x, s, key):
    radius, sigma = [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)][s - 1]
    angle = _uniform(key, 0, (), -45.0, 45.0)
    return jnp.clip(_motion_blur_core(x * 255.0, radius, sigma, angle), 0, 255) / 255.0


_ZOOMS = (np.arange(1, 1.11, 0.01), np.arange(1, 1.16, 0.01), np.arange(1, 1.21, 0.02),
          np.arange(1, 1.26, 0.02), np.arange(1, 1.31, 0.03))


def zoom_blur(x, s, key):
    del key
    H, W, _ = x.shape
    out = jnp.zeros_like(x)
    for z in _ZOOMS[s - 1]:
        mh, mw = _clipped_zoom_matrix(H, float(z)), _clipped_zoom_matrix(W, float(z))
        out = out + jnp.einsum("ah,hwc,bw->abc", mh, x, mw)
    return jnp.clip((x + out) / (len(_ZOOMS[s - 1]) + 1), 0, 1)


def fog(x, s, key):
    c0, c1 = [(1.5, 2), (2., 2), (2.5, 1.7), (2.5, 1.5), (3., 1.4)][s - 1]
    H, W, C = x.shape
    mapsize = 1 << (max(H, W, 3) - 1).bit_length()  # next power of two of the reference's
    max_val = x.max()                                # max(shape) of an H×W×3 image
    y = x + c0 * _plasma_fractal(key, mapsize, c1)[:H, :W, None]
    return jnp.clip(y * max_val / (max_val + c0), 0, 1)


def brightness(x, s, key):
    """V += c in HSV: with hue and saturation kept, every channel scales by V'/V (a black
    pixel becomes grey V'), the same as skimage's rgb2hsv → hsv2rgb up to rounding; a
    grayscale image is V itself."""
    del key
    c = [.1, .2, .3, .4, .5][s - 1]
    v = x.max(axis=-1, keepdims=True)
    v2 = jnp.clip(v + c, 0, 1)
    return jnp.clip(jnp.where(v > 0, x * (v2 / jnp.where(v > 0, v, 1.0)), v2), 0, 1)


def contrast(x, s, key):
    del key
    c = [0.4, .3, .2, .1, .05][s - 1]
    means = x.mean(axis=(0, 1), keepdims=True)
    return jnp.clip((x - means) * c + means, 0, 1)


def elastic_transform(x, s, key):
    H, W, _ = x.shape
    sigma = (H * 0.01, W * 0.01)
    alpha = [250 * 0.05, 250 * 0.065, 250 * 0.085, 250 * 0.1, 250 * 0.12][s - 1]
    max_d = H * 0.005  # the reference uses the height for both axes

    def smooth(field):  # skimage.filters.gaussian(mode='reflect', truncate=3)
        for axis, sg in enumerate(sigma):
            field = _filter_axis(field, _gaussian_filter_1d_weights(sg, 3.0), axis, _symmetric)
        return field * alpha

    dx = smooth(_uniform(key, 0, (H, W), -max_d, max_d))
    dy = smooth(_uniform(key, 1, (H, W), -max_d, max_d))
    rows, cols = jnp.meshgrid(jnp.arange(H, dtype=jnp.float32),
                              jnp.arange(W, dtype=jnp.float32), indexing="ij")
    return jnp.clip(_bilinear_reflect(x, rows + dy, cols + dx), 0, 1)


def pixelate(x, s, key):
    """Pillow's BOX down-sampling to ⌊c·size⌋ (at least 1 px; Pillow refuses 0) and NEAREST
    up-sampling back, without Pillow's rounding to 8 bits."""
    del key
    c = [0.6, 0.5, 0.4, 0.3, 0.25][s - 1]
    H, W, _ = x.shape
    h, w = max(int(H * c), 1), max(int(W * c), 1)
    small = jnp.einsum("ah,hwc,bw->abc", _pil_box_matrix(H, h), x, _pil_box_matrix(W, w))
    return small[jnp.asarray(_pil_nearest_index(h, H))][:, jnp.asarray(_pil_nearest_index(w, W))]


def _gray(x):
    """OpenCV's RGB2GRAY (0.299 R + 0.587 G + 0.114 B); a grayscale image as it is."""
    if x.shape[-1] == 1:
        return x
    return (0.299 * x[..., :1] + 0.587 * x[..., 1:2] + 0.114 * x[..., 2:3])


def snow(x, s, key):
    """A normal layer zoomed by c₂, thresholded at c₃, motion-blurred along a random angle in
    [−135°, −45°] and rounded to 8 bits, added twice (as it is and turned by 180°) to the
    image pushed towards 1.5·grey + 0.5."""
    c = [(0.1, 0.3, 3, 0.5, 10, 4, 0.8), (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
         (0.55, 0.3, 4, 0.9, 12, 8, 0.7), (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
         (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55)][s - 1]
    H, W, _ = x.shape
    layer = _normal(key, 0, (H, W), c[0], c[1])
    zh, zw = _clipped_zoom_matrix(H, float(c[2]), False), _clipped_zoom_matrix(W, float(c[2]), False)
    layer = zh @ layer @ zw.T  # larger than the image until after the motion blur
    layer = jnp.clip(jnp.where(layer < c[3], 0.0, layer), 0, 1)
    layer = _motion_blur_core(layer, c[4], c[5], _uniform(key, 1, (), -135.0, -45.0))
    layer = (jnp.round(layer * 255) / 255)[:H, :W, None]
    y = c[6] * x + (1 - c[6]) * jnp.maximum(x, _gray(x) * 1.5 + 0.5)
    return jnp.clip(y + layer + layer[::-1, ::-1], 0, 1)


def glass_blur(x, s, key):
    """Gaussian blur (σ, scikit-image's ``nearest`` borders), truncated to 8 bits, then
    ``iterations`` sweeps of random local "swaps" (each pixel from the bottom right, not within
    ``max_delta`` of the border, with one up to ``max_delta`` away, in the reference's order;
    the reference's swap copies, see below), then the blur again."""
    sigma, d, iterations = [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)][s - 1]
    H, W, _ = x.shape
    w = _gaussian_filter_1d_weights(sigma, 4.0)

    def clamp(i, n):
        xp = jnp if isinstance(i, jax.Array) else np
        return xp.clip(i, 0, n - 1)

    def blur(z):
        return _filter_axis(_filter_axis(z, w, 0, clamp), w, 1, clamp)

    img = jnp.floor(blur(x) * 255.0)  # np.uint8 of the blurred image × 255
    positions = [(h, ww) for _ in range(iterations) for h in range(H - d, d, -1)
                 for ww in range(W - d, d, -1)]
    if positions:
        pos = jnp.asarray(positions, jnp.int32)
        offsets = jax.vmap(lambda i: jax.random.randint(jax.random.fold_in(key, i), (2,), -d, d))(
            jnp.arange(len(positions)))  # the reference's (dx, dy) per position

        def swap(i, z):
            # The reference's ``x[h, w], x[h', w'] = x[h', w'], x[h, w]`` swaps two numpy
            # views of an H×W×3 array: x[h, w] gets x[h', w'], which then gets itself back.
            # So it copies, and so does the port.
            h, ww = pos[i, 0], pos[i, 1]
            return z.at[h, ww].set(z[h + offsets[i, 1], ww + offsets[i, 0]])

        img = jax.lax.fori_loop(0, len(positions), swap, img)
    return jnp.clip(blur(img / 255.0), 0, 1)


_FROST_DIR = Path(__file__).parent / "data" / "frost"
_FROST_SOURCE_SHAPES = ((600, 900), (315, 560), (315, 560), (350, 527), (495, 660))
"""The reference's five photographs as ``cv2.imread`` reads them (rows, columns)."""
FROST_MAX_SIZE = (min(h for h, _ in _FROST_SOURCE_SHAPES),
                  min(w for _, w in _FROST_SOURCE_SHAPES))
"""The largest image (rows, columns) ``frost`` takes: 315 × 527 px. The reference resizes
every photograph that holds the image by 1.1, which the vendored arrays are; a larger image
makes it resize by another factor."""


@functools.cache
def _frost_photos() -> tuple[np.ndarray, ...]:
    """The five photographs exactly as the reference's ``frost`` crops them (``cv2.imread``,
    BGR, resized by 1.1 with ``INTER_CUBIC``; ``tests/make_frost.py`` made them)."""
    from PIL import Image

    return tuple(np.asarray(Image.open(_FROST_DIR / f"frost{i}.png")) for i in range(1, 6))


def _frost_layer(shape: tuple[int, ...], key: jax.Array) -> jax.Array:
    """The reference's frost crop in [0, 1]: photograph ``randint(5)``, a crop at
    (``randint(0, rows − H)``, ``randint(0, cols − W)``) (draws 0, 1, 2), its BGR channels
    turned to RGB; for fewer than 3 channels the reference's ``rgb2gray`` (0.2989, 0.5870,
    0.1140) of the crop as it is, i.e. weighing B, G, R (a quirk kept)."""
    H, W, C = shape
    if H > FROST_MAX_SIZE[0] or W > FROST_MAX_SIZE[1] or C > 3:
        raise ValueError(f"frost takes images of at most {FROST_MAX_SIZE[0]}×"
                         f"{FROST_MAX_SIZE[1]} px with 1 to 3 channels, not {H}×{W}×{C} (the "
                         f"reference resizes its photographs differently for larger images); "
                         f"resize the images first")
    photos = _frost_photos()
    idx = jax.random.randint(jax.random.fold_in(key, 0), (), 0, len(photos))
    rows = jnp.asarray([p.shape[0] for p in photos], jnp.int32)[idx]
    cols = jnp.asarray([p.shape[1] for p in photos], jnp.int32)[idx]
    top = jax.random.randint(jax.random.fold_in(key, 1), (), 0, rows - H)
    left = jax.random.randint(jax.random.fold_in(key, 2), (), 0, cols - W)
    crops = jnp.stack([jax.lax.dynamic_slice(jnp.asarray(p), (top, left, 0), (H, W, 3))
                       for p in photos])  # each start is in range for the photograph drawn
    crop = crops[idx].astype(jnp.float32) / 255.0
    if C < 3:
        return (0.2989 * crop[..., :1] + 0.5870 * crop[..., 1:2] + 0.1140 * crop[..., 2:3])
    return crop[..., ::-1]


def frost(x, s, key):
    """A crop of one of five frost photographs blended in: c₀·x + c₁·frost (images of at most
    :data:`FROST_MAX_SIZE`)."""
    c0, c1 = [(1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)][s - 1]
    return jnp.clip(c0 * x + c1 * _frost_layer(x.shape, key), 0, 1)


_JPEG_QUALITY = (25, 18, 15, 10, 7)


def _jpeg_host(x: np.ndarray, severity: np.ndarray) -> np.ndarray:
    """Pillow's JPEG round trip at the reference's quality, per image, on the host: a
    grayscale image is stacked to RGB as the reference does and channel 0 kept (its chroma is
    constant, so the decoded channels are equal)."""
    from PIL import Image

    x = np.asarray(x)
    sev = np.broadcast_to(np.asarray(severity), x.shape[:-3])
    out = np.array(x, np.float32, copy=True)
    flat_x, flat_s, flat_o = x.reshape((-1,) + x.shape[-3:]), sev.reshape(-1), \
        out.reshape((-1,) + x.shape[-3:])
    for i in range(len(flat_x)):
        s = int(flat_s[i])
        if s == 0:
            continue
        img = np.uint8(np.clip(np.round(flat_x[i] * 255), 0, 255))
        rgb = np.repeat(img, 3, axis=-1) if img.shape[-1] == 1 else img
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, "JPEG", quality=_JPEG_QUALITY[s - 1])
        dec = np.asarray(Image.open(buf).convert("RGB"), np.float32) / 255.0
        flat_o[i] = dec[..., :1] if img.shape[-1] == 1 else dec
    return out


def jpeg_compression(x, severity):
    """JPEG at quality 25, 18, 15, 10, 7 (Pillow's codec through ``jax.pure_callback``; the
    input is rounded to 8 bits first, as the reference's images are)."""
    return jax.pure_callback(_jpeg_host, jax.ShapeDtypeStruct(x.shape, jnp.float32), x,
                             severity, vmap_method="broadcast_all")


_FUNCTIONS = {
    "gaussian_noise": gaussian_noise, "shot_noise": shot_noise, "impulse_noise": impulse_noise,
    "defocus_blur": defocus_blur, "motion_blur": motion_blur, "zoom_blur": zoom_blur,
    "fog": fog, "brightness": brightness, "contrast": contrast,
    "elastic_transform": elastic_transform, "pixelate": pixelate, "snow": snow,
    "glass_blur": glass_blur, "frost": frost,
}


def severity_index(severity: jax.Array) -> jax.Array:
    """A (traced) severity as an int32 index 0..5 (0 = clean)."""
    return jnp.clip(jnp.round(jnp.asarray(severity, jnp.float32)), 0, 5).astype(jnp.int32)


def corrupt_image(x: jax.Array, kind: str, severity: jax.Array, key: jax.Array) -> jax.Array:
    """One H×W×C image in [0, 1] corrupted by ``kind`` at ``severity`` (0..5, may be traced;
    0 returns ``x`` unchanged)."""
    if not available(kind):
        raise ValueError(f"corruption {kind!r} is not available "
                         f"({NOT_PORTED.get(kind, 'unknown')}); choose one of: "
                         f"{', '.join(k for k in KINDS if available(k))}")
    idx = severity_index(severity)
    if kind == "jpeg_compression":
        return jpeg_compression(x, idx)
    fn = _FUNCTIONS[kind]
    branches = [lambda x, k: x] + [functools.partial(lambda x, k, s: fn(x, s, k).astype(x.dtype),
                                                     s=s) for s in SEVERITIES]
    return jax.lax.switch(idx, branches, x, key)


def corrupt(x: jax.Array, kind: str, severity: jax.Array, key: jax.Array) -> jax.Array:
    """A NHWC batch in [0, 1] corrupted by ``kind`` at ``severity``: image i draws from
    ``split(key, N)[i]``."""
    keys = jax.random.split(key, x.shape[0])
    sev = jnp.broadcast_to(jnp.asarray(severity, jnp.float32), (x.shape[0],))  # scalar or [N]
    return jax.vmap(lambda xi, si, ki: corrupt_image(xi, kind, si, ki))(x, sev, keys)


@dataclasses.dataclass(frozen=True)
class Corruption:
    """A common corruption as a threat model: ``eps`` is the severity (0..5).

    Model-blind: the call ignores ``logits_fn``, ``params`` and ``y``, and an example counts
    as correct when the model classifies its corrupted version correctly (no AND with the
    clean prediction: a corruption is a distribution shift, not a search around x).

    Attributes:
      kind: one of :data:`KINDS` (``robustax list`` shows which are available).
      norm: always ``severity``.
    """

    numerics: ClassVar[int] = 1

    kind: str = "gaussian_noise"
    norm: str = SEVERITY_NORM

    def __post_init__(self):
        checks.check_choice("norm", self.norm, (SEVERITY_NORM,))
        checks.check_choice("kind", self.kind, [k for k in KINDS if available(k)])

    def transform(self, x: jax.Array, eps: jax.Array, key: jax.Array) -> jax.Array:
        """The corrupted batch (``base.ModelBlind``): severity ``eps``, image i from
        ``split(key, N)[i]``."""
        return jax.lax.stop_gradient(corrupt(x, self.kind, eps, key))

    @base.compiled
    def __call__(self, logits_fn, params, x, y, eps, key, target=None):
        del logits_fn, params, y, target
        return self.transform(x, eps, key)
