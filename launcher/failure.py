"""Why an attempt did not succeed: one record with an explicit kind, instead of sentinel values."""

import enum
from dataclasses import dataclass

from launcher.procs import describe_exit


class Kind(enum.Enum):
    WORKER_FAILED = "worker_failed"  # a worker exited with a non-zero code
    SIGNALLED = "signalled"  # a worker was killed by a signal
    WORKER_INCOMPLETE = "worker_incomplete"  # a worker exited 0 without its completion record (os._exit, ...)
    MPIEXEC_FAILED = "mpiexec_failed"  # mpiexec ended badly and no rank's record says why
    INTERRUPTED = "interrupted"  # the launcher got SIGINT or SIGTERM
    PEER_NODE_FAILED = "peer_node_failed"  # another node's workers failed, or its launcher was lost
    NODES_FAILED = "nodes_failed"  # the nodes could not form (or re-form) the job


@dataclass(frozen=True)
class Failure:
    kind: Kind
    rank: int = None  # the worker's global rank, for the worker kinds
    code: int = None  # the exit code (< 0: killed by signal -code), for the worker kinds and mpiexec
    detail: str = ""  # the other node's report, ...
    pid: int = None  # the worker's process, where its keeper recorded it

    def describe(self):
        """One line: what failed, and how."""
        if self.kind is Kind.WORKER_INCOMPLETE:
            return (f"rank {self.rank} ended ({describe_exit(self.code)}) without completing: its process "
                    f"{self.pid} left no completion record (os._exit, or the interpreter was cut short)")
        if self.kind in (Kind.WORKER_FAILED, Kind.SIGNALLED):
            return f"rank {self.rank} failed with {describe_exit(self.code)}"
        if self.kind is Kind.MPIEXEC_FAILED:
            return f"mpiexec ended with {describe_exit(self.code)} and no rank left a record of why"
        return self.detail

    def exit_code(self):
        """distdl-run's exit code: the worker's own code, 128 + the signal, or 1."""
        if self.kind is Kind.INTERRUPTED:
            return 128 + self.code
        if self.code is None or self.code == 0:
            return 1
        return self.code if self.code > 0 else 128 - self.code


def of_exit(rank, code, completed, pid=None):
    """The failure of a worker that ended with ``code``, or None if it succeeded."""
    if code < 0:
        return Failure(Kind.SIGNALLED, rank, code, pid=pid)
    if code > 0:
        return Failure(Kind.WORKER_FAILED, rank, code, pid=pid)
    return None if completed else Failure(Kind.WORKER_INCOMPLETE, rank, code, pid=pid)
