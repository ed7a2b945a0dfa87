"""Data loading: datasets, samplers (DistributedSampler shards the data), batch transforms, readers.

Randomness here (shuffles, augmentation) is keyed by (seed, epoch, sample index),
never by the world size or by what a rank loaded before, so a run on 1 worker and
on 8 sees the same samples with the same augmentation.
"""

from distdl.data import transforms
from distdl.data.collate import default_collate
from distdl.data.dataset import Dataset, Subset, TensorDataset, random_split
from distdl.data.datasets import (load_digits, make_blobs, make_images, make_regression, make_sequences,
                                  make_spirals)
from distdl.data.keyed_random import SampleKeys
from distdl.data.loader import DataLoader
from distdl.data.readers import DatasetFileError, load_cifar10, load_mnist, read_cifar10_batch, read_idx, write_idx
from distdl.data.sampler import DistributedSampler, RandomSampler, Sampler, SequentialSampler
from distdl.data.split import KFold, StratifiedKFold

__all__ = [
    "DataLoader", "Dataset", "DatasetFileError", "DistributedSampler", "KFold", "RandomSampler", "SampleKeys",
    "Sampler", "SequentialSampler", "StratifiedKFold", "Subset", "TensorDataset", "default_collate",
    "load_cifar10", "load_digits", "load_mnist", "make_blobs", "make_images", "make_regression", "make_sequences",
    "make_spirals", "random_split", "read_cifar10_batch", "read_idx", "transforms", "write_idx",
]
