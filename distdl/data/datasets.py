"""Datasets that need no download: the embedded digits, and seeded synthetic problems."""

import os

import numpy as np

_DIGITS = os.path.join(os.path.dirname(__file__), "_embedded", "digits.npz")


def load_digits(flatten=False, dtype=np.float32, size=8):
    """The 8x8 handwritten digits (UCI optical digits, 1797 images, 10 classes), shipped inside distdl.

    Returns ``(images, labels)``: images scaled to [0, 1] (the raw pixels are counts
    0..16), shaped (1797, 1, 8, 8), or (1797, 64) with ``flatten=True``; int64
    labels 0..9. ``size=28`` enlarges them (nearest neighbour) to MNIST's 28x28, for
    models built for 784 inputs. Source and licence (CC BY 4.0):
    ``distdl/data/_embedded/README.md``.
    """
    with np.load(_DIGITS, allow_pickle=False) as archive:
        images, labels = archive["images"], archive["labels"]
    if size != 8:
        nearest = np.arange(size) * 8 // size
        images = images[:, nearest[:, None], nearest[None, :]]
    images = images.astype(dtype) / dtype(16)
    images = images.reshape(len(images), -1) if flatten else images[:, None]
    return images, labels.astype(np.int64)


def make_images(n_samples=1000, shape=(3, 32, 32), classes=10, noise=0.5, seed=0):
    """Images whose class is a smooth random template plus noise: a stand-in for CIFAR-10 that a CNN can learn.

    Returns (x float32 (N, C, H, W), y int64). Templates are low-frequency patterns
    placed at a random shift per image, so a model must find them, not memorise pixels.
    """
    rng = np.random.default_rng(seed)
    channels, height, width = shape
    coarse = rng.standard_normal((classes, channels, height // 4 + 2, width // 4 + 2))
    templates = np.repeat(np.repeat(coarse, 4, axis=2), 4, axis=3)  # (classes, C, H + 8, W + 8), blocky
    labels = np.arange(n_samples) % classes
    rng.shuffle(labels)
    top, left = rng.integers(0, 9, n_samples), rng.integers(0, 9, n_samples)
    rows = top[:, None] + np.arange(height)
    cols = left[:, None] + np.arange(width)
    x = templates[labels[:, None, None, None], np.arange(channels)[None, :, None, None], rows[:, None, :, None],
                  cols[:, None, None, :]]
    x = x + rng.normal(0, noise, x.shape)
    return x.astype(np.float32), labels.astype(np.int64)


def make_blobs(n_samples=1000, n_features=2, centers=3, cluster_std=1.0, seed=0):
    """Gaussian clusters around ``centers`` random centres in [-10, 10]^n_features: (x float32, y int64)."""
    rng = np.random.default_rng(seed)
    means = rng.uniform(-10, 10, (centers, n_features))
    labels = np.arange(n_samples) % centers
    rng.shuffle(labels)
    x = means[labels] + rng.normal(0, cluster_std, (n_samples, n_features))
    return x.astype(np.float32), labels.astype(np.int64)


def make_spirals(n_samples=1000, n_classes=2, noise=0.02, seed=0):
    """Interleaved spiral arms in the plane, one per class; no linear model separates them."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n_samples) % n_classes
    rng.shuffle(labels)
    t = np.sqrt(rng.uniform(0.05, 1, n_samples)) * 3 * np.pi
    angle = t + 2 * np.pi * labels / n_classes
    x = np.stack([t * np.cos(angle), t * np.sin(angle)], axis=1) / (3 * np.pi)
    x += rng.normal(0, noise, x.shape)
    return x.astype(np.float32), labels.astype(np.int64)


def make_regression(n_samples=1000, n_features=8, noise=0.1, seed=0):
    """y = x @ weight + bias + noise with known weights: returns ``(x, y, weight, bias)``.

    x is standard normal (float32), y has shape (n_samples, 1); ``weight``
    (n_features,) and ``bias`` are the truth a fitted model should recover.
    """
    rng = np.random.default_rng(seed)
    weight = rng.uniform(-2, 2, n_features)
    bias = float(rng.uniform(-1, 1))
    x = rng.standard_normal((n_samples, n_features))
    y = x @ weight + bias + rng.normal(0, noise, n_samples)
    return x.astype(np.float32), y[:, None].astype(np.float32), weight, bias


def make_sequences(n_samples=1000, seq_len=20, seed=0):
    """A recall task that needs memory: (x float32 (N, T, 2), y float32 (N, 1)), batch first.

    Feature 0 is noise in [-1, 1]; feature 1 marks one step in the first half of
    the sequence. The label is 1 when the marked step's value was positive, so a
    model must carry that value through the rest of the sequence to the end.
    """
    rng = np.random.default_rng(seed)
    x = np.zeros((n_samples, seq_len, 2), np.float32)
    x[:, :, 0] = rng.uniform(-1, 1, (n_samples, seq_len))
    marked = rng.integers(0, max(seq_len // 2, 1), n_samples)
    x[np.arange(n_samples), marked, 1] = 1
    y = (x[np.arange(n_samples), marked, 0] > 0).astype(np.float32)[:, None]
    return x, y
