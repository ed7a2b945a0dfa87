"""The engine's counter-based RNG: SplitMix64's published stream, sound statistics, a state that resumes exactly."""

import threading

import numpy as np
import pytest

import distdl as dl
from distdl import backend, nn, rng
from distdl import functional as F

MASK = (1 << 64) - 1


class SplitMix64:
    """The reference generator, written from Vigna's splitmix64.c on Python ints, one output at a time."""

    def __init__(self, seed):
        self.x = seed & MASK

    def next(self):
        self.x = (self.x + 0x9E3779B97F4A7C15) & MASK
        z = self.x
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)


def reference(seed, count):
    generator = SplitMix64(seed)
    return [generator.next() for _ in range(count)]


def test_the_published_splitmix64_outputs():
    assert [int(v) for v in rng.Generator(1234567).bits(3)] == [0x599ED017FB08FC85, 0x2C73F08458540FA5,
                                                                0x883EBCE5A3F27C77]


@pytest.mark.parametrize("seed", [0, 1, 2 ** 63 + 5, MASK, -1])
def test_draws_continue_the_reference_stream_across_calls(seed):
    generator = rng.Generator(seed)
    drawn = [int(v) for v in np.concatenate([generator.bits(5), generator.bits(0), generator.bits(300)])]
    assert drawn == reference(seed, 305)
    assert generator.state() == {"generator": "splitmix64", "seed": seed & MASK, "counter": 305}


def test_words_uniforms_and_the_dropout_mask_are_the_reference_bits_read_as_documented():
    outputs = reference(7, 64)
    words = [half for z in outputs for half in (z & 0xFFFFFFFF, z >> 32)]  # low half first
    assert rng.Generator(7).words(127).tolist() == words[:127]
    np.testing.assert_array_equal(rng.Generator(7).uniform((8, 8), np.float64), np.reshape(
        [(z >> 11) * 2.0 ** -53 for z in outputs], (8, 8)))
    uniform32 = rng.Generator(7).uniform((127,), np.float32)
    assert uniform32.dtype == np.float32
    np.testing.assert_array_equal(uniform32, [(w >> 8) * 2.0 ** -24 for w in words[:127]])
    at = float(uniform32[5])  # p on a drawn value keeps it; the next double above does not
    for p in [0.0, 0.1, 0.3, 0.5, 1 / 3, 0.9, 1 - 2.0 ** -24, 1 - 2.0 ** -26, at, np.nextafter(at, 1.0)]:
        keep = rng.Generator(7).keep((127,), p)
        np.testing.assert_array_equal(keep, uniform32.astype(np.float64) >= p, err_msg=f"p={p}")


def test_uniform_and_normal_moments():
    n = 1_000_000
    for dtype in (np.float32, np.float64):
        u = rng.Generator(11).uniform((n,), dtype).astype(np.float64)
        assert 0 <= u.min() and u.max() < 1
        assert abs(u.mean() - 0.5) < 5 * (1 / 12 / n) ** 0.5  # five standard errors
        assert abs(u.var() - 1 / 12) < 5 * (1 / 180 / n) ** 0.5
    z = rng.Generator(12).normal((n + 1,), np.float64)  # odd: the last pair's second value is dropped
    assert z.shape == (n + 1,) and np.isfinite(z).all()
    assert abs(z.mean()) < 5 / n ** 0.5
    assert abs(z.var() - 1) < 5 * (2 / n) ** 0.5
    assert abs((z ** 3).mean()) < 5 * (15 / n) ** 0.5
    assert abs((z ** 4).mean() - 3) < 5 * (96 / n) ** 0.5
    scaled = rng.Generator(12).normal((50, 2), np.float32, scale=0.5)
    assert scaled.dtype == np.float32 and abs(scaled.std() - 0.5) < 0.15
    assert abs(rng.Generator(13).keep((n,), 0.2).mean() - 0.8) < 5 * (0.16 / n) ** 0.5
    with pytest.raises(ValueError, match="uniform draws float32 or float64, not float16"):
        rng.Generator(0).uniform((2,), np.float16)


def test_threads_drawing_at_once_share_the_stream_without_overlap():
    generator = rng.Generator(5)
    drawn = []

    def draw():
        for _ in range(200):
            drawn.extend(int(v) for v in generator.bits(10))

    threads = [threading.Thread(target=draw) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(drawn) == sorted(reference(5, 8000))


def test_a_state_round_trips_and_a_wrong_one_is_named():
    dl.seed(3)
    state = backend.rng_state()
    a = backend.normal((4,), np.float64), backend.random((3,), np.float32)
    backend.set_rng_state(state)
    np.testing.assert_array_equal(backend.normal((4,), np.float64), a[0])
    np.testing.assert_array_equal(backend.random((3,), np.float32), a[1])
    for bad, reason in [({"seed": 1}, "is {'generator', 'seed', 'counter'}"),
                        (dict(state, generator="PCG64"), "of generator 'PCG64'; distdl's is 'splitmix64'"),
                        (dict(state, counter=-1), "counter must be a whole number in \\[0, 2\\*\\*64\\), got -1"),
                        (dict(state, seed=2 ** 64), "seed must be a whole number"),
                        (dict(state, seed=True), "seed must be a whole number")]:
        with pytest.raises(ValueError, match=reason):
            backend.set_rng_state(bad)


def test_dropout_masks_are_the_seeded_streams_keep_mask():
    dl.seed(21)
    x = dl.tensor(np.ones((6, 7), np.float32))
    out = F.dropout(x, 0.25)
    np.testing.assert_array_equal(out.numpy(), rng.Generator(21).keep((6, 7), 0.25) * np.float32(1 / 0.75))
    assert out.dtype == np.float32
    assert backend.rng_state()["counter"] == 21  # 42 words: 21 outputs


def test_dropout_masks_after_a_restored_checkpoint_equal_the_uninterrupted_runs(tmp_path):
    layer = nn.Dropout(0.5)
    x = dl.tensor(np.ones((16, 32), np.float32))
    dl.seed(4)
    layer(x)
    dl.save_checkpoint(tmp_path / "c.npz", step=1)
    uninterrupted = [layer(x).numpy() for _ in range(3)]
    dl.seed(99)
    layer(x)
    dl.load_checkpoint(tmp_path / "c.npz")
    resumed = [layer(x).numpy() for _ in range(3)]
    for a, b in zip(uninterrupted, resumed):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(uninterrupted[0], uninterrupted[1])
