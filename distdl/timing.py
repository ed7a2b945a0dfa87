"""Cheap, always-on step timing per phase, and an optional Chrome-trace timeline of every rank.

Each training step is split into data wait, forward, backward (its compute),
exposed communication (what backward waited for at its end) and optimizer. The
per-rank means go into the epoch summary, which names the slowest rank and the
phase where it loses most when the ranks' busy times differ by more than 20%. With ``DISTDL_TIMELINE=file.json`` every phase
and every gradient bucket's allreduce also becomes an event on one wall clock, all
ranks in one file that chrome://tracing or ui.perfetto.dev opens.
"""

import json
import os

PHASES = ("data", "forward", "backward", "communication", "optimizer")
UNEVEN = 1.2  # ranks whose busy time per step differs by more than this factor are reported...
NOTICEABLE_SECONDS = 1e-3  # ...and by at least this much: below it the difference is noise, not a cause


class StepTimer:
    """Sums per phase over an epoch; records timeline events when a path is given."""

    def __init__(self, rank, timeline_path=None):
        self.rank = rank
        self.timeline_path = timeline_path if timeline_path is not None else os.environ.get("DISTDL_TIMELINE")
        self.events = []
        self.reset()

    def reset(self):
        self.totals = dict.fromkeys(PHASES, 0.0)
        self.steps = 0

    def add(self, phase, start, end):
        """Account ``phase`` from ``start`` to ``end`` (time.time() seconds)."""
        self.totals[phase] += end - start
        if self.timeline_path:
            self.events.append(_event(phase, start, end, self.rank, PHASES.index(phase)))

    def add_allreduce(self, index, start, end, nbytes):
        if self.timeline_path:
            self.events.append(_event(f"allreduce bucket {index} ({nbytes / 2 ** 20:.2f} MiB)", start, end,
                                      self.rank, len(PHASES)))

    def means(self):
        return {phase: total / max(self.steps, 1) for phase, total in self.totals.items()}

    def summary(self, comm):
        """'rank 1 is 35% slower than rank 0, mostly in data: ...', or None when the ranks' steps are within 20%.

        A rank's busy time is its step without the communication wait: waiting is what
        the others' slowness looks like on a rank, not a cause.
        """
        everyone = comm.allgather_json(self.means())
        busy = [sum(v for phase, v in m.items() if phase != "communication") for m in everyone]
        slow, fast = max(range(len(busy)), key=busy.__getitem__), min(range(len(busy)), key=busy.__getitem__)
        if busy[slow] <= UNEVEN * busy[fast] or busy[slow] - busy[fast] < NOTICEABLE_SECONDS:
            return None
        phase = max((p for p in PHASES if p != "communication"), key=lambda p: everyone[slow][p] - everyone[fast][p])
        return (f"rank {slow} is {busy[slow] / busy[fast] - 1:.0%} slower than rank {fast}, mostly in {phase}: "
                f"{1e3 * everyone[slow][phase]:.1f} ms per step against {1e3 * everyone[fast][phase]:.1f} ms")

    def write_timeline(self, comm):
        """Gather every rank's events; rank 0 writes the Chrome trace."""
        if not self.timeline_path:
            return
        everyone = comm.allgather_json(self.events)
        if comm.rank == 0:
            names = [{"name": "thread_name", "ph": "M", "pid": r, "tid": t, "args": {"name": name}}
                     for r in range(comm.size) for t, name in enumerate(PHASES + ("allreduce",))]
            names += [{"name": "process_name", "ph": "M", "pid": r, "args": {"name": f"rank {r}"}}
                      for r in range(comm.size)]
            with open(self.timeline_path, "w") as f:
                json.dump({"traceEvents": names + [e for events in everyone for e in events],
                           "displayTimeUnit": "ms"}, f)


def _event(name, start, end, rank, lane):
    return {"name": name, "ph": "X", "ts": start * 1e6, "dur": (end - start) * 1e6, "pid": rank, "tid": lane}
