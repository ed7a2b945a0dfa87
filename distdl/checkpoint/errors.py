"""The errors of checkpoints: a file that cannot be used, one that is damaged, a directory another job holds."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: not a distdl checkpoint, too new, or not matching the model."""


class CheckpointCorruptError(CheckpointError):
    """A checkpoint whose bytes are not what distdl writes: truncated, altered, hostile, or not a regular file."""


class CheckpointDirectoryInUseError(RuntimeError):
    """Another job holds the checkpoint directory: two jobs writing one directory would overwrite each other."""
