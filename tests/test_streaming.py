"""Streamed evaluation sets: a TFDS test split read one eval batch at a time (mock data)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attacks
from bench.sweep import data, engine

tfds = pytest.importorskip("tensorflow_datasets")


def linear(params, x):
    return x.reshape(x.shape[0], -1) @ params


def test_streamed_test_split_equals_loaded_and_is_read_per_batch(monkeypatch):
    reads = []
    real = data._read_records

    def counting(source, indices):
        reads.append(len(indices))
        return real(source, indices)

    with tfds.testing.mock_data(num_examples=24):
        full = data.load_dataset("tfds:mnist")
        monkeypatch.setattr(data, "_read_records", counting)
        monkeypatch.setattr(data, "_READ_CHUNK", 8)
        ds = data.load_dataset("tfds:mnist", stream=True)
        assert isinstance(ds.x_test, data.StreamedImages) and ds.x_test.shape == full.x_test.shape
        np.testing.assert_array_equal(ds.y_test, full.y_test)
        assert ds.fingerprint() == full.fingerprint()  # checkpoints and cell ids carry over
        assert max(reads) <= 8  # labels and fingerprint: a chunk at a time
        view = ds.x_test[3:20]
        before = ds.x_test.reads
        assert len(view) == 17 and ds.x_test.reads == before  # slicing reads nothing
        np.testing.assert_array_equal(np.asarray(view), full.x_test[3:20])
        np.testing.assert_array_equal(view[np.array([5, 0, 16])], full.x_test[[8, 3, 19]])

        params = jax.random.normal(jax.random.key(0), (784, 10)) * 0.1
        attack = attacks.FGSM()
        reads.clear()
        got, _, _ = engine.attack_correct(attack, linear, params, ds.x_test, ds.y_test, [0.0, 0.2],
                                          jax.random.key(1), batch_size=5)
        want, _, _ = engine.attack_correct(attack, linear, params, full.x_test, full.y_test,
                                           [0.0, 0.2], jax.random.key(1), batch_size=5)
    np.testing.assert_array_equal(got, want)
    assert reads and max(reads) <= 5  # never more than one eval batch in memory


def test_streamed_indexing_errors():
    recs = [{"image": np.full((2, 2, 1), i, np.uint8), "label": np.int64(i)} for i in range(6)]

    class Source(list):
        pass

    x = data.StreamedImages(Source(recs))
    assert x.shape == (6, 2, 2, 1) and x[-1][0, 0, 0] == np.float32(5 / 255)
    np.testing.assert_array_equal(x.labels(), np.arange(6))
    np.testing.assert_array_equal(np.asarray(x[::2])[:, 0, 0, 0] * 255, [0, 2, 4])
    with pytest.raises(IndexError):
        x[np.array([6])]
    assert float(jnp.max(jnp.asarray(np.asarray(x)))) == pytest.approx(5 / 255)
