"""Cheap, always-on step timing per phase for any training loop, and an optional Chrome-trace timeline of every rank.

Each step is split into data wait, forward, backward (its compute), exposed
communication (what backward's thread waited for the allreduces) and optimizer. The wrapper
that runs the model (DistributedDataParallel, or the Trainer on one process)
tells a ``PhaseRecorder`` where each step begins and where its backward ended (DDP at the
end of its backward pass, which also says when that pass began: ``engine.pass_started``),
the end of ``optimizer.step()`` is seen by a step hook of every optimizer, so a plain loop
is timed as well as the Trainer's. The per-rank means name the slowest rank and the phase
where it loses most when the ranks' busy times differ by more than 20%
(``uneven``). With ``DISTDL_TIMELINE=file.json`` every phase, every gradient
bucket's allreduce and the Trainer's epochs and evaluations also become events on
one wall clock, all ranks in one file (chrome://tracing or ui.perfetto.dev), written
by rank 0 when the communicator closes (``dl.shutdown()`` or the end of the script)
and at the end of each ``Trainer.fit``.
"""

import collections
import json
import operator
import os
import sys
import time
import weakref

import numpy as np

from distdl.optim.optimizer import register_optimizer_step_post_hook

PHASES = ("data", "forward", "backward", "communication", "optimizer")
LANES = PHASES + ("allreduce", "trainer")  # one row per lane and rank in the trace
UNEVEN = 1.2  # ranks whose busy time per step differs by more than this factor are reported...
NOTICEABLE_SECONDS = 1e-3  # ...and by at least this much: below it the difference is noise, not a cause
RECENT_STEPS = 100  # what ddp.timings() averages over
MAX_EVENTS = 200_000  # per rank; the oldest go first, so a long run's file stays openable


class Timeline:
    """This process's timeline events for ``DISTDL_TIMELINE``; ``write`` gathers every rank's into one Chrome trace.

    An event is a row of numbers (its number, its name's index, start and duration in microseconds, lane), so a
    long run's rows travel as one array; only the Trainer's few marks carry figures of their own (``args``).
    """

    def __init__(self, path):
        self.path = path
        self.rows = collections.deque(maxlen=MAX_EVENTS)
        self.names = {}  # name -> its index
        self.args = {}  # an event's number -> its figures
        self.added = 0
        self._attached = weakref.WeakSet()
        self._written = None  # how many events every rank had added at the last write

    def add(self, name, start, end, lane, args=None):
        if args:
            self.args[self.added] = args
        self.rows.append((self.added, self.names.setdefault(name, len(self.names)), start * 1e6,
                          (end - start) * 1e6, LANES.index(lane)))
        self.added += 1

    def attach(self, comm):
        """Write the trace when ``comm`` closes in good order (every rank closes alike: the gather is safe there)."""
        if comm not in self._attached:
            self._attached.add(comm)
            comm.on_close(lambda: self.write(comm))

    def write(self, comm):
        """Collective: every rank's events to rank 0, which writes the file and says so in one line (unless nothing
        happened since its last write: after ``fit``, the close finds the same)."""
        rows = np.array(self.rows, np.float64).reshape(-1, 5)
        first = rows[0, 0] if len(rows) else self.added
        self.args = {number: args for number, args in self.args.items() if number >= first}
        everyone = comm.allgather_json([list(self.names), {str(n): a for n, a in self.args.items()}, self.added])
        all_rows = comm.allgather_ragged(rows)
        added = [count for _, _, count in everyone]
        if comm.rank != 0 or added == self._written:
            return
        events = [{"name": "thread_name", "ph": "M", "pid": r, "tid": t, "args": {"name": name}}
                  for r in range(comm.size) for t, name in enumerate(LANES)]
        events += [{"name": "process_name", "ph": "M", "pid": r, "args": {"name": f"rank {r}"}}
                   for r in range(comm.size)]
        for rank, ((names, figures, _), mine) in enumerate(zip(everyone, all_rows)):
            for number, name, ts, dur, lane in mine.tolist():
                event = {"name": names[int(name)], "ph": "X", "ts": ts, "dur": dur, "pid": rank, "tid": int(lane)}
                if str(int(number)) in figures:
                    event["args"] = figures[str(int(number))]
                events.append(event)
        try:
            with open(self.path + ".tmp", "w") as f:  # whole or absent: a reader never opens half a trace
                f.write(json.dumps({"traceEvents": events, "displayTimeUnit": "ms"}))
            os.replace(self.path + ".tmp", self.path)
        except OSError as exc:
            print(f"distdl: the timeline could not be written to {self.path}: {exc}", file=sys.stderr, flush=True)
            return
        self._written = added
        spans = sum(len(mine) for mine in all_rows)
        note = f"; the oldest {sum(added) - spans} were dropped (at most {MAX_EVENTS} per rank)" \
            if sum(added) > spans else ""
        print(f"distdl: timeline of {comm.size} rank{'s' * (comm.size > 1)} ({spans} events{note}) "
              f"written to {self.path}", flush=True)


_timeline = None


def timeline():
    """The process's Timeline when ``DISTDL_TIMELINE`` names a file, else None."""
    global _timeline
    path = os.environ.get("DISTDL_TIMELINE")
    if not path:
        return None
    if _timeline is None or _timeline.path != path:
        _timeline = Timeline(path)
    return _timeline


class StepTimer:
    """Per-phase seconds of each step: summed since ``reset()`` (the Trainer's epoch) and kept for the recent steps."""

    def __init__(self, recent=RECENT_STEPS):
        self.timeline = timeline()
        self.recent = collections.deque(maxlen=recent)  # each step's seconds per phase, in PHASES' order
        self.reset()

    def reset(self):
        self.totals = [0.0] * len(PHASES)
        self.steps = 0

    def add_step(self, bounds):
        """One step, ``bounds`` its phases' edges (time.time() seconds) in PHASES' order: data (None where the
        last step's end is unknown), forward, backward, communication, optimizer and the step's end."""
        known = bounds[0] is not None
        edges = bounds if known else (bounds[1],) + bounds[1:]  # an unknown data phase counts as none
        seconds = tuple(map(operator.sub, edges[1:], edges))  # each step pays this: maps, not loops
        self.totals = list(map(operator.add, self.totals, seconds))
        self.recent.append(seconds)
        self.steps += 1
        if self.timeline is not None:
            for phase, start, end in list(zip(PHASES, edges, edges[1:]))[not known:]:
                self.timeline.add(phase, start, end, phase)

    def add_allreduce(self, index, start, end, nbytes):
        """A bucket's allreduce on the timeline (only with one: the caller looks, saving a call per bucket)."""
        self.timeline.add(f"allreduce bucket {index} ({nbytes / 2 ** 20:.2f} MiB)", start, end, "allreduce")

    def mark(self, name, start, end, args=None):
        """An event of the Trainer's own lane (an epoch, an evaluation), with ``args`` shown beside it."""
        if self.timeline is not None:
            self.timeline.add(name, start, end, "trainer", args)

    def means(self):
        """Mean seconds per step of each phase since ``reset()``."""
        return {phase: total / max(self.steps, 1) for phase, total in zip(PHASES, self.totals)}

    def recent_means(self):
        """Mean seconds per step of each phase over the recent steps, and how many steps that is."""
        steps = max(len(self.recent), 1)
        sums = [sum(column) for column in zip(*self.recent)] or [0.0] * len(PHASES)
        return {**{phase: total / steps for phase, total in zip(PHASES, sums)}, "steps": len(self.recent)}

    def summary(self, comm):
        """Collective: the ``uneven`` sentence for every rank's means since ``reset()``, or None."""
        return uneven(comm.allgather_json(self.means()))

    def write_timeline(self, comm):
        if self.timeline is not None:
            self.timeline.write(comm)


def uneven(everyone):
    """'rank 1 is 35% slower than rank 0, mostly in data: ...' from every rank's phase means, or None when the
    ranks' steps are within 20%.

    A rank's busy time is its step without the communication wait: waiting is what
    the others' slowness looks like on a rank, not a cause. Ranks without a step are left out.
    """
    busy = {r: sum(m[p] for p in PHASES if p != "communication") for r, m in enumerate(everyone)
            if m.get("steps", 1) and any(m[p] for p in PHASES)}
    if len(busy) < 2:
        return None
    slow, fast = max(busy, key=busy.__getitem__), min(busy, key=busy.__getitem__)
    if busy[slow] <= UNEVEN * busy[fast] or busy[slow] - busy[fast] < NOTICEABLE_SECONDS:
        return None
    phase = max((p for p in PHASES if p != "communication"), key=lambda p: everyone[slow][p] - everyone[fast][p])
    return (f"rank {slow} is {busy[slow] / busy[fast] - 1:.0%} slower than rank {fast}, mostly in {phase}: "
            f"{1e3 * everyone[slow][phase]:.1f} ms per step against {1e3 * everyone[fast][phase]:.1f} ms")


class PhaseRecorder:
    """The phases of each step (one forward and its backward) of any loop, for the wrapper that runs the model.

    The wrapper calls ``forward_begins()`` before the model, and ``backward_ended(start, wait,
    allreduces)`` once its backward (begun at ``start``) is over and, under
    DistributedDataParallel, its buckets averaged. forward runs from the call to the start of
    the backward pass (the loss included); backward is its compute; communication the time
    backward's thread waited for the allreduces (in the trace, at the end of backward: the
    allreduce lane shows when they ran); optimizer from there to the end of ``optimizer.step()``;
    data from that to the next forward (the next batch and whatever else the loop does). A
    step without an optimizer step (``no_sync()`` accumulation) ends at its backward.
    """

    def __init__(self, comm):
        self.comm = comm
        self.timer = StepTimer()
        if self.timer.timeline is not None:
            self.timer.timeline.attach(comm)
        ref = weakref.ref(self)  # the hook must not keep the recorder alive

        def stepped(optimizer, args, kwargs):  # every optimizer's step ends here: the end of a step
            recorder = ref()
            if recorder is not None and recorder._backward_end is not None:
                recorder._close(time.time())

        weakref.finalize(self, register_optimizer_step_post_hook(stepped).remove)
        self._last_end = None  # where the last step ended: the next one's data wait starts there
        self._clear()

    def _clear(self):
        self._forward_start = self._backward_start = self._backward_end = self._sync_end = None
        self._wait, self._allreduces = 0.0, ()

    def forward_begins(self):
        now = time.time()
        if self._backward_end is not None:  # the last step had no optimizer step
            self._close(None)
        self._clear()
        self._forward_start = now

    def backward_ended(self, start, wait=0.0, allreduces=()):
        """The step's backward pass, begun at ``start``, is over: its thread then waited ``wait`` s for the
        allreduces in all; ``allreduces``: (bucket, start, end, bytes) of each bucket, a list the caller no longer
        changes. A step of two passes (``retain_graph``) runs from the first's start to the second's end, its
        waits and allreduces those of both."""
        now = time.time()
        if self._backward_start is None:
            self._backward_start, self._wait, self._allreduces = start, wait, allreduces
        else:
            self._wait += wait
            if allreduces:
                self._allreduces = [*self._allreduces, *allreduces]
        self._backward_end, self._sync_end = now - self._wait, now

    def _close(self, end):
        timer = self.timer
        if self._forward_start is not None and self._backward_start is not None:
            end = self._sync_end if end is None else end
            last = self._last_end if self._last_end is not None and self._last_end <= self._forward_start else None
            timer.add_step((last, self._forward_start, self._backward_start, self._backward_end, self._sync_end, end))
            if timer.timeline is not None:
                for allreduce in self._allreduces:
                    timer.add_allreduce(*allreduce)
            self._last_end = end
        self._clear()

    def reset(self):
        """A new epoch: the sums start again, and the first step's data wait from now."""
        self.timer.reset()
        self._last_end = time.time()

    def timings(self, all_ranks=False):
        """This rank's mean seconds per phase over its recent steps (and ``steps``: how many); with ``all_ranks``
        (collective) every rank's, in rank order, under ``ranks``, and under ``uneven`` which rank is slower and in
        which phase (None when they are within 20%)."""
        mine = self.timer.recent_means()
        if not all_ranks:
            return mine
        everyone = self.comm.allgather_json(mine)
        return {"ranks": everyone, "uneven": uneven(everyone)}
