"""Checkpoints: atomic, pickle-free, verified, every read bounded; and a manager that keeps the last few.

A checkpoint is one zip file (a valid ``.npz``): every array as its own stored
``.npy`` member, and ``meta.json`` holding the format version, distdl version, step,
epoch, world size, every rank's RNG state, the optimizer's and scheduler's plain
fields, the sampler's position, the caller's extra fields, and a manifest with each
array's shape, dtype and SHA-256. Nothing in it is executed on load, the manifest
catches silent corruption, and a hostile file gets a CheckpointCorruptError, never a
blocked read or an allocation beyond what its manifest declares.

Modules: ``state`` (save/load of training state), ``archive`` (the file, written
atomically, read bounded), ``schema`` (meta.json checked), ``files`` (regular files
only; temporary files of dead writers), ``lock`` (one job per directory),
``manager`` (CheckpointManager).
"""

from distdl.checkpoint.errors import CheckpointCorruptError, CheckpointDirectoryInUseError, CheckpointError
from distdl.checkpoint.manager import CheckpointManager
from distdl.checkpoint.state import load_checkpoint, read_checkpoint, save_checkpoint

__all__ = ["CheckpointCorruptError", "CheckpointDirectoryInUseError", "CheckpointError", "CheckpointManager",
           "load_checkpoint", "read_checkpoint", "save_checkpoint"]
