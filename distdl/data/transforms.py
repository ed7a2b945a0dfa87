"""Transforms of whole batches (N, C, H, W), vectorised: one array operation per batch, not per image.

A transform is called as ``transform(batch, keys)``. ``keys`` (SampleKeys) carry
each sample's (seed, epoch, index), and random transforms derive their choices
from them, so a sample's crop and flip do not depend on the batch it landed in
or on the number of workers. Called without keys (``transform(batch)``), a random
transform draws a key from distdl's seeded generator (``dl.seed``).
"""

import numbers

import numpy as np

from distdl import backend
from distdl.backend import xp_of
from distdl.data.keyed_random import SampleKeys


def _keys_for(batch, keys):
    if keys is not None:
        if len(keys) != len(batch):
            raise ValueError(f"{len(keys)} sample keys for a batch of {len(batch)}")
        return keys
    seed = int(backend.random((), np.float64) * 2 ** 53)
    return SampleKeys(seed, 0, np.arange(len(batch)))


def _on(xp, array):
    return array if xp is np else xp.asarray(array)


def _check_images(batch, name):
    if batch.ndim != 4:
        raise ValueError(f"{name} takes a batch of images (N, C, H, W), got shape {batch.shape}; "
                         "convert NHWC arrays with to_channels_first")


class Compose:
    """Apply transforms in order; each random one gets its own independent keys."""

    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, batch, keys=None):
        keys = _keys_for(batch, keys)
        for position, transform in enumerate(self.transforms):
            batch = transform(batch, keys.fork(position))
        return batch

    def __repr__(self):
        return "Compose(" + ", ".join(repr(t) for t in self.transforms) + ")"


class ToFloat:
    """Integer pixels to floats: ``batch * scale`` as ``dtype`` (uint8 0..255 to [0, 1] by default)."""

    def __init__(self, scale=1 / 255, dtype=np.float32):
        self.scale, self.dtype = scale, np.dtype(dtype)

    def __call__(self, batch, keys=None):
        return batch.astype(self.dtype) * self.dtype.type(self.scale)

    def __repr__(self):
        return f"ToFloat(scale={self.scale:g}, dtype={self.dtype})"


class Normalize:
    """(batch - mean) / std per channel (axis 1); integer batches become float32 first."""

    def __init__(self, mean, std, axis=1):
        self.mean, self.std, self.axis = np.asarray(mean, np.float64), np.asarray(std, np.float64), axis
        if np.any(self.std <= 0):
            raise ValueError(f"Normalize: std must be positive, got {std}")

    def __call__(self, batch, keys=None):
        xp = xp_of(batch)
        if batch.dtype.kind not in "f":
            batch = batch.astype(np.float32)
        shape = [1] * batch.ndim
        if self.mean.size > 1 or self.std.size > 1:
            channels = max(self.mean.size, self.std.size)
            if batch.shape[self.axis] != channels:
                raise ValueError(f"Normalize has {channels} channel statistics but the batch has "
                                 f"{batch.shape[self.axis]} channels on axis {self.axis} (shape {batch.shape})")
            shape[self.axis] = channels
        mean = _on(xp, self.mean.astype(batch.dtype).reshape(shape))
        inv_std = _on(xp, (1 / self.std).astype(batch.dtype).reshape(shape))
        out = batch - mean
        out *= inv_std
        return out

    def __repr__(self):
        return f"Normalize(mean={self.mean.tolist()}, std={self.std.tolist()})"


def to_channels_first(batch):
    """NHWC (as Keras and most image files give them) to NCHW, contiguous."""
    if batch.ndim != 4:
        raise ValueError(f"to_channels_first takes a batch (N, H, W, C), got shape {batch.shape}")
    return xp_of(batch).ascontiguousarray(batch.transpose(0, 3, 1, 2))


class ChannelsFirst:
    """The transform form of ``to_channels_first``."""

    def __call__(self, batch, keys=None):
        return to_channels_first(batch)

    def __repr__(self):
        return "ChannelsFirst()"


class RandomCrop:
    """A random ``size`` crop of each image, after padding its border by ``padding`` with ``fill``."""

    def __init__(self, size, padding=0, fill=0):
        self.size = (size, size) if isinstance(size, numbers.Integral) else tuple(size)
        self.padding, self.fill = int(padding), fill

    def __call__(self, batch, keys=None):
        _check_images(batch, "RandomCrop")
        keys = _keys_for(batch, keys)
        xp = xp_of(batch)
        p, (h, w) = self.padding, self.size
        if p:  # zeros plus one copy: several times faster than xp.pad
            padded = xp.full(batch.shape[:2] + (batch.shape[2] + 2 * p, batch.shape[3] + 2 * p), self.fill, batch.dtype)
            padded[:, :, p:-p, p:-p] = batch
            batch = padded
        height, width = batch.shape[2:]
        if h > height or w > width:
            raise ValueError(f"RandomCrop of {h}x{w} is larger than the padded images ({height}x{width})")
        top = _on(xp, keys.integers(height - h + 1, stream=0))
        left = _on(xp, keys.integers(width - w + 1, stream=1))
        windows = xp.lib.stride_tricks.sliding_window_view(batch, (h, w), axis=(2, 3))  # (N, C, top, left, h, w)
        return windows[xp.arange(len(batch)), :, top, left]  # one strided copy per sample

    def __repr__(self):
        return f"RandomCrop(size={self.size}, padding={self.padding})"


class RandomHorizontalFlip:
    """Mirror each image left to right with probability ``p``."""

    def __init__(self, p=0.5):
        self.p = p

    def __call__(self, batch, keys=None):
        keys = _keys_for(batch, keys)
        xp = xp_of(batch)
        # the flipped samples' indices, made on the host: a mask on the device would be read back to index with
        flip = _on(xp, np.flatnonzero(keys.uniform() < self.p))
        out = batch.copy()
        out[flip] = batch[flip, ..., ::-1]
        return out

    def __repr__(self):
        return f"RandomHorizontalFlip(p={self.p})"
