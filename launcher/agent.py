"""The run loop as an explicit state machine (torchelastic's agent is the anchor).

STARTING: get the attempt's plan (a port and a run token) and start this node's
workers. RUNNING: watch them until they all succeed, one fails, the launcher is
signalled, or another node fails. Then SUCCEEDED, or FAILED: stop every worker
and what it left, report the root cause, and either restart (back to STARTING,
from the newest checkpoint, or from the start without one) or STOPPED. With several nodes,
node 0 decides for all (launcher/nodes.py); alone, ``Solo`` decides.
"""

import enum
import signal
import sys

from launcher import secret
from launcher.failure import Kind
from launcher.job import Attempt
from launcher.spec import reserve_port


class State(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"


def say(text):
    sys.stderr.write(f"distdl-run: {text}\n")
    sys.stderr.flush()


class Signals:
    """SIGINT and SIGTERM to the launcher: stop every worker, then exit with 128 + the signal."""

    def __init__(self):
        self.received = None
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.received = signum

    def __call__(self):
        """The signal received, or None."""
        return self.received


class Solo:
    """A job of one node: a fresh port and token for each attempt, and the restart decision made here."""

    def __init__(self, spec, job_secret):
        self.spec, self.secret = spec, job_secret

    def plan(self, attempt):
        listener = reserve_port(self.spec.master_addr) if self.spec.backend == "zmq" and not self.spec.master_port \
            else None
        nonce = secret.nonce()
        return {"attempt": attempt, "run_id": secret.run_token(self.secret, nonce), "listener": listener,
                "port": listener.getsockname()[1] if listener else self.spec.master_port}

    def problem(self):
        return None

    def announce(self, attempt, failure):
        pass

    def settle(self, attempt, failure):
        return failure

    def decide(self, attempt, failure):
        return failure is not None and attempt < self.spec.max_restarts and failure.kind is not Kind.INTERRUPTED

    def succeeded(self):
        return True

    def close(self):
        pass


class Agent:
    def __init__(self, spec, link):
        self.spec, self.link = spec, link
        self.signals = Signals()
        self.state, self.attempt, self.job, self.failure, self.code = State.STARTING, 0, None, None, None

    def run(self):
        """Step the state machine until STOPPED; distdl-run's exit code."""
        steps = {State.STARTING: self._start, State.RUNNING: self._watch, State.SUCCEEDED: self._succeeded,
                 State.FAILED: self._failed}
        try:
            while self.state is not State.STOPPED:
                self.state = steps[self.state]()
        finally:
            self.link.close()
        return self.code

    def _start(self):
        plan = self.link.plan(self.attempt)
        if plan is None:  # node 0 ended the job before this node's next attempt
            self.code = 0 if self.link.succeeded() else 1
            return State.STOPPED
        listener = plan.get("listener")
        environments = self.spec.environments(self.attempt, plan["run_id"], plan["port"],
                                              listener.fileno() if listener else None)
        self.job = Attempt(self.spec, environments, self.attempt)
        self.job.start()
        if listener:
            listener.close()  # rank 0 holds its own copy of the listening socket now
        return State.RUNNING

    def _watch(self):
        failure = self.job.watch(self.signals, self.link.problem)
        self.link.announce(self.attempt, failure)
        if failure is None:
            self.job.close()
        else:
            self.job.stop()
            self._report(failure)
            self.job.close()
        self.failure = self.link.settle(self.attempt, failure)
        if failure is None and self.failure is not None:
            say(f"this node's workers succeeded, but the attempt failed: {self.failure.describe()}")
        return State.SUCCEEDED if self.failure is None else State.FAILED

    def _report(self, failure):
        if failure.kind is Kind.INTERRUPTED:
            say(f"received {signal.Signals(failure.code).name}: stopped every worker")
        elif failure.kind is Kind.PEER_NODE_FAILED:
            say(f"stopping this node's workers: {failure.detail}")
        else:
            self.job.report(failure)

    def _succeeded(self):
        if self.link.decide(self.attempt, None):  # this node succeeded, another failed: node 0 restarts all
            return self._restart("another node failed")
        self.code = 0 if self.link.succeeded() else 1
        return State.STOPPED

    def _failed(self):
        if self.link.decide(self.attempt, self.failure):
            return self._restart(self.failure.describe())
        if self.spec.max_restarts and self.attempt >= self.spec.max_restarts and \
                self.failure.kind is not Kind.INTERRUPTED:
            restarts = "restart" if self.spec.max_restarts == 1 else "restarts"
            say(f"giving up after {self.spec.max_restarts} {restarts}: {self.failure.describe()}")
        self.code = self.failure.exit_code()
        return State.STOPPED

    def _restart(self, why):
        self.attempt += 1
        resume = ("; the workers resume from the newest checkpoint" if self.spec.checkpoint_dir else
                  ", from the start: no checkpoint directory (with --checkpoint-dir the workers would resume)")
        say(f"restarting the job ({self.attempt} of {self.spec.max_restarts} restarts) after {why}{resume}")
        return State.STARTING
