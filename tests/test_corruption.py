"""Common corruptions: the JAX ports against the reference (imagecorruptions 1.1.2), their
invariants, the config, the engine's scoring, the reports and the CIFAR-10-C loader.

The reference is installed with --no-deps (requirements-compare.txt): under numpy 2 it needs
``np.float_`` and ``pkg_resources``, and it imports OpenCV and scikit-image at module level.
The ``reference`` fixture provides, for the test only, ``np.float_``, a ``pkg_resources`` with
``resource_filename``, and, where the real packages are not importable, stand-ins for the few
OpenCV and scikit-image functions the compared corruptions call (each a documented
equivalent: ``cv2.filter2D`` = correlation with BORDER_REFLECT_101 = scipy's ``mirror``;
``cv2.GaussianBlur`` = the separable ``getGaussianKernel``; ``skimage.filters.gaussian`` =
``scipy.ndimage.gaussian_filter``; ``skimage.color.rgb2hsv/hsv2rgb`` = matplotlib's). With the
real packages on the path (``pip install opencv-python-headless scikit-image``) the same
tests run against them. Random corruptions are compared by feeding the reference the very
numbers the port draws (``np.random`` replaced for the call): each port's i-th draw is
``fold_in(key, i)``, in the reference's order.

Tolerances (pixel values in [0, 1]): 2e-5 for float32 ports of float64 code; pixelate 1/255
more (Pillow rounds each of its two resampling passes to 8 bits, the port does not);
glass_blur 1/255 and snow 2/255 more: both round an intermediate to 8 bits (glass_blur
truncates its first blur, snow rounds its layer, added twice), and the test images have blurred
values within 1e-8 of an integer, which float32 and float64 may truncate differently on another
instruction set (measured here: 2.4e-7 and 1.8e-7, no such flip). JPEG: the same codec.
Images are 32×32 (the reference refuses smaller ones).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import itertools
import json
import sys
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import attacks
from attacks import base
from attacks import corruption as corr
from bench.errors import ConfigError
from bench.sweep import engine
from bench.sweep.config import parse_config

PORTED = [k for k in corr.KINDS if corr.available(k)]
ATOL = 2e-5


# ------------------------------------------------------------------ the reference


def _stand_ins() -> dict[str, types.ModuleType]:
    """Modules the reference imports, for whichever of them is not installed."""
    import scipy.ndimage as ndi

    mods: dict[str, types.ModuleType] = {}
    pr = types.ModuleType("pkg_resources")
    pr.resource_filename = lambda package, path: str(
        Path(importlib.util.find_spec(package).origin).parent / path)
    mods["pkg_resources"] = pr
    if importlib.util.find_spec("cv2") is None:
        cv2 = types.ModuleType("cv2")

        def gaussian_kernel(ksize, sigma):
            t = np.arange(ksize) - (ksize - 1) / 2
            k = np.exp(-t ** 2 / (2 * sigma ** 2))
            return k / k.sum()

        def gaussian_blur(img, ksize, sigmaX):
            out = ndi.correlate1d(np.asarray(img, np.float64), gaussian_kernel(ksize[1], sigmaX),
                                  axis=1, mode="mirror")
            out = ndi.correlate1d(out, gaussian_kernel(ksize[0], sigmaX), axis=0, mode="mirror")
            return out.astype(np.asarray(img).dtype)

        def cvt_color(img, code):  # RGB2GRAY only (snow)
            assert code == cv2.COLOR_RGB2GRAY
            img = np.asarray(img)
            return (0.299 * img[..., 0] + 0.587 * img[..., 1] + 0.114 * img[..., 2]).astype(
                img.dtype)

        def imread(filename):  # frost: the vendored photograph, already resized by 1.1
            vendored = Path(corr.__file__).parent / "data" / "frost" / f"{Path(filename).stem}.png"
            return np.asarray(Image.open(vendored))

        def resize(img, dsize, interpolation):  # frost's resize by 1.1: done by imread
            assert interpolation == cv2.INTER_CUBIC
            return img

        cv2.COLOR_RGB2GRAY, cv2.INTER_CUBIC = 7, 2
        cv2.imread, cv2.resize = imread, resize
        cv2.cvtColor = cvt_color
        cv2.GaussianBlur = gaussian_blur
        cv2.filter2D = lambda img, ddepth, kernel: ndi.correlate(
            np.asarray(img, np.float64), np.asarray(kernel, np.float64), mode="mirror")
        mods["cv2"] = cv2
    if importlib.util.find_spec("skimage") is None:
        from matplotlib import colors

        sk = types.ModuleType("skimage")
        filters, util, color = (types.ModuleType(f"skimage.{n}") for n in ("filters", "util",
                                                                            "color"))

        def gaussian(image, sigma=1, mode="nearest", cval=0, truncate=4.0, multichannel=None,
                     **_):
            image = np.asarray(image, np.float64)
            sig = np.broadcast_to(np.asarray(sigma, float), (image.ndim,)).copy()
            if multichannel and image.ndim == 3:
                sig[-1] = 0
            return ndi.gaussian_filter(image, sig, mode=mode, cval=cval, truncate=truncate)

        filters.gaussian = gaussian
        color.rgb2hsv, color.hsv2rgb = colors.rgb_to_hsv, colors.hsv_to_rgb
        sk.filters, sk.util, sk.color = filters, util, color
        mods.update({"skimage": sk, "skimage.filters": filters, "skimage.util": util,
                     "skimage.color": color})
    return mods


@pytest.fixture(scope="module")
def reference():
    """imagecorruptions.corruptions, importable under numpy 2 for this module's tests only."""
    if importlib.util.find_spec("imagecorruptions") is None:
        pytest.skip("imagecorruptions is not installed (pip install --no-deps -r "
                    "requirements-compare.txt)")
    mp = pytest.MonkeyPatch()
    mp.setattr(np, "float_", np.float64, raising=False)
    for name, mod in _stand_ins().items():
        mp.setitem(sys.modules, name, mod)
    for name in ("imagecorruptions", "imagecorruptions.corruptions"):
        mp.delitem(sys.modules, name, raising=False)
    try:
        yield importlib.import_module("imagecorruptions.corruptions")
    finally:
        for name in ("imagecorruptions", "imagecorruptions.corruptions"):
            sys.modules.pop(name, None)
        mp.undo()


@contextlib.contextmanager
def draws_of(key: jax.Array):
    """``np.random.uniform/normal/poisson`` replaced by the port's draws for ``key``: the i-th
    call returns what ``fold_in(key, i)`` gives the port."""
    count = itertools.count()
    mp = pytest.MonkeyPatch()

    def uniform(low=0.0, high=1.0, size=None):
        return np.asarray(corr._uniform(key, next(count), () if size is None else size,
                                        low, high), np.float64)

    def normal(loc=0.0, scale=1.0, size=None):
        return np.asarray(corr._normal(key, next(count), size, loc, scale), np.float64)

    def poisson(lam):
        lam32 = np.asarray(lam, np.float32)
        return np.asarray(jax.random.poisson(jax.random.fold_in(key, next(count)), lam32))

    def randint(low, high=None, size=None):
        low, high = (0, low) if high is None else (low, high)
        return np.asarray(jax.random.randint(jax.random.fold_in(key, next(count)),
                                             () if size is None else size, low, high))

    for name, fn in (("uniform", uniform), ("normal", normal), ("poisson", poisson),
                     ("randint", randint)):
        mp.setattr(np.random, name, fn)
    try:
        yield
    finally:
        mp.undo()


def _test_images() -> list[np.ndarray]:
    """uint8 32×32 images: two smooth RGB images with edges, and a digit scaled 4× (stacked
    to RGB, as the reference does with grayscale)."""
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(0)
    out = []
    for _ in range(2):
        coarse = rng.uniform(0, 255, (8, 8, 3))
        img = np.kron(coarse, np.ones((4, 4, 1))) + rng.normal(0, 12, (32, 32, 3))
        out.append(np.uint8(np.clip(img, 0, 255)))
    digit = load_digits().images[7] / 16 * 255
    out.append(np.repeat(np.uint8(np.kron(digit, np.ones((4, 4))))[..., None], 3, axis=-1))
    return out


IMAGES = _test_images()
DETERMINISTIC = ["defocus_blur", "zoom_blur", "brightness", "contrast", "pixelate",
                 "jpeg_compression"]
RANDOM = ["gaussian_noise", "shot_noise", "motion_blur", "fog", "elastic_transform", "snow",
          "glass_blur", "frost"]


def _reference_output(reference, kind, img, s) -> np.ndarray:
    out = getattr(reference, kind)(Image.fromarray(img), s)
    return np.asarray(out, np.float64) / 255.0


@pytest.mark.parametrize("kind", DETERMINISTIC + RANDOM)
def test_port_agrees_with_the_reference(reference, kind):
    """Every compared corruption, severities 1–5, three images: the port on x = img / 255
    equals the reference's float output / 255 (its draws fed to the reference); the digit is
    also corrupted as one grayscale channel and must equal the reference's first channel
    (deterministic corruptions: the reference's channels are equal)."""
    tol = {"pixelate": 1 / 255, "glass_blur": 1 / 255, "snow": 2 / 255}.get(kind, 0) + ATOL
    run = jax.jit(lambda x, s, k: corr.corrupt_image(x, kind, s, k))  # one compile per shape
    for i, img in enumerate(IMAGES):
        for s in corr.SEVERITIES:
            key = jax.random.fold_in(jax.random.key(11), 10 * i + s)
            x = jnp.asarray(img, jnp.float32) / 255.0
            ours = np.asarray(run(x, jnp.float32(s), key))
            with draws_of(key):
                try:
                    ref = _reference_output(reference, kind, img, s)
                except TypeError as e:
                    if "multichannel" not in str(e):
                        raise
                    pytest.skip(f"the installed scikit-image no longer takes the reference's "
                                f"gaussian(multichannel=True) ({kind})")
            err = np.abs(ours - ref).max()
            assert err <= tol, (kind, i, s, err)
            if i == 2 and kind in DETERMINISTIC:
                gray = np.asarray(run(x[..., :1], jnp.float32(s), key))
                assert np.abs(gray[..., 0] - ref[..., 0]).max() <= tol, (kind, s)
            if i == 2 and kind == "frost":  # a one-channel image: the reference's rgb2gray
                gray = np.asarray(run(x[..., :1], jnp.float32(s), key))  # branch (mode L)
                with draws_of(key):
                    ref = _reference_output(reference, kind, img[..., 0], s)
                assert np.abs(gray[..., 0] - ref).max() <= tol, (kind, s)


def test_impulse_noise_flips_the_reference_share():
    """skimage's s&p noise (not comparable draw by draw: it keeps its own generator): each
    value is replaced with probability c (0.03 … 0.27), by 0 or 1 with even odds."""
    x = jnp.full((64, 64, 1), 0.5, jnp.float32)
    for s, c in zip(corr.SEVERITIES, [.03, .06, .09, 0.17, 0.27]):
        out = np.asarray(corr.corrupt_image(x, "impulse_noise", jnp.float32(s), jax.random.key(s)))
        flipped = out != 0.5
        n = flipped.size
        assert abs(flipped.mean() - c) < 4 * np.sqrt(c * (1 - c) / n), (s, flipped.mean())
        assert set(np.unique(out[flipped])) <= {0.0, 1.0}
        assert abs((out[flipped] == 1).mean() - 0.5) < 4 * np.sqrt(0.25 / flipped.sum())


def test_shot_noise_mean_and_variance():
    """Poisson(x·c)/c: mean x, variance x/c (hand formula), far from the box's edges."""
    x = jnp.full((128, 128, 1), 0.4, jnp.float32)
    for s, c in zip(corr.SEVERITIES, [60, 25, 12, 5, 3]):
        out = np.asarray(corr.corrupt_image(x, "shot_noise", jnp.float32(s), jax.random.key(s)))
        if c >= 12:  # clipping at 1 is negligible here
            assert abs(out.mean() - 0.4) < 0.01 and abs(out.var() - 0.4 / c) < 0.1 * 0.4 / c


# ------------------------------------------------------------------ invariants


@pytest.fixture(scope="module")
def batch():
    from bench.sweep.data import load_dataset

    d = load_dataset("digits")
    return jnp.asarray(d.x_test[:24])


@pytest.mark.parametrize("kind", PORTED)
def test_severity_zero_is_clean_and_outputs_stay_in_the_box(kind, batch):
    """Severity 0 returns x bit for bit; every severity stays in [0, 1] with x's shape; the
    severity may be traced and per example (one compiled program)."""
    run = jax.jit(lambda x, s, k: corr.corrupt(x, kind, s, k))
    key = jax.random.key(0)
    np.testing.assert_array_equal(np.asarray(run(batch, jnp.float32(0), key)), np.asarray(batch))
    per = jnp.asarray(np.arange(24) % 6, jnp.float32)
    mixed = np.asarray(run(batch, per, key))
    for s in corr.SEVERITIES:
        out = np.asarray(run(batch, jnp.float32(s), key))
        assert out.shape == batch.shape and out.min() >= 0 and out.max() <= 1
        np.testing.assert_allclose(mixed[per == s], out[per == s], atol=1e-6)
    np.testing.assert_array_equal(mixed[per == 0], np.asarray(batch)[per == 0])


@pytest.mark.parametrize("kind", PORTED)
def test_corruption_grows_with_severity(kind, batch):
    """On the digits resized to 32×32 (on 8×8 the defocus disks of radius 6–10 cover the
    whole image and its mirrored borders, and their distance to the image falls again),
    the mean distance to the clean images grows with the severity (not for glass_blur and
    snow) and severity 5 moves them more than severity 1."""
    key = jax.random.key(3)
    big = jax.image.resize(batch[:12], (12, 32, 32, 1), "bilinear")  # not blocky: pixelate
    big = jnp.clip(big, 0, 1)  # to 16×16 or 8×8 would give back 4×-repeated pixels exactly
    run = jax.jit(lambda x, s: corr.corrupt(x, kind, s, key))
    d = [float(jnp.abs(run(big, jnp.float32(s)) - big).mean()) for s in corr.SEVERITIES]
    if kind not in ("glass_blur", "snow", "frost"):  # their tables are not monotone:
        # glass_blur's severity 2 runs 1 sweep of swaps to severity 1's 2; snow's severity 3
        # zooms its layer 4× against severity 2's 2× (the distances: 0.066, 0.062, … and
        # 0.24, 0.24, …); frost's severity 4 keeps less of the image (0.65·x) than 3 (0.7·x)
        # under the same frost weight 0.7, which can bring x + 0.7·frost, clipped at 1,
        # nearer to x (0.255, 0.336, 0.376, 0.368, 0.389)
        assert all(b >= a - 1e-4 for a, b in zip(d, d[1:])), (kind, d)
    assert d[-1] > d[0], (kind, d)


@pytest.mark.parametrize("kind", ["gaussian_noise", "shot_noise", "impulse_noise",
                                  "motion_blur", "fog", "elastic_transform", "frost"])
def test_random_corruptions_are_functions_of_their_key(kind, batch):
    run = jax.jit(lambda key: corr.corrupt(batch, kind, jnp.float32(3), key))  # compiled once
    a, b, c = run(jax.random.key(1)), run(jax.random.key(1)), run(jax.random.key(2))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_contrast_and_brightness_by_hand():
    """Contrast at severity 3 (c = 0.2) and brightness at 1 (+0.1), on a 2×2 image."""
    x = jnp.asarray([[0.0, 0.2], [0.6, 1.0]], jnp.float32)[..., None]
    out = corr.corrupt_image(x, "contrast", jnp.float32(3), jax.random.key(0))
    np.testing.assert_allclose(np.asarray(out)[..., 0], [[0.36, 0.40], [0.48, 0.56]], atol=1e-6)
    out = corr.corrupt_image(x, "brightness", jnp.float32(1), jax.random.key(0))
    np.testing.assert_allclose(np.asarray(out)[..., 0], [[0.1, 0.3], [0.7, 1.0]], atol=1e-6)
    rgb = jnp.asarray([[[0.5, 0.25, 0.0]]], jnp.float32)  # V = 0.5 → 0.6: channels × 1.2
    out = corr.corrupt_image(rgb, "brightness", jnp.float32(1), jax.random.key(0))
    np.testing.assert_allclose(np.asarray(out), [[[0.6, 0.3, 0.0]]], atol=1e-6)


REASON = "not ported: a test's stand-in reason"


@pytest.fixture
def fog_not_ported(monkeypatch):
    """``NOT_PORTED`` (empty since frost was ported) naming fog, to test the mechanism."""
    monkeypatch.setattr(corr, "NOT_PORTED", {"fog": REASON})


def test_all_fifteen_are_ported():
    assert corr.NOT_PORTED == {} and PORTED == list(corr.KINDS) and len(PORTED) == 15


def test_unported_kinds_say_why(fog_not_ported):
    with pytest.raises(ValueError, match="'fog' is not available .not ported: a test's"):
        corr.corrupt_image(jnp.zeros((8, 8, 1)), "fog", 1, jax.random.key(0))
    with pytest.raises(ValueError, match="kind"):
        attacks.Corruption(kind="fog")


def test_frost_by_hand():
    """Draw 0 picks the photograph, draws 1 and 2 the crop's corner (as the reference's
    three ``randint``); severity 2 is 0.8·x + 0.6·crop, the crop's BGR turned to RGB, or for
    one channel 0.2989·B + 0.5870·G + 0.1140·R (the reference's quirk)."""
    x = jnp.asarray(np.random.default_rng(1).uniform(0, 1, (20, 12, 3)), jnp.float32)
    key = jax.random.key(4)
    draw = [int(jax.random.randint(jax.random.fold_in(key, 0), (), 0, 5))]
    photo = corr._frost_photos()[draw[0]]
    draw += [int(jax.random.randint(jax.random.fold_in(key, 1), (), 0, photo.shape[0] - 20)),
             int(jax.random.randint(jax.random.fold_in(key, 2), (), 0, photo.shape[1] - 12))]
    crop = photo[draw[1]:draw[1] + 20, draw[2]:draw[2] + 12].astype(np.float64) / 255
    out = corr.corrupt_image(x, "frost", jnp.float32(2), key)
    want = np.clip(0.8 * np.asarray(x, np.float64) + 0.6 * crop[..., ::-1], 0, 1)
    np.testing.assert_allclose(np.asarray(out), want, atol=1e-6)
    out = corr.corrupt_image(x[..., :1], "frost", jnp.float32(2), key)
    gray = crop @ np.array([0.2989, 0.5870, 0.1140])
    want = np.clip(0.8 * np.asarray(x[..., 0], np.float64) + 0.6 * gray, 0, 1)
    np.testing.assert_allclose(np.asarray(out)[..., 0], want, atol=1e-6)


def test_frost_refuses_images_larger_than_its_photographs():
    assert corr.FROST_MAX_SIZE == (315, 527)
    corr.corrupt_image(jnp.zeros((315, 527, 1)), "frost", 1, jax.random.key(0))
    for shape in ((316, 8, 3), (8, 528, 3), (8, 8, 4)):
        with pytest.raises(ValueError, match="frost takes images of at most 315×527 px") as e:
            corr.corrupt_image(jnp.zeros(shape), "frost", 1, jax.random.key(0))
        assert "\n" not in str(e.value)


def test_vendored_frost_equals_opencv():
    """``attacks/data/frost`` holds exactly what the reference's ``cv2.imread`` + 1.1×
    ``cv2.resize(INTER_CUBIC)`` give (run where OpenCV and imagecorruptions are installed)."""
    cv2 = pytest.importorskip("cv2")
    if getattr(cv2, "__file__", None) is None or importlib.util.find_spec(
            "imagecorruptions") is None:  # no file: the reference fixture's stand-in
        pytest.skip("needs the real OpenCV and imagecorruptions")
    src = Path(importlib.util.find_spec("imagecorruptions").origin).parent / "frost"
    for i, name in enumerate(["frost1.png", "frost2.png", "frost3.png", "frost4.jpg",
                              "frost5.jpg"]):
        f = cv2.imread(str(src / name))
        assert f.shape[:2] == corr._FROST_SOURCE_SHAPES[i]
        want = cv2.resize(f, (int(np.ceil(f.shape[1] * 1.1)), int(np.ceil(f.shape[0] * 1.1))),
                          interpolation=cv2.INTER_CUBIC)
        np.testing.assert_array_equal(corr._frost_photos()[i], want)


# ------------------------------------------------------------------ config


def _raw(attack: dict, **top) -> dict:
    return {"name": "c", "data": {"name": "digits", "eval_examples": 24},
            "models": [{"name": "mlp", "width": 16}],
            "defenses": [{"name": "standard", "epochs": 1}], "attacks": [attack], **top}


def test_config_expands_one_attack_per_kind_and_names_the_skipped(monkeypatch):
    cfg = parse_config(_raw({"name": "corruption", "norm": "severity", "eps": [0, 1, 5]}))
    labels = [a.label for a in cfg.attacks]
    assert labels == [f"corruption-{k}" for k in corr.KINDS] and "corruption-frost" in labels
    assert all(a.norm == "severity" and a.eps == (0.0, 1.0, 5.0) for a in cfg.attacks)
    assert all(a.skipped == () for a in cfg.attacks)
    monkeypatch.setattr(corr, "NOT_PORTED", {"frost": REASON})
    cfg = parse_config(_raw({"name": "corruption", "label": "c", "kinds": ["fog", "frost"],
                             "eps": [3]}))
    assert [a.label for a in cfg.attacks] == ["c-fog"] and cfg.attacks[0].attack.kind == "fog"
    assert dict(cfg.attacks[0].skipped) == {"frost": REASON}
    with pytest.raises(ConfigError, match="none of kinds") as e:
        parse_config(_raw({"name": "corruption", "kinds": ["frost"], "eps": [1]}))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("attack, match", [
    ({"name": "corruption", "kinds": ["fgo"], "eps": [1]}, "'fgo', not a standard corruption; "
                                                            "choose from: gaussian_noise"),
    ({"name": "corruption", "eps": [2.5]}, "eps = 2.5 is not a severity; severities are the "
                                           "integers 0"),
    ({"name": "corruption", "eps": [6]}, "eps = 6.0 is not a severity"),
    ({"name": "corruption", "norm": "linf", "eps": [1]}, "norm = 'linf' is not allowed; choose "
                                                         "one of: severity"),
    ({"name": "pgd", "norm": "severity", "eps": [1]}, "norm = 'severity' is not allowed"),
    ({"name": "corruption", "kind": "fog", "eps": [1]}, "write kinds = \\[\"fog\"\\]"),
    ({"name": "corruption", "kinds": [], "eps": [1]}, "kinds = \\[\\] names no corruption"),
    ({"name": "corruption", "kinds": ["fog", "fog"], "eps": [1]}, "repeats"),
])
def test_config_errors_are_one_line(attack, match):
    with pytest.raises(ConfigError, match=match) as e:
        parse_config(_raw(attack))
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------ engine


def test_corrupted_accuracy_is_not_anded_with_clean():
    """A model that reads the mean brightness (class 1 iff mean > 0.5): an image of mean 0.45
    labelled 1 is wrong clean and right after brightness +0.1 (severity 1). A corruption
    scores it correct; an adversarial attack's mask would be ANDed with the wrong clean
    prediction. Severity 0 equals clean per example."""
    def logits_fn(params, x):
        m = x.mean(axis=(1, 2, 3))
        return jnp.stack([0.5 - m, m - 0.5], -1) * params

    x = np.stack([np.full((4, 4, 1), v, np.float32) for v in (0.45, 0.7, 0.2)])
    y = np.array([1, 1, 0], np.int32)
    clean = engine.clean_correct(logits_fn, 1.0, x, y)
    np.testing.assert_array_equal(clean, [False, True, True])
    attack = attacks.Corruption(kind="brightness")
    assert isinstance(attack, base.ModelBlind)
    masks, _, _ = engine.attack_correct(attack, logits_fn, 1.0, x, y, [0.0, 1.0, 5.0],
                                        jax.random.key(0))
    np.testing.assert_array_equal(masks[0], clean)
    np.testing.assert_array_equal(masks[1], [True, True, True])  # 0.3 is still class 0
    np.testing.assert_array_equal(masks[2], [True, True, False])  # 0.2 + 0.5 is class 1


# ------------------------------------------------------------------ sweep and reports


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    import pandas as pd

    from bench.reports.report import write_report
    from bench.sweep.runner import run_sweep

    out = tmp_path_factory.mktemp("corruptions")
    raw = _raw({"name": "corruption", "kinds": ["contrast", "gaussian_noise", "frost"],
                "eps": [0, 1, 3]})
    raw["attacks"].append({"name": "pgd", "steps": 2, "eps": [0.0, 0.1]})
    with pytest.MonkeyPatch.context() as mp:  # the skip mechanism, as if frost were unported
        mp.setattr(corr, "NOT_PORTED", {"frost": REASON})
        run_sweep(parse_config(raw), out, progress=False)
    write_report(out)
    return out, pd.read_csv(out / "records.csv")


def test_sweep_records_skips_and_reports(swept):
    """A tiny sweep (MLP, two corruptions and an unported one, PGD beside them): records per
    corruption and severity with the skipped one named; corruptions.md, the CSV (its means
    equal the records' by hand), the severity plot, a report.md section and a summary block;
    the PGD tables, worst case and checklist do not see the corruption cells."""
    out, rec = swept
    c = rec[rec["norm"] == "severity"]
    assert sorted(c["attack"].unique()) == ["corruption-contrast", "corruption-gaussian_noise"]
    assert sorted(c["eps"].unique()) == [0.0, 1.0, 3.0]
    for d in c["details"]:
        assert json.loads(d)["skipped"] == {"frost": REASON}
    clean = rec[rec["attack"] == "clean"]["robust_acc"].iloc[0]
    assert np.allclose(c[c["eps"] == 0]["robust_acc"], clean)

    import pandas as pd

    csv = pd.read_csv(out / "tables" / "robust_accuracy_corruptions.csv")
    assert list(csv.columns) == ["model", "defense", "corruption", "severity", "accuracy",
                                 "ci_low", "ci_high", "examples"]
    overall = csv[(csv["corruption"] == "mean") & (csv["severity"] == "mean")]["accuracy"]
    by_hand = 100 * c[c["eps"] > 0]["robust_acc"].mean()
    assert abs(overall.iloc[0] - by_hand) < 1e-3
    fog = csv[(csv["corruption"] == "contrast") & (csv["severity"] == "mean")]["accuracy"]
    assert abs(fog.iloc[0] - 100 * c[(c["attack"] == "corruption-contrast")
                                     & (c["eps"] > 0)]["robust_acc"].mean()) < 1e-3

    md = (out / "tables" / "corruptions.md").read_text()
    assert f"{by_hand:.1f}" in md and "Skipped: `frost`" in md
    assert (out / "plots" / "accuracy_vs_severity.png").stat().st_size > 10_000
    report = (out / "report.md").read_text()
    assert "## Common corruptions" in report and "### L∞" in report
    assert "### severity" not in report  # no norm section of its own
    summary = (out / "tables" / "summary.txt").read_text()
    assert "Corruptions: accuracy averaged over 2 corruptions" in summary
    tables = {p.name for p in (out / "tables").iterdir()}
    assert not any("severity" in t for t in tables), tables
    assert {p.name for p in (out / "plots").iterdir() if "severity" in p.name} == {
        "accuracy_vs_severity.png", "accuracy_vs_severity.pdf"}
    checklist = json.loads((out / "checklist.json").read_text())
    assert "corruption" not in json.dumps(checklist)
    from bench.reports.report import report_records
    from bench.store.records import RunDir

    rows = report_records(RunDir(out))
    worst = rows[rows["attack"] == "worst-case"]
    assert (worst["norm"] != "severity").all()  # corruptions are averaged, never worst-cased


def test_tfds_cifar10_c_loads_under_mock():
    tfds = pytest.importorskip("tensorflow_datasets")
    from bench.sweep.data import load_dataset

    with tfds.testing.mock_data(num_examples=5):
        ds = load_dataset("tfds:cifar10_corrupted/frosted_glass_blur_3")
    assert ds.x_test.shape == (5, 32, 32, 3) and ds.x_train.shape == (0, 32, 32, 3)
    assert ds.num_classes == 10 and ds.x_test.dtype == np.float32
    assert 0 <= ds.x_test.min() and ds.x_test.max() <= 1 and len(ds.mean) == 3
    for bad in ("tfds:cifar10_corrupted/fog_6", "tfds:cifar10_corrupted/fgo_1"):
        with pytest.raises(ConfigError, match="not a CIFAR-10-C config"):
            parse_config({**_raw({"name": "pgd", "eps": [0.1]}), "data": {"name": bad}})


def test_a_skipped_kind_with_records_is_not_reported_skipped():
    """Cells computed while frost was unported keep ``details.skipped`` (their ids and masks
    do not change); once frost cells exist beside them the report does not call it skipped."""
    from bench.reports import corruptions as rc

    def row(kind, details):
        return {"norm": "severity", "attack": f"corruption-{kind}",
                "attack_options": json.dumps({"kind": kind, "norm": "severity"}),
                "details": json.dumps(details)}

    old = row("fog", {"skipped": {"frost": REASON, "snow": REASON}})
    import pandas as pd

    assert rc.skipped(pd.DataFrame([old])) == {"frost": REASON, "snow": REASON}
    assert rc.skipped(pd.DataFrame([old, row("frost", {})])) == {"snow": REASON}


def test_python_api_takes_corruptions_as_a_sweep_does(monkeypatch):
    """``bench.evaluate``: a corruption dict expands per kind with the skipped one named; an
    instance is labelled by its kind; a severity that is not an integer is refused."""
    import bench
    from bench.sweep.data import load_dataset

    d = load_dataset("digits")
    x, y = d.x_test[:16], d.y_test[:16]
    w = jax.random.normal(jax.random.key(0), (64, 10))

    def f(w, x):
        return x.reshape(len(x), -1) @ w

    monkeypatch.setattr(corr, "NOT_PORTED", {"frost": REASON})
    r = bench.evaluate(f, w, (x, y), [{"name": "corruption", "kinds": ["fog", "frost"],
                                       "eps": [0, 2]}])
    c = r[r["norm"] == "severity"]
    assert list(c["attack"]) == ["corruption-fog"] * 2
    assert all(json.loads(v)["skipped"] == {"frost": REASON} for v in c["details"])
    assert c["robust_acc"].iloc[0] == r[r["attack"] == "clean"]["robust_acc"].iloc[0]
    r = bench.evaluate(f, w, (x, y), [attacks.Corruption(kind="contrast")], eps=[1])
    assert list(r["attack"]) == ["clean", "corruption-contrast"]
    with pytest.raises(ConfigError, match="eps = 0.5 is not a severity"):
        bench.evaluate(f, w, (x, y), [attacks.Corruption(kind="contrast")], eps=[0.5])
