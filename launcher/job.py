"""One attempt of a job on this node: start the workers, watch them, stop all of them at the first failure."""

import os
import shutil
import tempfile
import threading
import time

from launcher import procs, records, shm
from launcher.failure import Failure, Kind, of_exit
from launcher.output import Output
from launcher.report import report_failure

POLL_SECONDS = 0.05
GRACE_SECONDS = procs.KEEPER_GRACE + 2.0  # the keepers stop their own trees first
SWEEP_GRACE = 1.0
PUMP_SECONDS = 5.0
RAISED_FIRST_SECONDS = 5.0  # how long the launcher waits for a rank that raised first to end, after a peer did


class Attempt:
    """The workers of this node for one attempt; ``watch()`` returns None on success or the first Failure."""

    def __init__(self, spec, environments, attempt):
        self.spec, self.environments, self.attempt = spec, environments, attempt
        self.error_dir = tempfile.mkdtemp(prefix="distdl-errors-")
        self.records = records.Reader(self.error_dir)
        shown = None if spec.shown_local_ranks is None else \
            {spec.node_rank * spec.nproc + local for local in spec.shown_local_ranks}
        self.output = Output(spec.tag_output, spec.log_dir, attempt, shown, spec.live, spec.logged_streams)
        self.processes = {}  # rank -> Popen of its keeper (one keeper of mpiexec, as rank 0, for the MPI backend)
        self.pumps = []
        self.stopped = set()
        self._finished = threading.Event()  # the workers are gone: output followers read to the end and stop
        self._began = time.time()  # shared-memory segments made since then are this attempt's (shm.py)

    @property
    def mpi(self):
        return self.spec.backend == "mpi"

    def start(self):
        for env in self.environments:
            env["DISTDL_ERROR_DIR"] = self.error_dir
        if self.mpi:
            output_dir = os.path.join(self.error_dir, "output")
            os.mkdir(output_dir)
            process = procs.start(self.spec.mpi_command(output_dir, procs.kept), self.environments[0])
            self.processes[0] = process
            self.pumps.append(self.output.pump(process.stdout, "mpiexec"))
            self.pumps.append(self.output.follow(output_dir, self._finished))
        else:
            for env in self.environments:
                rank = int(env["DISTDL_RANK"])
                fds = (int(env["DISTDL_MASTER_FD"]),) if "DISTDL_MASTER_FD" in env else ()
                split = self.spec.splits_streams(rank)
                process = procs.start(self.spec.worker_command(), env, fds, split)
                self.processes[rank] = process
                self.pumps.append(self.output.pump(process.stdout, rank, "stdout" if split else None))
                if split:
                    self.pumps.append(self.output.pump(process.stderr, rank, "stderr"))

    def watch(self, interrupted, peer_problem=lambda: None):
        """Wait until all workers succeed (None), one fails (its Failure), the launcher is told to stop, or another
        node has a problem (``peer_problem()`` returns why)."""
        while True:
            ended = self._poll()
            seen = self.records.read()
            failure = self._first_failure(seen, ended)
            if failure is not None:
                failure = self._raised_first(failure, seen, interrupted)
                self.stopped = self._ended_by(failure, self.records.read(), self._poll())
                return failure
            if all(code is not None for code in ended.values()):
                return None
            if interrupted():
                return Failure(Kind.INTERRUPTED, code=interrupted())
            problem = peer_problem()
            if problem:
                return Failure(Kind.PEER_NODE_FAILED, detail=problem)
            time.sleep(POLL_SECONDS)

    def _first_failure(self, seen, ended):
        """The earliest worker that ended badly, by its keeper's record; a keeper that left none, by its code."""
        for record in seen.exits:  # only a keeper's own worker has one: a child that imported distdl does not count
            failure = of_exit(record["rank"], record["code"], seen.completed(record["pid"]), record["pid"])
            if failure is not None:
                return failure
        for rank, code in ended.items():
            failure = None
            if code is None or (not self.mpi and seen.exit_of(rank)):
                continue
            if not self.mpi:
                failure = of_exit(rank, code, True)
            elif code:
                error = seen.errors[0] if seen.errors else None
                failure = (Failure(Kind.WORKER_FAILED, error["rank"], code) if error
                           else Failure(Kind.MPIEXEC_FAILED, code=code))
            if failure is not None:
                return failure
        return None

    def _poll(self):
        return {rank: p.poll() for rank, p in self.processes.items()}

    def _raised_first(self, failure, seen, interrupted):
        """The failure of the rank that raised before ``failure`` began, where that is another rank.

        A rank that raises tells its peers it leaves before its interpreter has ended, so a peer can die of losing it
        and end first. The earliest error is the better evidence: wait a little for that process to end as a worker
        (a child's error never does: its keeper records only the worker), and name it.
        """
        since = self._since(failure, seen)
        if since is None:  # no record of when it began (its keeper left none): nothing to compare with
            return failure
        earlier = sorted((e for e in seen.errors if e["time"] < since and e["rank"] != failure.rank),
                         key=lambda e: e["time"])
        deadline = time.monotonic() + RAISED_FIRST_SECONDS
        while earlier and time.monotonic() < deadline and not interrupted():
            seen = self.records.read()
            for error in earlier:  # the earliest whose process ended as a worker (a child's error never does)
                record = seen.exit_of_process(error["pid"])
                if record is not None:
                    return of_exit(record["rank"], record["code"], seen.completed(record["pid"]),
                                   record["pid"]) or failure
            time.sleep(POLL_SECONDS)
        return failure

    def _ended_by(self, failure, seen, ended):
        """The other ranks that ``failure`` ended: those still running, which are stopped now, and those that failed
        since it raised (or ended), of a lost peer."""
        since = self._since(failure, seen)
        failed_since = {e["rank"] for e in seen.exits if since is not None and e["time"] >= since and
                        of_exit(e["rank"], e["code"], seen.completed(e["pid"]))}
        return (self._still_running(seen, ended) | failed_since) - {failure.rank}

    @staticmethod
    def _since(failure, seen):
        """When ``failure`` began: its worker's error record, else its end; None without either."""
        first = seen.error_of(failure.rank, failure.pid) or seen.exit_of_process(failure.pid)
        return first["time"] if first else None

    def _still_running(self, seen, ended):
        if self.mpi:
            gone = {e["pid"] for e in seen.exits}
            return {s["rank"] for pid, s in seen.starts.items() if pid not in gone}
        return {rank for rank, code in ended.items() if code is None}

    def stop(self):
        """Stop every worker of this attempt and every process they left; reap them all."""
        procs.stop(list(self.processes.values()), GRACE_SECONDS)
        procs.sweep(SWEEP_GRACE)
        self._end_output()

    def report(self, failure):
        report_failure(failure, self.records.read(), self.output, self.stopped)

    def _end_output(self):
        """Let the output threads read to the end: 5 s in all, so nothing that holds a pipe open holds up the job."""
        self._finished.set()
        deadline = time.monotonic() + PUMP_SECONDS
        for pump in self.pumps:
            pump.join(timeout=max(deadline - time.monotonic(), 0))

    def close(self):
        procs.sweep(SWEEP_GRACE)  # after a success too: nothing a worker started outlives the attempt
        shm.remove_leftovers(self._began)  # nor the segments of a rank that was killed or aborted
        self._end_output()
        self.output.close()
        shutil.rmtree(self.error_dir, ignore_errors=True)


__all__ = ["Attempt"]
