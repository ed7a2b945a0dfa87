"""CheckpointManager: numbered checkpoints in one directory, the last few kept, the newest intact one restored."""

import logging
import os
import re

from distdl.checkpoint import lock
from distdl.checkpoint.archive import CheckpointFile
from distdl.checkpoint.errors import CheckpointError
from distdl.checkpoint.files import is_regular, remove_dead_temporaries
from distdl.checkpoint.state import restore, save_checkpoint
from distdl.comm import get_comm

log = logging.getLogger("distdl.checkpoint")


class CheckpointManager:
    """Numbered checkpoints in one directory: save every so often, keep the last ``keep``, resume from the newest.

    ``directory`` defaults to DISTDL_CHECKPOINT_DIR (set by ``distdl-run --checkpoint-dir``).
    Rank 0 holds the directory for its job from the first ``save`` or
    ``restore_latest`` until ``close()`` (or its end): a second job there fails with
    CheckpointDirectoryInUseError naming the first. ``latest()`` and ``steps()`` only
    look, so they work beside a running job.
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
        self._claim = None

    def path(self, step):
        return os.path.join(self.directory, f"{self.prefix}-{int(step):09d}.npz")

    def _names(self):
        """(step, file name) of every name that looks like a checkpoint, oldest first; nothing is opened."""
        try:
            names = os.listdir(self.directory)
        except (FileNotFoundError, NotADirectoryError):
            return []
        found = ((self._pattern.match(name), name) for name in names)
        return sorted((int(m.group(1)), name) for m, name in found if m)

    def steps(self):
        """The steps of the checkpoint files in the directory, oldest first (temporary files are not)."""
        return [step for step, _ in self._names()]

    def _hold(self):
        """On rank 0: claim the directory for this job and clear the temporary files of dead writers."""
        comm = self.comm if self.comm is not None else get_comm()
        if comm.rank == 0:
            if self._claim is None:
                self._claim = lock.claim(self.directory)
            remove_dead_temporaries(self.directory)
        return comm

    def close(self):
        """Let go of the directory, so another job may use it while this process goes on."""
        if self._claim is not None:
            lock.release(self._claim)
            self._claim = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def save(self, step, **state):
        """``save_checkpoint`` to the numbered path of ``step``, then remove all but the newest ``keep``."""
        comm = self._hold()
        path = self.path(step)
        save_checkpoint(path, step=step, comm=comm, **state)
        if comm.rank == 0 and self.keep is not None:
            files = [name for _, name in self._names() if is_regular(os.path.join(self.directory, name))]
            for name in files[:-self.keep]:
                try:
                    os.unlink(os.path.join(self.directory, name))
                except FileNotFoundError:
                    pass  # removed by someone else meanwhile: the goal is reached
        return path

    def _candidates(self, newest=None):
        """(key, open CheckpointFile) of the names from ``newest`` down whose metadata checks; logs the others."""
        for key in reversed(self._names()):
            if newest is not None and key > newest:
                continue
            path = os.path.join(self.directory, key[1])
            try:
                checkpoint = CheckpointFile(path, within=self.directory)
            except FileNotFoundError:
                continue  # rotated away since the listing
            except CheckpointError as exc:
                log.warning("skipped a checkpoint: %s", exc)
                continue
            yield key, checkpoint

    def latest(self):
        """The path of the newest checkpoint whose zip directory and metadata check (arrays are not read), or None."""
        for _, checkpoint in self._candidates():
            checkpoint.close()
            return checkpoint.path
        return None

    def _newest_intact(self, newest):
        """(key, meta, arrays) of the newest checkpoint up to ``newest`` whose every array verifies, or None."""
        for key, checkpoint in self._candidates(newest):
            try:
                with checkpoint:
                    return key, checkpoint.meta, checkpoint.arrays()
            except CheckpointError as exc:
                log.warning("skipped a checkpoint: %s", exc)
        return None

    def restore_latest(self, **objects):
        """Load the newest intact checkpoint into ``objects`` (model=, optimizer=, ...); None when there is none.

        Every array of a candidate is verified before it is used; a damaged one is
        logged (logger "distdl.checkpoint") and the next older one tried. The ranks
        agree on the one they load: when one rank cannot read what another can, all
        fall back to the newest that every rank reads whole.
        """
        comm = self._hold()
        newest = None
        while True:
            found = self._newest_intact(newest)
            mine = found[0] if found else None
            keys = [mine] if comm.size == 1 else comm.allgather_json(mine)
            if None in keys:
                if self._names():
                    log.warning("no intact checkpoint in %s%s", self.directory,
                                "" if found is None else " that every rank can read")
                return None
            keys = [tuple(key) for key in keys]
            if all(key == keys[0] for key in keys):
                break
            newest = min(keys)
        key, meta, arrays = found
        return restore(os.path.join(self.directory, key[1]), meta, arrays, comm=comm, **objects)
