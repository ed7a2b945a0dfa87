"""Batch transforms: values, per-sample keyed randomness, and their errors."""

import numpy as np
import pytest

import distdl as dl
from distdl.data import SampleKeys
from distdl.data import transforms as T


def images(n=16, c=3, h=5, w=7):
    return np.random.default_rng(0).random((n, c, h, w)).astype(np.float32)


def keys(n, seed=0, epoch=0):
    return SampleKeys(seed, epoch, np.arange(100, 100 + n))


def test_normalize_per_channel():
    x = images()
    out = T.Normalize([0.1, 0.2, 0.3], [0.5, 2.0, 4.0])(x)
    expected = (x - np.array([0.1, 0.2, 0.3])[:, None, None]) / np.array([0.5, 2.0, 4.0])[:, None, None]
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
    assert out.dtype == np.float32
    with pytest.raises(ValueError, match="2 channel statistics but the batch has 3 channels"):
        T.Normalize([0, 0], [1, 1])(x)


def test_to_float_and_channels_first():
    pixels = np.random.default_rng(1).integers(0, 256, (4, 5, 6, 3)).astype(np.uint8)
    out = T.Compose([T.ChannelsFirst(), T.ToFloat()])(pixels)
    assert out.shape == (4, 3, 5, 6) and out.flags.c_contiguous and out.dtype == np.float32
    np.testing.assert_allclose(out, pixels.transpose(0, 3, 1, 2) / 255, rtol=1e-6)
    with pytest.raises(ValueError, match="NHWC"):
        T.RandomCrop(4)(np.zeros((2, 3, 4)))


def test_random_crop_takes_a_window_of_the_padded_image():
    x = images()
    out = T.RandomCrop((5, 7), padding=2)(x, keys(len(x)))
    padded = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))
    offsets = set()
    for n in range(len(x)):
        matches = [(i, j) for i in range(5) for j in range(5) if np.array_equal(padded[n, :, i:i + 5, j:j + 7], out[n])]
        assert matches, f"sample {n} is not a crop of its padded image"
        offsets.add(matches[0])
    assert len(offsets) > 4  # the offsets really vary
    assert np.array_equal(T.RandomCrop((5, 7))(x, keys(len(x))), x)  # a crop of the whole image is the image
    with pytest.raises(ValueError, match="larger than the padded images"):
        T.RandomCrop(9)(x)


def test_random_flip_mirrors_some_samples_and_keeps_the_rest():
    x = images(400, 1, 2, 3)
    out = T.RandomHorizontalFlip(p=0.3)(x, keys(400))
    flipped = np.array([np.array_equal(o, s[..., ::-1]) for o, s in zip(out, x)])
    kept = np.array([np.array_equal(o, s) for o, s in zip(out, x)])
    assert np.all(flipped | kept)
    assert 0.2 < flipped.mean() < 0.4


def test_keys_decide_the_draws():
    x = images()
    crop = T.Compose([T.RandomCrop(3, padding=1), T.RandomHorizontalFlip()])
    assert np.array_equal(crop(x, keys(16)), crop(x, keys(16)))
    assert not np.array_equal(crop(x, keys(16)), crop(x, keys(16, epoch=1)))
    assert not np.array_equal(crop(x, keys(16)), crop(x, keys(16, seed=1)))
    dl.seed(3)
    first = crop(x)
    dl.seed(3)
    assert np.array_equal(crop(x), first)  # without keys: the engine's seeded generator


def test_sample_keys_are_uniform_and_streams_independent():
    k = SampleKeys(0, 0, np.arange(100_000))
    u, v = k.uniform(0), k.uniform(1)
    assert 0 <= u.min() and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.01 and abs(np.corrcoef(u, v)[0, 1]) < 0.01
    assert abs(np.corrcoef(u, k.fork(0).uniform(0))[0, 1]) < 0.01
    counts = np.bincount(k.integers(6), minlength=6)
    assert counts.min() > 15_000
    with pytest.raises(ValueError, match="3 sample keys for a batch of 16"):
        T.RandomHorizontalFlip()(images(), SampleKeys(0, 0, np.arange(3)))
