"""One attempt of a job on this node: start the workers, watch them, stop all of them at the first failure."""

import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

from launcher import procs
from launcher.output import Output
from launcher.report import read_error_files, report_failure

POLL_SECONDS = 0.05
GRACE_SECONDS = 3.0


@dataclass
class Failure:
    rank: int  # None: a worker under mpiexec that died without an error file
    code: int
    elsewhere: bool = False  # the launcher was interrupted, or another node failed


class Attempt:
    """The workers of this node for one attempt; ``run()`` returns None on success or the first Failure."""

    def __init__(self, spec, environments, attempt):
        self.spec, self.environments, self.attempt = spec, environments, attempt
        self.error_dir = tempfile.mkdtemp(prefix="distdl-errors-")
        self.output = Output(spec.tag_output, spec.log_dir, attempt)
        self.processes = {}  # rank -> Popen (one mpiexec under rank 0 for the MPI backend)
        self.pumps = []
        self.stopped = set()
        self._finished = threading.Event()  # the workers are gone: output followers read to the end and stop

    def start(self):
        for env in self.environments:
            env["DISTDL_ERROR_DIR"] = self.error_dir
        if self.spec.backend == "mpi":
            output_dir = os.path.join(self.error_dir, "output")
            os.mkdir(output_dir)
            process = procs.start(self.spec.mpi_command(output_dir), self.environments[0])
            self.processes[0] = process
            self.pumps.append(self.output.pump(process.stdout, "mpiexec"))
            self.pumps.append(self.output.follow(output_dir, self._finished))
        else:
            for env in self.environments:
                rank = int(env["DISTDL_RANK"])
                fds = (int(env["DISTDL_MASTER_FD"]),) if "DISTDL_MASTER_FD" in env else ()
                process = procs.start(self.spec.worker_command(), env, fds)
                self.processes[rank] = process
                self.pumps.append(self.output.pump(process.stdout, rank))

    def watch(self, interrupted, peer_failed=lambda: None):
        """Wait until all workers succeed (None), one fails (its Failure), or the launcher is told to stop."""
        while True:
            running = False
            for rank, process in self.processes.items():
                code = process.poll()
                if code is None:
                    running = True
                elif code != 0:
                    return Failure(self._failed_rank(rank), code)
            if not running:
                return None
            if interrupted() or peer_failed():
                return Failure(None, 0, elsewhere=True)
            time.sleep(POLL_SECONDS)

    def _failed_rank(self, rank):
        """Under mpiexec the failed rank is the first to write an error file (else it is unknown: None)."""
        if self.spec.backend != "mpi":
            return rank
        records = read_error_files(self.error_dir)
        return records[0]["rank"] if records else None

    def stop(self):
        alive = {r for r, p in self.processes.items() if p.poll() is None}
        procs.stop(list(self.processes.values()), GRACE_SECONDS)
        self._finished.set()
        for pump in self.pumps:
            pump.join(timeout=5)
        self.stopped = alive if self.spec.backend != "mpi" else set()
        return alive

    def report(self, failure):
        report_failure(failure, self.error_dir, self.output, self.stopped)

    def close(self):
        self._finished.set()
        for pump in self.pumps:
            pump.join(timeout=5)
        self.output.close()
        shutil.rmtree(self.error_dir, ignore_errors=True)


def restart_note(attempt, max_restarts, failure):
    who = "a worker" if failure.rank is None else f"rank {failure.rank}"
    sys.stderr.write(f"distdl-run: restarting the job ({attempt} of {max_restarts} restarts) after {who} "
                     "failed; the workers resume from the newest checkpoint\n")
    sys.stderr.flush()


__all__ = ["Attempt", "Failure"]
