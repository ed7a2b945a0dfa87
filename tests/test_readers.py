"""Dataset files: IDX and CIFAR-10 written to a temporary directory and read back exactly; broken files named."""

import gzip

import numpy as np
import pytest

from distdl.data import DatasetFileError, load_cifar10, load_mnist, read_cifar10_batch, read_idx, write_idx

IDX_DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]


@pytest.mark.parametrize("dtype", IDX_DTYPES)
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path, dtype, suffix):
    array = (np.random.default_rng(0).random((3, 4, 5)) * 100).astype(dtype)
    path = tmp_path / f"a{suffix}"
    write_idx(path, array)
    back = read_idx(path)
    assert back.dtype == dtype and back.dtype.isnative
    np.testing.assert_array_equal(back, array)


def write_mnist(folder, n, split="train", gz=False):
    rng = np.random.default_rng(1)
    images, labels = rng.integers(0, 256, (n, 28, 28)).astype(np.uint8), rng.integers(0, 10, n).astype(np.uint8)
    prefix = "train" if split == "train" else "t10k"
    suffix = ".gz" if gz else ""
    write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
    return images, labels


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_files_are_read_exactly(tmp_path, gz):
    images, labels = write_mnist(tmp_path, 12, "test", gz)
    x, y = load_mnist(tmp_path, split="test")
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(y, labels)
    assert y.dtype == np.int64


def test_a_missing_file_says_which_file_goes_where(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"train-images-idx3-ubyte \(or train-images-idx3-ubyte.gz\) "
                                                r"is not in .*nothing is downloaded"):
        load_mnist(tmp_path)


def test_a_truncated_idx_file_is_named(tmp_path):
    write_mnist(tmp_path, 5)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DatasetFileError, match=r"train-images-idx3-ubyte: 3836 bytes, .*truncated or corrupt"):
        load_mnist(tmp_path)


def test_a_wrong_magic_is_named(tmp_path):
    path = tmp_path / "x.idx"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    with pytest.raises(DatasetFileError, match=r"x.idx: not an IDX file \(magic bytes 89504e47"):
        read_idx(path)


def test_mnist_files_that_do_not_match_are_refused(tmp_path):
    write_mnist(tmp_path, 5)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(4, np.uint8))
    with pytest.raises(DatasetFileError, match=r"images \(5, 28, 28\), labels \(4,\)"):
        load_mnist(tmp_path)


def cifar_records(n, seed):
    rng = np.random.default_rng(seed)
    images, labels = rng.integers(0, 256, (n, 3, 32, 32)).astype(np.uint8), rng.integers(0, 10, n).astype(np.uint8)
    records = np.concatenate([labels[:, None], images.reshape(n, -1)], axis=1)
    return images, labels, records.tobytes()


@pytest.mark.parametrize("nested", [False, True])
def test_cifar10_batches_are_read_exactly(tmp_path, nested):
    folder = tmp_path / "cifar-10-batches-bin" if nested else tmp_path
    folder.mkdir(exist_ok=True)
    parts = [cifar_records(3 + i, i) for i in range(5)]
    for i, (_, _, data) in enumerate(parts, 1):
        (folder / f"data_batch_{i}.bin").write_bytes(data)
    test_images, test_labels, data = cifar_records(4, 9)
    (folder / "test_batch.bin").write_bytes(gzip.compress(data))

    x, y = load_cifar10(tmp_path)
    np.testing.assert_array_equal(x, np.concatenate([p[0] for p in parts]))
    np.testing.assert_array_equal(y, np.concatenate([p[1] for p in parts]))
    x, y = load_cifar10(tmp_path, split="test")
    np.testing.assert_array_equal(x, test_images)
    np.testing.assert_array_equal(y, test_labels)


def test_broken_cifar10_files_are_named(tmp_path):
    _, _, data = cifar_records(2, 0)
    (tmp_path / "short.bin").write_bytes(data[:-1])
    with pytest.raises(DatasetFileError, match=r"short.bin: 6145 bytes is not a whole number of 3073-byte"):
        read_cifar10_batch(tmp_path / "short.bin")
    (tmp_path / "hundred.bin").write_bytes(bytes([57]) + data[1:])
    with pytest.raises(DatasetFileError, match="hundred.bin: label 57 out of range"):
        read_cifar10_batch(tmp_path / "hundred.bin")
    with pytest.raises(FileNotFoundError, match="data_batch_1.bin"):
        load_cifar10(tmp_path)
