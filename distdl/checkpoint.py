"""Checkpoints: atomic, pickle-free, verified; and a manager that keeps the last few and finds the newest.

A checkpoint is one zip file (a valid ``.npz``): every array as its own ``.npy``
member, read back with ``allow_pickle=False``, and ``meta.json`` holding the format
version, distdl version, step, epoch, world size, every rank's RNG state, the
optimizer's and scheduler's plain fields, the sampler's position, the caller's
extra fields, and a manifest with each array's shape, dtype and SHA-256. Nothing in
it is executed on load, and the manifest catches silent corruption.

Saving is collective (every rank calls it; rank 0 writes) and atomic: the file is
written under a temporary name in the same directory, flushed and fsynced, renamed
into place, and the directory fsynced, so a job killed at any moment leaves the
previous checkpoint or the new one, complete.
"""

import hashlib
import io
import json
import os
import re
import secrets
import time
import zipfile

import numpy as np

from distdl import backend
from distdl.comm import get_comm
from distdl.version import __version__

FORMAT = "distdl-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: not a distdl checkpoint, too new, or not matching the model."""


class CheckpointCorruptError(CheckpointError):
    """A checkpoint whose bytes are not what was written: truncated, or an array's SHA-256 differs."""


def _split(tree, prefix, arrays):
    """Replace every array in a nested dict/list by a reference; collect the arrays by path."""
    if isinstance(tree, dict):
        return {str(k): _split(v, f"{prefix}/{k}", arrays) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_split(v, f"{prefix}/{i}", arrays) for i, v in enumerate(tree)]
    if hasattr(tree, "shape") or isinstance(tree, np.generic):
        host = np.asarray(tree) if isinstance(tree, np.generic) else backend.to_device(getattr(tree, "data", tree), "cpu")
        arrays[prefix] = np.asarray(host, order="C")  # keeps 0-d arrays 0-d, as ascontiguousarray would not
        return {"__array__": prefix}
    return tree


def _join(tree, arrays):
    if isinstance(tree, dict):
        if set(tree) == {"__array__"}:
            return arrays[tree["__array__"]]
        return {k: _join(v, arrays) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_join(v, arrays) for v in tree]
    return tree


def _digest(array):
    return hashlib.sha256(np.ascontiguousarray(array).data).hexdigest()


def save_checkpoint(path, model=None, optimizer=None, scheduler=None, sampler=None, step=None, epoch=None,
                    comm=None, **extra):
    """Save a training state to ``path``; every rank calls it, rank 0 writes, all return once it is in place.

    ``sampler`` is anything with ``state_dict()``: a DistributedSampler, or the
    DataLoader (which counts the samples it delivered). ``extra`` fields must be
    JSON-serialisable or arrays.
    """
    comm = comm if comm is not None else get_comm()
    rng_states = comm.allgather_json(backend.rng_state())
    if comm.rank == 0:
        arrays = {}
        meta = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "distdl_version": __version__,
            "saved_at": time.time(), "step": step, "epoch": epoch, "world_size": comm.size, "rng": rng_states,
            "model": _split(model.state_dict(), "model", arrays) if model is not None else None,
            "optimizer": _split(optimizer.state_dict(), "optimizer", arrays) if optimizer is not None else None,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "sampler": sampler.state_dict() if sampler is not None else None,
            "extra": _split(extra, "extra", arrays),
        }
        meta["manifest"] = {name: {"member": f"arrays/{i:06d}.npy", "shape": list(a.shape), "dtype": a.dtype.str,
                                   "sha256": _digest(a)} for i, (name, a) in enumerate(arrays.items())}
        _write_atomically(os.fspath(path), meta, arrays)
    comm.barrier()


def _write_atomically(path, meta, arrays):
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    temporary = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with open(temporary, "wb") as f:
            with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
                for name, array in arrays.items():
                    with archive.open(meta["manifest"][name]["member"], "w", force_zip64=True) as member:
                        np.lib.format.write_array(member, array, allow_pickle=False)
                archive.writestr("meta.json", json.dumps(meta))
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _open(path):
    """The open archive and its checked metadata."""
    try:
        archive = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, OSError) as exc:
        raise CheckpointCorruptError(f"{path}: not a readable checkpoint ({exc}): truncated, or not a distdl "
                                     "checkpoint at all") from exc
    try:
        meta = json.loads(archive.read("meta.json"))
    except KeyError:
        archive.close()
        raise CheckpointError(f"{path}: not a distdl checkpoint (no meta.json inside)") from None
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        archive.close()
        raise CheckpointCorruptError(f"{path}: its metadata cannot be read ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        archive.close()
        raise CheckpointError(f"{path}: not a distdl checkpoint (its meta.json names no distdl format)")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        archive.close()
        raise CheckpointError(f"{path}: written in checkpoint format {meta['format_version']} by distdl "
                              f"{meta.get('distdl_version')}; this distdl {__version__} reads format "
                              f"{FORMAT_VERSION} at most: upgrade distdl")
    return archive, meta


def read_checkpoint(path):
    """(meta, arrays) of the checkpoint at ``path``, every array verified against the manifest."""
    path = os.fspath(path)
    archive, meta = _open(path)
    with archive:
        arrays = {}
        for name, entry in meta["manifest"].items():
            try:
                array = np.lib.format.read_array(io.BytesIO(archive.read(entry["member"])), allow_pickle=False)
            except (KeyError, zipfile.BadZipFile, ValueError, OSError) as exc:
                raise CheckpointCorruptError(f"{path}: array {name!r} cannot be read ({exc})") from exc
            if _digest(array) != entry["sha256"] or list(array.shape) != entry["shape"]:
                raise CheckpointCorruptError(f"{path}: array {name!r} does not match its SHA-256 in the manifest: "
                                             "the file was corrupted after it was written")
            arrays[name] = array
    return meta, arrays


def load_checkpoint(path, model=None, optimizer=None, scheduler=None, sampler=None, comm=None, strict=True):
    """Restore what was saved into the objects given; every rank calls it. Returns the other fields.

    The returned dict holds ``step``, ``epoch``, ``world_size`` and the extra fields
    given to ``save_checkpoint``. Each rank's RNG state is restored when the world
    size is the one at save (so a resumed run draws what the uninterrupted one would).
    """
    comm = comm if comm is not None else get_comm()
    meta, arrays = read_checkpoint(path)
    path = os.fspath(path)
    if model is not None:
        if meta["model"] is None:
            raise CheckpointError(f"{path}: holds no model state")
        try:
            model.load_state_dict(_join(meta["model"], arrays), strict=strict)
        except (KeyError, ValueError) as exc:
            raise CheckpointError(f"{path}: does not fit the model: {exc.args[0]}") from exc
    if optimizer is not None:
        if meta["optimizer"] is None:
            raise CheckpointError(f"{path}: holds no optimizer state")
        try:
            optimizer.load_state_dict(_join(meta["optimizer"], arrays))
        except (KeyError, ValueError) as exc:
            raise CheckpointError(f"{path}: does not fit the optimizer: {exc.args[0]}") from exc
    if scheduler is not None and meta["scheduler"] is not None:
        scheduler.load_state_dict(meta["scheduler"])
    if sampler is not None and meta["sampler"] is not None:
        sampler.load_state_dict(meta["sampler"])
    if meta["world_size"] == comm.size:
        backend.set_rng_state(meta["rng"][comm.rank])
    return {"step": meta["step"], "epoch": meta["epoch"], "world_size": meta["world_size"],
            **_join(meta["extra"], arrays)}


class CheckpointManager:
    """Numbered checkpoints in one directory: save every so often, keep the last ``keep``, resume from the newest.

    ``directory`` defaults to DISTDL_CHECKPOINT_DIR (set by ``distdl-run --checkpoint-dir``).
    """

    def __init__(self, directory=None, keep=3, prefix="checkpoint", comm=None):
        directory = directory if directory is not None else os.environ.get("DISTDL_CHECKPOINT_DIR")
        if not directory:
            raise ValueError("CheckpointManager needs a directory: pass one, or run under "
                             "distdl-run --checkpoint-dir DIR (which sets DISTDL_CHECKPOINT_DIR)")
        if keep is not None and keep < 1:
            raise ValueError(f"keep must be at least 1 (or None to keep all), got {keep}")
        self.directory, self.keep, self.prefix = os.fspath(directory), keep, prefix
        self.comm = comm
        self._pattern = re.compile(rf"^{re.escape(prefix)}-(\d+)\.npz$")

    def path(self, step):
        return os.path.join(self.directory, f"{self.prefix}-{int(step):09d}.npz")

    def steps(self):
        """The steps of the complete checkpoints in the directory, oldest first (temporary files are not)."""
        if not os.path.isdir(self.directory):
            return []
        found = (self._pattern.match(name) for name in os.listdir(self.directory))
        return sorted(int(m.group(1)) for m in found if m)

    def save(self, step, **state):
        """``save_checkpoint`` to the numbered path of ``step``, then remove all but the newest ``keep``."""
        path = self.path(step)
        save_checkpoint(path, step=step, comm=self.comm, **state)
        comm = self.comm if self.comm is not None else get_comm()
        if comm.rank == 0 and self.keep is not None:
            for old in self.steps()[:-self.keep]:
                os.unlink(self.path(old))
        return path

    def latest(self):
        """The path of the newest checkpoint that reads back whole, or None."""
        for step in reversed(self.steps()):
            try:
                _open(self.path(step))[0].close()  # the zip directory and metadata read; load verifies the arrays
                return self.path(step)
            except CheckpointError:
                continue  # damaged after it was written: fall back to the one before
        return None

    def restore_latest(self, **objects):
        """Load the newest checkpoint into ``objects`` (model=, optimizer=, ...); None when there is none."""
        path = self.latest()
        if path is None:
            return None
        return load_checkpoint(path, comm=self.comm, **objects)
