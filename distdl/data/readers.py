"""Readers for the standard dataset files, from a local directory; nothing is downloaded.

- MNIST and Fashion-MNIST: IDX files (http://yann.lecun.com/exdb/mnist/), plain or gzipped.
- CIFAR-10: the binary version's batches (https://www.cs.toronto.edu/~kriz/cifar.html),
  records of one label byte and 3072 pixel bytes (3 x 32 x 32, channels first).
"""

import gzip
import os

import numpy as np

# IDX type codes and the big-endian dtypes they stand for.
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CIFAR10_FILES = {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]}
CIFAR10_RECORD = 1 + 3 * 32 * 32


class DatasetFileError(ValueError):
    """A dataset file that exists but is not what its name promises."""


def _read_bytes(path):
    with open(path, "rb") as f:
        data = f.read()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def read_idx(path):
    """The array stored in an IDX file (gzipped or not), in native byte order."""
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_DTYPES:
        raise DatasetFileError(f"{path}: not an IDX file (magic bytes {data[:4].hex() or 'missing'}; "
                               "expected 00 00, a type code among 08 09 0b 0c 0d 0e, and the number of dimensions)")
    dtype, ndim = np.dtype(IDX_DTYPES[data[2]]), data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetFileError(f"{path}: truncated header ({len(data)} bytes for {ndim} dimensions)")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, 4))
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        raise DatasetFileError(f"{path}: {len(data)} bytes, but its header announces shape {shape} of {dtype.name}, "
                               f"{expected} bytes in all: the file is truncated or corrupt")
    return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path, array):
    """Write ``array`` as an IDX file (gzipped when ``path`` ends in .gz)."""
    array = np.asarray(array)
    codes = {np.dtype(v).newbyteorder("="): k for k, v in IDX_DTYPES.items()}
    if array.dtype not in codes:
        raise TypeError(f"IDX cannot store {array.dtype}; use one of {sorted(str(d) for d in codes)}")
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    with open(path, "wb") as f:
        f.write(gzip.compress(payload) if str(path).endswith(".gz") else payload)


def _find(data_dir, name, what):
    for candidate in (name, name + ".gz"):
        path = os.path.join(data_dir, candidate)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"{what}: {name} (or {name}.gz) is not in {os.path.abspath(data_dir)}; "
                            "nothing is downloaded at run time, so put the file there")


def load_mnist(data_dir, split="train"):
    """MNIST or Fashion-MNIST (same file names) from ``data_dir``: uint8 images (N, 28, 28), int64 labels.

    Expects train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte
    and t10k-labels-idx1-ubyte, each plain or gzipped.
    """
    if split not in MNIST_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    image_name, label_name = MNIST_FILES[split]
    images = read_idx(_find(data_dir, image_name, "MNIST images"))
    labels = read_idx(_find(data_dir, label_name, "MNIST labels"))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DatasetFileError(f"MNIST {split} files in {data_dir} do not match: images {images.shape}, "
                               f"labels {labels.shape}")
    return images, labels.astype(np.int64)


def read_cifar10_batch(path):
    """One CIFAR-10 binary batch file: uint8 images (N, 3, 32, 32) and int64 labels."""
    data = _read_bytes(path)
    if len(data) == 0 or len(data) % CIFAR10_RECORD:
        raise DatasetFileError(f"{path}: {len(data)} bytes is not a whole number of {CIFAR10_RECORD}-byte "
                               "CIFAR-10 records (1 label byte + 3x32x32 pixels): truncated or not CIFAR-10 binary")
    records = np.frombuffer(data, np.uint8).reshape(-1, CIFAR10_RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise DatasetFileError(f"{path}: label {labels.max()} out of range 0..9; is this CIFAR-100 or another format?")
    return records[:, 1:].reshape(-1, 3, 32, 32).copy(), labels


def load_cifar10(data_dir, split="train"):
    """CIFAR-10 binary batches from ``data_dir`` (or its cifar-10-batches-bin/): uint8 NCHW images, labels."""
    if split not in CIFAR10_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    nested = os.path.join(data_dir, "cifar-10-batches-bin")
    folder = nested if os.path.isdir(nested) else data_dir
    parts = [read_cifar10_batch(_find(folder, name, "CIFAR-10 (binary version)")) for name in CIFAR10_FILES[split]]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
