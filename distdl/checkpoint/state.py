"""Training state to checkpoint and back: arrays split out of nested state dicts, restored into live objects.

Saving is collective (every rank calls it; rank 0 writes) and atomic: see ``archive.write``.
"""

import os
import time

import numpy as np

from distdl import backend
from distdl.checkpoint import archive, schema
from distdl.checkpoint.errors import CheckpointError
from distdl.comm import get_comm
from distdl.version import __version__


def _split(tree, prefix, arrays):
    """Replace every array in a nested dict/list by a reference; collect the arrays by path."""
    if isinstance(tree, dict):
        return {str(k): _split(v, f"{prefix}/{k}", arrays) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_split(v, f"{prefix}/{i}", arrays) for i, v in enumerate(tree)]
    if hasattr(tree, "shape") or isinstance(tree, np.generic):
        data = getattr(tree, "data", tree)
        host = np.asarray(tree) if isinstance(tree, np.generic) else backend.to_device(data, "cpu")
        arrays[prefix] = np.asarray(host, order="C")  # keeps 0-d arrays 0-d, as ascontiguousarray would not
        return {"__array__": prefix}
    return tree


def _join(tree, arrays):
    """The tree with its array references replaced by the arrays (depth and references checked by ``schema``)."""
    if isinstance(tree, dict):
        if set(tree) == {"__array__"}:
            return arrays[tree["__array__"]]
        return {k: _join(v, arrays) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_join(v, arrays) for v in tree]
    return tree


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
            "format": schema.FORMAT, "format_version": schema.FORMAT_VERSION, "distdl_version": __version__,
            "saved_at": time.time(), "step": step, "epoch": epoch, "world_size": comm.size, "rng": rng_states,
            "model": _split(model.state_dict(), "model", arrays) if model is not None else None,
            "optimizer": _split(optimizer.state_dict(), "optimizer", arrays) if optimizer is not None else None,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "sampler": sampler.state_dict() if sampler is not None else None,
            "extra": _split(extra, "extra", arrays),
        }
        meta["manifest"] = {name: {"member": f"arrays/{i:06d}.npy", "shape": list(a.shape), "dtype": a.dtype.str,
                                   "sha256": archive.digest(a)} for i, (name, a) in enumerate(arrays.items())}
        archive.write(os.fspath(path), meta, arrays)
    comm.barrier()


def read_checkpoint(path, within=None):
    """(meta, arrays) of the checkpoint at ``path``, every array verified against the manifest."""
    with archive.CheckpointFile(path, within) as checkpoint:
        return checkpoint.meta, checkpoint.arrays()


def load_checkpoint(path, model=None, optimizer=None, scheduler=None, sampler=None, comm=None, strict=True):
    """Restore what was saved into the objects given; every rank calls it. Returns the other fields.

    The returned dict holds ``step``, ``epoch``, ``world_size`` and the extra fields
    given to ``save_checkpoint``. Each rank's RNG state is restored when the world
    size is the one at save (so a resumed run draws what the uninterrupted one would).
    """
    meta, arrays = read_checkpoint(path)
    return restore(os.fspath(path), meta, arrays, model, optimizer, scheduler, sampler, comm, strict)


def restore(path, meta, arrays, model=None, optimizer=None, scheduler=None, sampler=None, comm=None, strict=True):
    """Put a read checkpoint's state into the objects given; the fields ``load_checkpoint`` returns."""
    comm = comm if comm is not None else get_comm()
    for part, target in (("model", model), ("optimizer", optimizer)):
        if target is not None and meta[part] is None:
            raise CheckpointError(f"{path}: holds no {part} state")
    parts = [("model", model, lambda: model.load_state_dict(_join(meta["model"], arrays), strict=strict)),
             ("optimizer", optimizer, lambda: optimizer.load_state_dict(_join(meta["optimizer"], arrays))),
             ("scheduler", scheduler, lambda: scheduler.load_state_dict(meta["scheduler"])),
             ("sampler", sampler, lambda: sampler.load_state_dict(meta["sampler"]))]
    for part, target, load in parts:
        if target is not None and meta[part] is not None:
            try:
                load()
            except (KeyError, ValueError, TypeError, IndexError) as exc:
                raise CheckpointError(f"{path}: does not fit the {part}: {exc.args[0] if exc.args else exc}") from exc
    if meta["world_size"] == comm.size:
        backend.set_rng_state(meta["rng"][comm.rank])
    return {"step": meta["step"], "epoch": meta["epoch"], "world_size": meta["world_size"],
            **_join(meta["extra"], arrays)}
