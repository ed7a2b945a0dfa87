"""Training state to checkpoint and back: arrays split out of nested state dicts, restored into live objects.

Saving is collective (every rank calls it; rank 0 writes) and atomic: see ``archive.write``.
"""

import logging
import os
import time

import numpy as np

from distdl import backend, rng
from distdl.checkpoint import archive, schema, tree
from distdl.checkpoint.errors import CheckpointError
from distdl.comm import get_comm
from distdl.version import __version__

log = logging.getLogger("distdl.checkpoint")


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
            "model": tree.split(model.state_dict(), "model", arrays) if model is not None else None,
            "optimizer": tree.split(optimizer.state_dict(), "optimizer", arrays) if optimizer is not None else None,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "sampler": sampler.state_dict() if sampler is not None else None,
            "extra": tree.split(extra, "extra", arrays),
        }
        arrays = tree.to_host(arrays)
        meta["manifest"] = {name: {"member": f"arrays/{i:06d}.npy", "shape": list(a.shape), "dtype": a.dtype.str,
                                   "sha256": archive.digest(a)} for i, (name, a) in enumerate(arrays.items())}
        archive.write(os.fspath(path), meta, arrays)
    comm.barrier()


def read_checkpoint(path, within=None):
    """(meta, arrays) of the checkpoint at ``path``, every array verified against the manifest."""
    with archive.CheckpointFile(path, within) as checkpoint:
        return checkpoint.meta, checkpoint.arrays()


def load_checkpoint(path, model=None, optimizer=None, scheduler=None, sampler=None, comm=None, strict=True,
                    map_location=None):
    """Restore what was saved into the objects given; every rank calls it. Returns the other fields.

    The returned dict holds ``step``, ``epoch``, ``world_size`` and the extra fields
    given to ``save_checkpoint``. Each rank's RNG state is restored when the world
    size is the one at save (so a resumed run draws what the uninterrupted one would).
    A checkpoint holds host arrays whatever device they came from, so a GPU run's
    checkpoint loads on a machine without one: the model's and optimizer's arrays go to
    the device their parameters live on; ``map_location`` ("cpu", the default, or
    "cuda", "cuda:N") is where the arrays among the extra fields go, as torch's does.
    """
    meta, arrays = read_checkpoint(path)
    return restore(os.fspath(path), meta, arrays, model, optimizer, scheduler, sampler, comm, strict, map_location)


def restore(path, meta, arrays, model=None, optimizer=None, scheduler=None, sampler=None, comm=None, strict=True,
            map_location=None):
    """Put a read checkpoint's state into the objects given; the fields ``load_checkpoint`` returns."""
    backend.parse_device(map_location)  # a wrong name is refused before any object is changed
    comm = comm if comm is not None else get_comm()
    for part, target in (("model", model), ("optimizer", optimizer)):
        if target is not None and meta[part] is None:
            raise CheckpointError(f"{path}: holds no {part} state")
    parts = [("model", model, lambda: model.load_state_dict(tree.join(meta["model"], arrays), strict=strict)),
             ("optimizer", optimizer, lambda: optimizer.load_state_dict(tree.join(meta["optimizer"], arrays))),
             ("scheduler", scheduler, lambda: scheduler.load_state_dict(meta["scheduler"])),
             ("sampler", sampler, lambda: sampler.load_state_dict(meta["sampler"]))]
    for part, target, load in parts:
        if target is not None and meta[part] is not None:
            try:
                load()
            except (KeyError, ValueError, TypeError, IndexError) as exc:
                raise CheckpointError(f"{path}: does not fit the {part}: {exc.args[0] if exc.args else exc}") from exc
    if meta["world_size"] == comm.size:
        backend.set_rng_state(_rng_state(path, meta, comm.rank))
    return {"step": meta["step"], "epoch": meta["epoch"], "world_size": meta["world_size"],
            **tree.join(meta["extra"], arrays, map_location)}


def _rng_state(path, meta, rank):
    """This rank's saved RNG position; a format-1 file's NumPy PCG64 state becomes a new stream seeded from it.

    distdl before checkpoint format 2 drew from NumPy's PCG64, which this distdl no
    longer has: the file still loads (everything else is exact), and the resumed run's
    draws are reproducible, seeded by the old generator's next output, but not the
    draws the old distdl would have made.
    """
    state = meta["rng"][rank]
    if meta["format_version"] >= 2:
        return state
    log.warning("%s: written by distdl %s, whose random numbers came from NumPy's PCG64; this distdl draws from "
                "a SplitMix64 counter stream seeded from that state, so dropout masks and other draws after the "
                "resume differ from the ones that distdl would have drawn", path, meta["distdl_version"])
    generator = np.random.PCG64()
    generator.state = state
    return {"generator": rng.NAME, "seed": int(generator.random_raw()), "counter": 0}
