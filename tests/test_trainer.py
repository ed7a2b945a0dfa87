"""The Trainer: exact reduced metrics over real ranks, resume after a crash with the same history, callbacks,
the step-timing summary and the timeline."""

import csv
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import distdl as dl
from distdl import nn, optim
from distdl.callbacks import EarlyStopping, HistoryLogger
from distdl.data import TensorDataset, load_digits, random_split
from distdl.timing import LANES
from multiproc import WORKERS, run


@pytest.mark.parametrize("backend", ["mpi", "zmq"])
def test_evaluate_and_predict_over_three_ranks_equal_the_whole_data_in_one_process(backend):
    result = run(backend, 3, "trainer_job.py", "exact", timeout=120)
    assert result.ok(), str(result)
    assert "".join(result.outputs).count("exact ok") == 3


@pytest.mark.parametrize("backend", ["mpi", "zmq"])
def test_a_nan_loss_is_named_with_rank_and_step_or_skipped_on_every_rank_and_counted(backend):
    stopped = run(backend, 2, "trainer_job.py", "nanloss", timeout=60)
    assert not stopped.ok()
    assert re.search(r"NonFiniteLossError: rank 1: the loss is nan at step 3 \(batch 3 ", "".join(stopped.outputs))
    skipped = run(backend, 2, "trainer_job.py", "nanloss", "--policy", "skip", timeout=60)
    assert skipped.ok(), str(skipped)
    assert "".join(skipped.outputs).count("nanloss ok") == 2
    assert re.search(r"epoch 1/1 .* skipped 1 non-finite step\n", "".join(skipped.outputs)), str(skipped)


@pytest.mark.parametrize("backend", ["mpi", "zmq"])
def test_uneven_shards_without_padding_finish_with_identical_replicas(backend):
    result = run(backend, 2, "trainer_job.py", "padless", timeout=60)
    assert result.ok(), str(result)
    assert "".join(result.outputs).count("padless ok") == 2


def launch(*args, env=None):
    return subprocess.run([sys.executable, "-m", "launcher", *map(str, args)], capture_output=True, text=True,
                          timeout=180, env=env)


def history_of(output):
    return json.loads(re.search(r"history (\{.*\})", output).group(1))


def test_a_crash_mid_epoch_and_a_restart_give_the_history_of_an_uninterrupted_run(tmp_path):
    plain = launch("-n", 2, "--backend", "zmq", "--checkpoint-dir", tmp_path / "a", WORKERS / "trainer_job.py",
                   "resume")
    assert plain.returncode == 0, plain.stderr
    crashed = launch("-n", 2, "--backend", "zmq", "--checkpoint-dir", tmp_path / "b", "--max-restarts", 1,
                     WORKERS / "trainer_job.py", "resume", "--crash-at", 13)
    assert crashed.returncode == 0, crashed.stderr
    assert "resumed from step 12 (epoch 2, part way)" in crashed.stdout
    assert history_of(crashed.stdout) == history_of(plain.stdout)  # exactly, float for float


def test_the_epoch_summary_names_the_slow_rank_and_the_timeline_holds_every_rank(tmp_path):
    timeline = tmp_path / "trace.json"
    result = launch("-n", 2, "--backend", "zmq", WORKERS / "trainer_job.py", "uneven",
                    env=dict(os.environ, DISTDL_TIMELINE=str(timeline)))
    assert result.returncode == 0, result.stderr
    assert re.search(r"uneven ranks: rank 1 is \d+% slower than rank 0, mostly in data: [\d.]+ ms per step "
                     r"against [\d.]+ ms", result.stdout), result.stdout
    events = json.loads(timeline.read_text())["traceEvents"]
    spans = [e for e in events if e["ph"] == "X"]
    assert {e["pid"] for e in spans} == {0, 1}
    assert {"data", "forward", "backward", "communication", "optimizer"} <= {e["name"] for e in spans}
    assert any(e["name"].startswith("allreduce bucket 0") for e in spans)
    steps = 2 * 5  # 2 epochs of 75 samples per rank in batches of 16
    for rank in (0, 1):  # each phase once per step: the Trainer and DDP record into one timer
        assert sorted(e["name"] for e in spans if e["pid"] == rank and e["name"] in ("forward", "optimizer")) == \
            ["forward"] * steps + ["optimizer"] * steps
        lane = sorted((e for e in spans if e["pid"] == rank and e["tid"] == LANES.index("trainer")),
                      key=lambda e: e["name"])
        assert [e["name"] for e in lane] == ["epoch 1", "epoch 2", "evaluate", "evaluate"]
        marks = {e["name"]: e for e in lane}
        for epoch in ("epoch 1", "epoch 2"):  # an epoch spans its steps and its evaluation, its figures beside it
            assert {"loss", "accuracy", "val_loss", "val_accuracy", "lr"} <= set(marks[epoch]["args"])
        evaluations = sorted(lane[2:], key=lambda e: e["ts"])
        assert all({"loss", "accuracy"} <= set(e["args"]) for e in evaluations)
        for epoch, evaluation in zip(("epoch 1", "epoch 2"), evaluations):
            start, end = marks[epoch]["ts"], marks[epoch]["ts"] + marks[epoch]["dur"]
            assert start < evaluation["ts"] and evaluation["ts"] + evaluation["dur"] <= end


def digits():
    dl.seed(0)
    return random_split(TensorDataset(*load_digits(flatten=True)), [0.8, 0.2], seed=0)


def mlp():
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def test_fit_learns_and_keeps_a_keras_like_history(tmp_path, capsys):
    train, test = digits()
    model = mlp()
    optimizer = optim.Adam(model.parameters(), lr=0.01)
    scheduler = optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    trainer = dl.Trainer(model, optimizer, loss=nn.CrossEntropyLoss(), metrics=["accuracy", "top3_accuracy"],
                         scheduler=scheduler)
    history = trainer.fit(train, epochs=4, batch_size=32, validation_data=test,
                          callbacks=[HistoryLogger(tmp_path / "h.csv"), HistoryLogger(tmp_path / "h.json")])
    assert history.epoch == [0, 1, 2, 3]
    assert set(history.history) == {"loss", "accuracy", "top3_accuracy", "val_loss", "val_accuracy",
                                    "val_top3_accuracy"}
    assert history["val_accuracy"][-1] > 0.9 and history["loss"][-1] < history["loss"][0]
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01 / 16)
    assert "epoch 4/4" in capsys.readouterr().out  # not a terminal: one line per epoch
    rows = list(csv.reader(open(tmp_path / "h.csv")))
    assert rows[0][:2] == ["epoch", "loss"] and len(rows) == 5
    assert json.loads((tmp_path / "h.json").read_text())["val_accuracy"] == history["val_accuracy"]
    assert trainer.evaluate(test)["accuracy"] == pytest.approx(history["val_accuracy"][-1])
    predictions = trainer.predict(test.dataset.arrays[0][test.indices])
    assert predictions.shape == (len(test), 10)


def test_early_stopping_stops_when_the_monitored_figure_stalls():
    train, test = digits()
    model = mlp()
    trainer = dl.Trainer(model, optim.SGD(model.parameters(), lr=0.0), loss=nn.CrossEntropyLoss())
    stopper = EarlyStopping(monitor="val_loss", patience=1)
    history = trainer.fit(train, epochs=10, batch_size=64, validation_data=test, callbacks=[stopper], verbose=False)
    assert len(history.epoch) == 2 and stopper.stopped_epoch == 1  # lr 0: no improvement after the first epoch
    with pytest.raises(KeyError, match="monitors 'val_accuracy' but the logs hold"):
        trainer.fit(train, epochs=1, callbacks=[EarlyStopping("val_accuracy")], verbose=False)


def test_binary_problems_get_probabilities_for_their_metrics():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 3)).astype(np.float32)
    y = (x[:, :1] > 0).astype(np.float32)
    model = nn.Linear(3, 1)
    trainer = dl.Trainer(model, optim.SGD(model.parameters(), lr=0.5), loss=nn.BCEWithLogitsLoss(),
                         metrics=["accuracy", "auc"])
    history = trainer.fit((x, y), epochs=5, batch_size=20, verbose=False)
    assert history["accuracy"][-1] > 0.9 and history["auc"][-1] > 0.95


@pytest.mark.parametrize("policy", ["error", "skip"])
def test_alone_a_nan_loss_is_named_before_backward_or_its_step_skipped(policy, capsys):
    x = np.random.default_rng(0).standard_normal((64, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    x[20, 1] = np.nan  # batch 3 of 8
    model = nn.Linear(3, 2)
    trainer = dl.Trainer(model, optim.SGD(model.parameters(), lr=0.1), loss=nn.CrossEntropyLoss(), nonfinite=policy)
    if policy == "error":
        with pytest.raises(dl.parallel.NonFiniteLossError, match="rank 0: the loss is nan at step 3 "):
            trainer.fit((x, y), epochs=1, batch_size=8, shuffle=False)
        return
    history = trainer.fit((x, y), epochs=1, batch_size=8, shuffle=False)
    assert trainer.skipped_steps == 1 and trainer.global_step == 8
    assert np.isfinite(history["loss"][0]) and all(np.isfinite(p.data).all() for p in model.parameters())
    assert "skipped 1 non-finite step" in capsys.readouterr().out


def test_unknown_metric_names_fail_at_construction():
    model = mlp()
    with pytest.raises(ValueError, match="unknown metric 'acc'"):
        dl.Trainer(model, optim.SGD(model.parameters(), lr=0.1), loss=nn.CrossEntropyLoss(), metrics=["acc"])


def steps_logged(prefix):
    """Every step a run's ranks logged (trainer_job.py reshape), as dicts."""
    return [json.loads(line) for path in sorted(prefix.parent.glob(prefix.name + ".*"))
            for line in path.read_text().splitlines()]


def course(*attempts):
    """The data order (global position -> sample id) and the lr per worker at each sample count over attempts,
    a later attempt's steps replacing those an earlier one took after its last checkpoint."""
    order, lr = {}, {}
    for steps in attempts:
        for step in steps:
            order.update(zip(step["positions"], step["ids"]))
            lr[step["samples"]] = step["lr"] / step["world"]
    return order, lr


@pytest.mark.parametrize("before, after", [(2, 1), (1, 2)])
def test_a_resume_on_another_world_size_keeps_the_data_order_and_the_lr_at_each_sample_count(tmp_path, before, after):
    reference = launch("-n", 1, "--backend", "zmq", "--checkpoint-dir", tmp_path / "plain", WORKERS / "trainer_job.py",
                       "reshape", "--steps-log", tmp_path / "plain")
    assert reference.returncode == 0, reference.stderr
    crashed = launch("-n", before, "--backend", "zmq", "--checkpoint-dir", tmp_path / "ckpt",
                     WORKERS / "trainer_job.py", "reshape", "--steps-log", tmp_path / "first", "--crash-at", 5)
    assert crashed.returncode != 0 and "crash at step 5" in crashed.stdout + crashed.stderr
    resumed = launch("-n", after, "--backend", "zmq", "--checkpoint-dir", tmp_path / "ckpt",
                     WORKERS / "trainer_job.py", "reshape", "--steps-log", tmp_path / "then")
    assert resumed.returncode == 0, resumed.stderr
    samples = 4 * 8 * before  # the checkpoint of step 4
    assert (f"the world size changed from {before} to {after}: the data continue at sample {samples}; "
            f"lr rescaled linearly to 0.05 x {after}\n") in resumed.stdout, resumed.stdout
    order, lr = course(steps_logged(tmp_path / "first"), steps_logged(tmp_path / "then"))
    plain_order, plain_lr = course(steps_logged(tmp_path / "plain"))
    assert len(plain_order) == 2 * 96 and order == plain_order
    assert set(lr) <= set(plain_lr) and len(lr) >= 2 * 96 // 16
    for count, value in lr.items():  # the curve in samples, per worker: the linear rule times the world size
        assert value == pytest.approx(plain_lr[count], rel=1e-12, abs=1e-15), count
    pids = {step["pid"] for prefix in ("plain", "first", "then") for step in steps_logged(tmp_path / prefix)}
    assert len(pids) == 1 + before + after and not [pid for pid in pids if os.path.exists(f"/proc/{pid}")]


def test_a_schedule_counted_in_steps_resumed_on_another_world_size_is_named_as_changing_its_curve(tmp_path):
    job = [WORKERS / "trainer_job.py", "reshape", "--steps-log", tmp_path / "log", "--per", "batch"]
    crashed = launch("-n", 2, "--backend", "zmq", "--checkpoint-dir", tmp_path, *job, "--crash-at", 5)
    assert crashed.returncode != 0
    resumed = launch("-n", 1, "--backend", "zmq", "--checkpoint-dir", tmp_path, *job)
    assert resumed.returncode == 0, resumed.stderr
    assert ("lr rescaled linearly to 0.05 x 1; the schedule counts steps, which now hold another number of samples: "
            "count it in samples (scheduler_per='sample') to keep its curve\n") in resumed.stdout, resumed.stdout
