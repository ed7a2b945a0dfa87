"""Checkpoints: exact round trips, bit-identical resume, atomic writes, and named errors for bad files."""

import json
import os
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

import distdl as dl
from distdl import nn, optim
from distdl.checkpoint import read_checkpoint
from distdl.data import DataLoader, DistributedSampler, TensorDataset


def build():
    dl.seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))
    optimizer = optim.Adam(model.parameters(), lr=0.01)
    scheduler = optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.5)
    rng = np.random.default_rng(0)
    dataset = TensorDataset(rng.standard_normal((64, 5)).astype(np.float32), rng.integers(0, 3, 64))
    sampler = DistributedSampler(dataset, num_replicas=1, rank=0, seed=3)
    loader = DataLoader(dataset, batch_size=8, sampler=sampler)
    return model, optimizer, scheduler, sampler, loader


def train(model, optimizer, scheduler, sampler, loader, start, stop, save_at=None, manager=None):
    """Steps ``start`` to ``stop`` of a run over epochs of 8 batches (dropout draws from distdl's RNG)."""
    step = start
    while step < stop:
        sampler.set_epoch(step // 8)
        for x, y in loader:
            optimizer.zero_grad()
            nn.CrossEntropyLoss()(model(dl.tensor(x)), y).backward()
            optimizer.step()
            step += 1
            if step % 8 == 0:
                scheduler.step()
            if step == save_at:
                manager.save(step, model=model, optimizer=optimizer, scheduler=scheduler, sampler=loader, note="hi")
            if step == stop:
                return


def test_a_resumed_run_is_bit_identical_to_an_uninterrupted_one(tmp_path):
    reference = build()
    train(*reference, 0, 21)

    manager = dl.CheckpointManager(tmp_path)
    interrupted = build()
    train(*interrupted, 0, 13, save_at=13, manager=manager)  # mid-epoch: 13 = 8 + 5
    dl.seed(999)  # whatever happened after the save must not matter

    resumed = build()
    extra = manager.restore_latest(model=resumed[0], optimizer=resumed[1], scheduler=resumed[2], sampler=resumed[4])
    assert extra["step"] == 13 and extra["note"] == "hi" and extra["world_size"] == 1
    assert resumed[3].position == 5 * 8 and resumed[3].epoch == 1  # samples delivered in epoch 1
    train(*resumed, 13, 21)
    for p, q in zip(reference[0].state_dict().values(), resumed[0].state_dict().values()):
        np.testing.assert_array_equal(p, q)
    assert reference[1].param_groups[0]["lr"] == resumed[1].param_groups[0]["lr"]


def test_round_trip_of_every_part(tmp_path):
    model, optimizer, scheduler, sampler, loader = build()
    train(model, optimizer, scheduler, sampler, loader, 0, 3)
    path = tmp_path / "c.npz"
    dl.save_checkpoint(path, model=model, optimizer=optimizer, scheduler=scheduler, sampler=sampler, step=3, epoch=0,
                       table=np.arange(4.0), info={"a": [1, 2]})
    other = build()
    extra = dl.load_checkpoint(path, model=other[0], optimizer=other[1], scheduler=other[2], sampler=other[3])
    assert extra["epoch"] == 0 and extra["info"] == {"a": [1, 2]}
    np.testing.assert_array_equal(extra["table"], np.arange(4.0))
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(other[0].state_dict()[k], v)
        assert other[0].state_dict()[k].dtype == v.dtype
    assert other[2].state_dict() == scheduler.state_dict()
    with np.load(path, allow_pickle=False) as archive:  # a plain .npz: NumPy itself reads it, without pickles
        assert any(name.startswith("arrays/") for name in archive.files)


def saved(tmp_path):
    model = build()[0]
    path = tmp_path / "c.npz"
    dl.save_checkpoint(path, model=model, step=1)
    return path, model


def test_flipped_bytes_are_caught_by_the_manifest(tmp_path):
    path, model = saved(tmp_path)
    meta, _ = read_checkpoint(path)
    member = meta["manifest"]["model/4.weight"]["member"]
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(member)
        offset = info.header_offset + 30 + len(info.filename) + len(info.extra) + info.file_size - 4
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(dl.CheckpointCorruptError, match=r"c.npz: array 'model/4.weight'"):
        dl.load_checkpoint(path, model=model)


def test_truncated_foreign_newer_and_mismatched_checkpoints_are_named(tmp_path):
    path, model = saved(tmp_path)
    truncated = tmp_path / "t.npz"
    truncated.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(dl.CheckpointCorruptError, match="t.npz: not a readable checkpoint"):
        dl.load_checkpoint(truncated, model=model)

    foreign = tmp_path / "f.npz"
    np.savez(foreign, weight=np.zeros(3))
    with pytest.raises(dl.CheckpointError, match="f.npz: not a distdl checkpoint"):
        dl.load_checkpoint(foreign, model=model)

    newer = tmp_path / "n.npz"
    with zipfile.ZipFile(newer, "w") as archive:
        archive.writestr("meta.json", json.dumps({"format": "distdl-checkpoint", "format_version": 99,
                                                  "distdl_version": "9.0"}))
    with pytest.raises(dl.CheckpointError, match="n.npz: written in checkpoint format 99 .* upgrade distdl"):
        dl.load_checkpoint(newer, model=model)

    wider = nn.Sequential(nn.Linear(5, 17), nn.BatchNorm1d(17), nn.ReLU(), nn.Dropout(0.3), nn.Linear(17, 3))
    with pytest.raises(dl.CheckpointError, match=r"c.npz: does not fit the model: .*'0.weight' has shape \(16, 5\)"):
        dl.load_checkpoint(path, model=wider)
    with pytest.raises(dl.CheckpointError, match=r"missing keys \['2.weight'"):
        dl.load_checkpoint(path, model=nn.Sequential(nn.Linear(5, 16), nn.BatchNorm1d(16), nn.Linear(16, 3)))


def test_manager_keeps_the_newest_and_skips_damaged_and_temporary_files(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTDL_CHECKPOINT_DIR", str(tmp_path))
    manager = dl.CheckpointManager(keep=2)
    assert manager.latest() is None and manager.restore_latest(model=build()[0]) is None
    model = build()[0]
    for step in (10, 20, 30):
        manager.save(step, model=model)
    assert manager.steps() == [20, 30]
    (tmp_path / ".checkpoint-000000040.npz.tmp-1-abcd").write_bytes(b"partial")
    (tmp_path / "checkpoint-000000050.npz").write_bytes(b"garbage")
    assert manager.latest() == manager.path(30)
    with pytest.raises(ValueError, match="needs a directory"):
        monkeypatch.delenv("DISTDL_CHECKPOINT_DIR")
        dl.CheckpointManager()


WRITER = """
import sys, numpy as np, distdl as dl
from distdl import nn
model = nn.Linear(2000, 2000)
manager = dl.CheckpointManager(sys.argv[1], keep=2)
step = 0
while True:
    step += 1
    model.weight.data[...] = step
    manager.save(step, model=model)
    print(step, flush=True)
"""


def test_a_writer_killed_mid_write_leaves_a_complete_checkpoint(tmp_path):
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(3):
            writer.stdout.readline()  # a few checkpoints are in place
        time.sleep(0.05)
        os.kill(writer.pid, signal.SIGKILL)
    finally:
        writer.kill()
        writer.wait(timeout=30)
    manager = dl.CheckpointManager(tmp_path)
    model = nn.Linear(2000, 2000)
    extra = manager.restore_latest(model=model)
    assert extra["step"] >= 3 and np.all(model.weight.data == extra["step"])
    for name in os.listdir(tmp_path):
        assert manager._pattern.match(name) or ".tmp-" in name, name
