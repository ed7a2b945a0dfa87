"""Step timing and the timeline of a plain DDP loop (no Trainer), under distdl-run: a Chrome trace with every
rank's phases and bucket allreduces, ``ddp.timings()`` that add up to the loop's wall time and name the slow rank.

The worker (workers/timeline_loop.py) gives the phases known lengths: the model's forward sleeps, rank 1
sleeps before each batch, so rank 0 waits for it at the end of each backward."""

import json
import os
import re
import time

import numpy as np
import pytest

import distdl as dl
from distdl import nn, optim
from distdl.timing import LANES, PHASES, PhaseRecorder, uneven
from multiproc import WORKERS
from test_launch_conventions import distdl_run

STEPS, FORWARD_SLEEP, DATA_SLEEP, BUCKETS = 12, 0.004, 0.03, 3  # as in the worker


@pytest.fixture(scope="module", params=[("mpi", "shutdown"), ("zmq", "exit")], ids=["mpi-shutdown", "zmq-exit"])
def plain_loop(request, tmp_path_factory):
    """One 2-rank run of the plain loop, the trace written by dl.shutdown() or at the end of the script: its
    output, the trace, and what each rank wrote."""
    backend, end = request.param
    out = tmp_path_factory.mktemp(f"timeline-{backend}")
    trace = out / "trace.json"
    result = distdl_run("-n", 2, "--backend", backend, WORKERS / "timeline_loop.py", out, end, timeout=120,
                        env=dict(os.environ, DISTDL_TIMELINE=str(trace)))
    assert result.returncode == 0, result.stdout + result.stderr
    ranks = [json.loads((out / f"rank-{r}.json").read_text()) for r in (0, 1)]
    return result, json.loads(trace.read_text()), ranks


def test_a_plain_ddp_loop_writes_one_chrome_trace_with_every_rank_phase_and_bucket(plain_loop):
    result, trace, ranks = plain_loop
    assert f"distdl: timeline of 2 ranks ({len(trace['traceEvents']) - 2 * len(LANES) - 2} events) written to" \
        in result.stdout
    names = {(e["pid"], e["args"]["name"]) for e in trace["traceEvents"] if e["name"] == "process_name"}
    assert names == {(0, "rank 0"), (1, "rank 1")}
    spans = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert all(isinstance(e["ts"], float) and e["dur"] >= 0 and e["tid"] < len(LANES) for e in spans)
    for rank in (0, 1):
        mine = sorted((e for e in spans if e["pid"] == rank), key=lambda e: e["ts"])
        phases = [e for e in mine if e["name"] in PHASES]
        # the first step has no data wait; then each step is data, forward, backward, communication, optimizer
        assert [e["name"] for e in phases] == list(PHASES[1:]) + list(PHASES) * (STEPS - 1)
        for before, after in zip(phases, phases[1:]):  # back to back on one clock: nothing lost, nothing twice
            assert after["ts"] == pytest.approx(before["ts"] + before["dur"], abs=1.0)  # microseconds
        allreduces = [e for e in mine if e["name"].startswith("allreduce bucket")]
        assert len(allreduces) == STEPS * BUCKETS and {e["tid"] for e in allreduces} == {LANES.index("allreduce")}
        assert sorted({int(re.match(r"allreduce bucket (\d+) \(", e["name"])[1]) for e in allreduces}) == \
            list(range(BUCKETS))
        forwards = [e for e in phases if e["name"] == "forward"]
        ends = [e["ts"] + e["dur"] for e in phases if e["name"] == "communication"]
        for e in allreduces:  # each within its step: after that step's forward began, done when its wait ended
            step = max(i for i, f in enumerate(forwards) if f["ts"] <= e["ts"])
            assert e["ts"] + e["dur"] <= ends[step] + 1.0
        for phase in PHASES:  # the trace and ddp.timings() tell the same story
            total = sum(e["dur"] for e in phases if e["name"] == phase) / 1e6
            assert total / STEPS == pytest.approx(ranks[rank]["timings"][phase], rel=1e-6, abs=1e-9)


def test_ddp_timings_add_up_to_the_wall_time_and_name_the_slow_rank_and_phase(plain_loop):
    _, _, ranks = plain_loop
    for rank, seen in enumerate(ranks):
        timings = seen["timings"]
        assert timings["steps"] == STEPS and all(timings[p] >= 0 for p in PHASES)
        accounted = STEPS * sum(timings[p] for p in PHASES)
        # the loop from its first forward, all but microseconds at its ends (a loaded machine may stall there)
        assert seen["wall"] - 0.05 <= accounted <= seen["wall"], (accounted, seen)
        assert timings["forward"] >= FORWARD_SLEEP
    slow, fast = ranks[1]["timings"], ranks[0]["timings"]
    assert slow["data"] >= DATA_SLEEP * (STEPS - 1) / STEPS and fast["data"] < DATA_SLEEP / 3
    # the fast rank waits for the slow one's gradients at the end of backward: exposed communication
    assert fast["communication"] >= DATA_SLEEP / 2 > slow["communication"]
    everyone = ranks[0]["all_ranks"]
    assert everyone["ranks"] == [fast, slow]
    assert everyone["uneven"].startswith("rank 1 is ") and "slower than rank 0, mostly in data: " in everyone["uneven"]


def test_uneven_leaves_out_ranks_without_steps_and_is_quiet_within_20_percent():
    step = dict.fromkeys(PHASES, 0.0)
    same = [dict(step, forward=0.010, steps=5), dict(step, forward=0.011, steps=5)]
    assert uneven(same) is None
    idle = dict(step, steps=0)
    assert uneven([dict(step, forward=0.010, steps=5), idle]) is None  # nothing to compare with, no division by 0
    slower = [dict(step, forward=0.010, steps=5), idle, dict(step, forward=0.010, optimizer=0.02, steps=5)]
    assert uneven(slower) == "rank 2 is 200% slower than rank 0, mostly in optimizer: 20.0 ms per step against 0.0 ms"


def test_accumulation_steps_end_at_their_backward_and_forwards_without_backward_are_no_steps():
    model = nn.Linear(4, 2)
    ddp = dl.DistributedDataParallel(model)  # a world of one: the recorder is the same
    opt = optim.SGD(ddp.parameters(), lr=0.1)
    x = dl.tensor(np.ones((3, 4), np.float32))
    with dl.no_grad():
        ddp(x)  # evaluation: no backward follows, no step
    with ddp.no_sync():
        for _ in range(2):
            ddp(x).sum().backward()
    ddp(x).sum().backward()
    opt.step()
    steps = [dict(zip(PHASES, seconds)) for seconds in ddp.phases.timer.recent]
    assert len(steps) == ddp.timings()["steps"] == 3
    assert [s["optimizer"] for s in steps[:2]] == [0.0, 0.0] and steps[2]["optimizer"] > 0
    assert all(s["forward"] > 0 and s["backward"] > 0 for s in steps)


def test_a_step_of_two_backward_passes_keeps_the_first_pass_wait_and_allreduces(tmp_path, monkeypatch):
    """retain_graph: a synced pass that waited, then a local one; the step's communication is the first's wait."""
    monkeypatch.setenv("DISTDL_TIMELINE", str(tmp_path / "trace.json"))
    recorder = PhaseRecorder(dl.get_comm())
    recorder.forward_begins()
    first = time.time()
    time.sleep(0.03)
    recorder.backward_ended(first, wait=0.02, allreduces=[(0, first + 0.01, first + 0.03, 8)])
    second = time.time()
    time.sleep(0.01)
    recorder.backward_ended(second)
    optim.SGD([dl.tensor(np.ones(2, np.float32), requires_grad=True)], lr=0.1).step()  # any optimizer's step ends it
    step = dict(zip(PHASES, recorder.timer.recent[-1]))
    assert step["communication"] == pytest.approx(0.02, abs=1e-6)
    assert step["backward"] >= 0.02  # the first pass's 0.01 s of compute and the second's 0.01 s
    recorder.timer.write_timeline(dl.get_comm())  # (at exit it then finds nothing new to write)
    events = json.loads((tmp_path / "trace.json").read_text())["traceEvents"]
    assert [e["name"] for e in events if e.get("tid") == LANES.index("allreduce") and e["ph"] == "X"] == \
        ["allreduce bucket 0 (0.00 MiB)"]


def test_the_trainer_alone_records_one_step_per_batch():
    x = np.random.default_rng(0).standard_normal((40, 4)).astype(np.float32)
    trainer = dl.Trainer(nn.Sequential(nn.Linear(4, 2)), "sgd", loss="mse")
    trainer.fit(x, np.zeros((40, 2), np.float32), batch_size=8, epochs=1, verbose=False)
    assert trainer.ddp is None and trainer.timer.steps == 5
    assert all(trainer.timer.means()[p] > 0 for p in ("data", "forward", "backward", "optimizer"))
    assert trainer.timer.means()["communication"] == 0
