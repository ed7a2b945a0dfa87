"""Checkpoints: exact round trips, bit-identical resume, atomic writes, named errors for bad files, and hostile
conditions: writers killed at random, hostile files beside intact ones, a damaged newest checkpoint under
distdl-run, two jobs on one directory."""

import importlib.util
import json
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import tracemalloc
import zipfile
import zlib

import numpy as np
import pytest

import distdl as dl
from distdl import nn, optim
from distdl.checkpoint import read_checkpoint
from distdl.data import DataLoader, DistributedSampler, TensorDataset
from multiproc import WORKERS, run_zmq
from workers.checkpoint_damage import flip_array_byte


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



def repack(source, target, meta=None, raw_meta=None, added=()):
    """A copy of checkpoint ``source`` at ``target`` with its meta.json replaced (and members ``added``), all stored."""
    with zipfile.ZipFile(source) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    members["meta.json"] = raw_meta if raw_meta is not None else json.dumps(meta).encode()
    members.update(dict.fromkeys(added, b"x"))
    with zipfile.ZipFile(target, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def deep(levels):
    return b'{"format": "distdl-checkpoint", "format_version": 1, "extra": ' + b"[" * levels + b"]" * levels + b"}"


def mutated(change):
    def apply(meta):
        change(meta)
        return meta
    return apply


MALFORMED = [  # (what, new meta.json from the genuine one's, the reason the error must give)
    ("bad JSON", lambda meta: b"{not json", "is not valid JSON"),
    ("200,000 levels of nesting", lambda meta: deep(200_000), "nests deeper"),
    ("100 levels of nesting", lambda meta: deep(100), "nests deeper than 64 levels"),
    ("a list as manifest", mutated(lambda m: m.update(manifest=[])), "has manifest of type list"),
    ("a missing member", mutated(lambda m: m.pop("rng")), r"has missing members \['rng'\]"),
    ("an extra member", mutated(lambda m: m.update(hidden=1)), r"has unexpected members \['hidden'\]"),
    ("a step that is text", mutated(lambda m: m.update(step="3")), "has step '3'"),
    ("no RNG state per rank", mutated(lambda m: m.update(world_size=2)), "one RNG state per rank"),
    ("an RNG state of nothing", mutated(lambda m: m["rng"][0].update(state="x")), "RNG state for rank 0 that does not"),
    ("a manifest entry that is a number", mutated(lambda m: m["manifest"].update({"model/0.bias": 7})),
     "manifest entry 'model/0.bias' of type int"),
    ("an object dtype", mutated(lambda m: m["manifest"]["model/0.bias"].update(dtype="|O")), "dtype '|O'"),
    ("a shape the member does not have", mutated(lambda m: m["manifest"]["model/0.bias"].update(shape=[17])),
     "'model/0.bias' has 192 bytes in the zip directory, but its shape \\[17\\] and dtype <f4 need 196"),
    ("a reference to no array", mutated(lambda m: m["model"].update({"0.bias": {"__array__": "nowhere"}})),
     "refers to array 'nowhere'"),
    ("a member path outside arrays/", mutated(lambda m: m["manifest"]["model/0.bias"].update(member="../x")),
     "names member '../x'"),
]


@pytest.mark.parametrize("what, change, reason", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_every_malformed_meta_json_is_a_corrupt_error_naming_file_and_reason(tmp_path, what, change, reason):
    path, model = saved(tmp_path)
    meta, _ = read_checkpoint(path)
    new = change(json.loads(json.dumps(meta)))
    bad = tmp_path / "bad.npz"
    repack(path, bad, raw_meta=new if isinstance(new, bytes) else json.dumps(new).encode())
    with pytest.raises(dl.CheckpointCorruptError, match=f"bad.npz: .*{reason}"):
        dl.load_checkpoint(bad, model=model)


def test_a_sampler_state_that_does_not_fit_is_a_checkpoint_error(tmp_path):
    model, optimizer, scheduler, sampler, loader = build()
    path = tmp_path / "c.npz"
    dl.save_checkpoint(path, model=model, sampler=sampler)
    meta, _ = read_checkpoint(path)
    repack(path, tmp_path / "bad.npz", dict(meta, sampler={"seed": "x"}))
    with pytest.raises(dl.CheckpointError, match="bad.npz: does not fit the sampler: invalid literal for int"):
        dl.load_checkpoint(tmp_path / "bad.npz", model=model, sampler=sampler)


def test_zip_members_must_match_the_manifest(tmp_path):
    path, model = saved(tmp_path)
    meta, _ = read_checkpoint(path)
    repack(path, tmp_path / "extra.npz", meta, added=["arrays/999999.npy"])
    with pytest.raises(dl.CheckpointCorruptError, match=r"extra.npz: .*not listed \['arrays/999999.npy'\]"):
        dl.load_checkpoint(tmp_path / "extra.npz", model=model)
    meta["manifest"]["model/9.weight"] = dict(meta["manifest"]["model/0.bias"], member="arrays/000099.npy")
    repack(path, tmp_path / "missing.npz", meta)
    with pytest.raises(dl.CheckpointCorruptError, match=r"missing.npz: .*missing \['arrays/000099.npy'\]"):
        dl.load_checkpoint(tmp_path / "missing.npz", model=model)


def test_a_meta_json_over_the_limit_is_refused_before_it_is_read(tmp_path):
    from distdl.checkpoint.archive import META_LIMIT
    path = tmp_path / "checkpoint-000000001.npz"
    with zipfile.ZipFile(path, "w") as archive, archive.open("meta.json", "w") as member:
        for _ in range(META_LIMIT // (1 << 20) + 1):
            member.write(b" " * (1 << 20))
    tracemalloc.start()
    with pytest.raises(dl.CheckpointCorruptError, match=f"its meta.json is {META_LIMIT + (1 << 20)} bytes, over"):
        dl.load_checkpoint(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1 << 20


def test_a_zip_directory_of_a_million_members_is_refused_before_it_is_parsed(tmp_path):
    path = tmp_path / "many.npz"
    record = b"PK\x06\x06" + struct.pack("<QHHIIQQQQ", 44, 45, 45, 0, 0, 10**6, 10**6, 0, 0)
    locator = b"PK\x06\x07" + struct.pack("<IQI", 0, 0, 1)
    path.write_bytes(record + locator + b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF,
                                                                   0xFFFFFFFF, 0))
    with pytest.raises(dl.CheckpointCorruptError, match="many.npz: its zip directory lists 1000000 members, more"):
        dl.load_checkpoint(path)


def test_temporary_files_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    from distdl.checkpoint.files import HOST
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        names = {"dead": f".checkpoint-000000002.npz.tmp-{HOST}-{dead_pid}-0123abcd",
                 "live": f".checkpoint-000000003.npz.tmp-{HOST}-{live.pid}-0123abcd",
                 "elsewhere": f".checkpoint-000000004.npz.tmp-other-host-{dead_pid}-0123abcd",
                 "mine": f".checkpoint-000000005.npz.tmp-{HOST}-{os.getpid()}-0123abcd"}
        for name in names.values():
            (tmp_path / name).write_bytes(b"partial")
        with dl.CheckpointManager(tmp_path) as manager:
            manager.save(1, model=nn.Linear(2, 2))
        left = set(os.listdir(tmp_path))
        assert names["dead"] not in left
        assert {names["live"], names["elsewhere"], names["mine"]} <= left
    finally:
        live.kill()
        live.wait(timeout=30)


def test_names_like_checkpoints_that_are_not_files_are_skipped_by_latest_and_rotation(tmp_path):
    (tmp_path / "checkpoint-5.npz").mkdir()
    with dl.CheckpointManager(tmp_path, keep=2) as manager:
        for step in (1, 2, 3):
            manager.save(step, model=nn.Linear(2, 2))
        assert sorted(os.listdir(tmp_path)) == [".distdl-checkpoint.lock", "checkpoint-000000002.npz",
                                                "checkpoint-000000003.npz", "checkpoint-5.npz"]
        assert manager.latest() == manager.path(3)


def test_a_lock_file_that_is_not_a_file_is_named(tmp_path):
    os.mkfifo(tmp_path / ".distdl-checkpoint.lock")
    with pytest.raises(dl.CheckpointError, match="lock file is not a regular file: remove it"):
        dl.CheckpointManager(tmp_path).save(1, model=nn.Linear(2, 2))


def test_twenty_kills_at_random_moments_of_20_mb_saves_never_lose_the_previous_checkpoint(tmp_path):
    """The issue's 200 MB saves made smaller (20 MB) to fit the suite; the writer dies anywhere in the save."""
    def write(step):
        return subprocess.Popen([sys.executable, str(WORKERS / "checkpoint_writer.py"), str(tmp_path), str(step)],
                                stdout=subprocess.PIPE, text=True)

    start = time.monotonic()
    writer = write(0)
    assert writer.stdout.readline() == "saving\n"
    begun = time.monotonic()
    assert writer.stdout.readline() == "saved\n"
    duration = first = time.monotonic() - begun  # of the save alone: the kills fall inside it
    assert writer.wait(timeout=60) == 0
    model, good, interrupted, step = nn.Linear(2500, 2000), 0, 0, 0
    rng = random.Random(16)
    while step < 20 or interrupted < 5:  # at least 20 kills, and 5 of them mid-write, whatever the load
        step += 1
        assert step <= 80, f"only {interrupted} of {step - 1} kills landed mid-write"
        writer = write(step)
        try:
            assert writer.stdout.readline() == "saving\n"
            time.sleep(rng.uniform(0, duration))
            writer.send_signal(signal.SIGKILL)
        finally:
            writer.kill()
            writer.wait(timeout=30)
        mid_write = any(".tmp-" in name for name in os.listdir(tmp_path))
        interrupted += mid_write
        with dl.CheckpointManager(tmp_path) as manager:
            state = manager.restore_latest(model=model)
        assert state["step"] in (good, step)  # the previous one, or the new one if the kill came after its rename
        if not mid_write:  # the kill came before the write began (a loaded machine) or after it ended: aim
            late = state["step"] == step  # later or earlier, within bounds, so the sleeps stay short
            duration = duration * 0.8 if late else min(duration * 1.2, 10 * first)
        good = state["step"]
        assert np.all(model.weight.data == good)
        assert not [name for name in os.listdir(tmp_path) if ".tmp-" in name]  # the dead writer's file is gone
    writer = write(step + 1)
    assert writer.wait(timeout=60) == 0
    assert not [name for name in os.listdir(tmp_path) if ".tmp-" in name]
    assert dl.CheckpointManager(tmp_path).steps()[-1] == step + 1
    assert time.monotonic() - start < 180


def handmade_zip(path, members):
    """A zip of members (name, chunk, count, deflated): the chunk repeated count times. Written by hand so a
    4 GiB deflated member costs no compression: after a full flush deflate emits the same bytes for the same
    chunk (its CRC is left 0: no reader should get that far). Stored members are written as they are."""
    with open(path, "wb") as f:
        directory = b""
        for name, chunk, count, deflated in members:
            if deflated:
                deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
                block, crc = deflate.compress(chunk) + deflate.flush(zlib.Z_FULL_FLUSH), 0
                blocks, tail = [block] * count, deflate.flush()
            else:
                blocks, tail, crc = [chunk * count], b"", zlib.crc32(chunk * count)
            size, packed = len(chunk) * count, sum(map(len, blocks)) + len(tail)
            offset, name = f.tell(), name.encode()
            sizes = struct.pack("<HHQQ", 1, 16, size, packed)  # the zip64 extra field holds both sizes
            fields = struct.pack("<HHHHHI", 45, 0, 8 if deflated else 0, 0, 0, crc) + struct.pack("<II", 2**32 - 1,
                                                                                                2**32 - 1)
            f.write(b"PK\x03\x04" + fields + struct.pack("<HH", len(name), len(sizes)) + name + sizes)
            for block in blocks:
                f.write(block)
            f.write(tail)
            directory += (b"PK\x01\x02" + struct.pack("<H", 45) + fields + struct.pack("<HHHHHII", len(name),
                          len(sizes), 0, 0, 0, 0, offset) + name + sizes)
        start = f.tell()
        f.write(directory + b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, len(members), len(members),
                                                         len(directory), start, 0))


def hostile_files(directory, outside, genuine_model):
    """Every hostile file of issue 16, at steps 2 to 9 of ``directory``."""
    dl.save_checkpoint(directory / "checkpoint-000000002.npz", model=genuine_model)
    flip_array_byte(directory / "checkpoint-000000002.npz")
    meta, _ = read_checkpoint(outside)
    with zipfile.ZipFile(directory / "checkpoint-000000003.npz", "w") as archive:
        archive.writestr("meta.json", deep(200_000))
    repack(outside, directory / "checkpoint-000000004.npz", dict(meta, manifest=[]))
    (directory / "checkpoint-5.npz").mkdir()
    os.mkfifo(directory / "checkpoint-000000006.npz")
    os.symlink(outside, directory / "checkpoint-000000007.npz")
    bomb = dict(meta, manifest={"model/weight": dict(meta["manifest"]["model/weight"], shape=[1 << 30])})
    handmade_zip(directory / "checkpoint-000000008.npz", [("meta.json", json.dumps(bomb).encode(), 1, False),
                                                          ("arrays/000000.npy", bytes(1 << 20), 4096, True)])
    handmade_zip(directory / "checkpoint-000000009.npz", [("meta.json", b" " * (1 << 20), 500, True)])
    return {2: "array 'model/weight' cannot be read .*CRC", 3: "nests deeper", 4: "has manifest of type list",
            5: "a directory, not a regular file", 6: "a FIFO, not a regular file", 7: "a symbolic link leading out of",
            8: r"member arrays/000000.npy is compressed.*\(4294967296 bytes declared\)",
            9: r"member meta.json is compressed.*\(524288000 bytes declared\)"}


def test_hostile_files_are_skipped_with_reasons_without_blocking_or_allocating_beyond_the_genuine(tmp_path):
    genuine = nn.Linear(2000, 2000)
    genuine.weight.data[...] = 1
    with_intact, without = tmp_path / "with-intact", tmp_path / "without"
    with_intact.mkdir(), without.mkdir()
    outside = tmp_path / "outside.npz"
    dl.save_checkpoint(outside, model=genuine)
    dl.save_checkpoint(with_intact / "checkpoint-000000001.npz", model=genuine, step=1)
    reasons = hostile_files(with_intact, outside, genuine)
    hostile_files(without, outside, genuine)
    assert os.path.getsize(with_intact / "checkpoint-000000008.npz") < 8 << 20  # a 4 GiB member in a few MB
    result = subprocess.run([sys.executable, str(WORKERS / "checkpoint_restore.py"), str(with_intact),
                             str(without)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    restored, nothing = map(json.loads, result.stdout.splitlines())
    assert restored["step"] == 1 and nothing["step"] is None
    for run, directory in ((restored, with_intact), (nothing, without)):
        for step, reason in reasons.items():
            name = f"checkpoint-{step:09d}.npz" if step != 5 else "checkpoint-5.npz"
            assert any(re.search(f"{directory / name}: .*{reason}", line) for line in run["warnings"]), \
                (name, run["warnings"])
        assert run["seconds"] < 20
    assert f"no intact checkpoint in {without}" in nothing["warnings"]
    largest = os.path.getsize(outside)
    for run in (restored, nothing):
        assert run["allocated"] < 2 * largest and run["rss_growth"] < 2 * largest, (run, largest)


def distdl_run(*args):
    return subprocess.run([sys.executable, "-m", "launcher", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def test_a_job_whose_newest_checkpoint_is_damaged_resumes_from_the_one_before(tmp_path):
    plain = distdl_run("-n", 2, "--backend", "zmq", "--checkpoint-dir", tmp_path / "a", WORKERS / "resume.py")
    assert plain.returncode == 0, plain.stderr
    damaged = distdl_run("-n", 2, "--backend", "zmq", "--checkpoint-dir", tmp_path / "b", "--max-restarts", 1,
                         WORKERS / "checkpoint_corrupt_resume.py", "--crash-at", 7)
    assert damaged.returncode == 0, damaged.stderr
    assert re.search(r"\[rank 0\] skipped a checkpoint: \S+checkpoint-000000006.npz: array '\S+' cannot be read",
                     damaged.stdout)
    assert "resumed at step 4" in damaged.stdout
    digest = re.compile(r"final digest (\w+)")
    assert digest.search(damaged.stdout).group(1) == digest.search(plain.stdout).group(1)
    pids = [int(pid) for pid in re.findall(r"pid (\d+) rank", damaged.stdout)]
    assert len(pids) == 4 and not [pid for pid in pids if os.path.exists(f"/proc/{pid}")]  # 2 ranks, 2 attempts


def test_a_second_job_on_the_same_directory_fails_at_once_naming_the_first(tmp_path):
    def job(mark, token):
        return subprocess.Popen([sys.executable, str(WORKERS / "checkpoint_job.py"), str(tmp_path), str(mark)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=dict(os.environ, DISTDL_RUN_ID=token))

    first = job(1.0, "first-token")
    try:
        assert first.stdout.readline() == "saved 1\n"
        start = time.monotonic()
        second = job(2.0, "second-token")
        out, err = second.communicate(timeout=60)
        assert time.monotonic() - start < 15
        assert second.returncode != 0 and "saved" not in out
        holder = (f"CheckpointDirectoryInUseError: checkpoint directory {tmp_path} is in use by another job: "
                  f"PID {first.pid} on {socket.gethostname()} since ")
        assert holder in err, err
        assert "first-token" not in err  # the run token is a secret: only a digest of it names the job
        out, _ = first.communicate("go\n", timeout=60)
        assert first.returncode == 0 and out == "saved 2\n"
    finally:
        first.kill()
        first.wait(timeout=30)
    for step in (1, 2):  # both written by the first job, untouched by the second
        meta, arrays = read_checkpoint(dl.CheckpointManager(tmp_path).path(step))
        assert np.all(arrays["model/weight"] == 1.0)
    third = job(3.0, "third-token")  # the directory is free again once its job ended
    out, err = third.communicate("go\n", timeout=60)
    assert third.returncode == 0, err


def test_ranks_that_read_different_files_agree_on_the_newest_every_rank_reads_whole(tmp_path):
    for rank in (0, 1):
        for step in (2, 4):
            model = nn.Linear(2, 2)
            model.weight.data[...] = step
            dl.save_checkpoint(tmp_path / f"rank-{rank}" / f"checkpoint-{step:09d}.npz", model=model, step=step)
    flip_array_byte(tmp_path / "rank-1" / "checkpoint-000000004.npz")  # rank 0 reads step 4 whole, rank 1 cannot
    result = run_zmq(2, "checkpoint_agree.py", tmp_path, timeout=60)
    assert result.ok(), result
    for rank in (0, 1):
        assert f"rank {rank} restored step 2 weight 2.0" in result.outputs[rank], result


def test_a_format_1_checkpoint_loads_with_the_stream_seeded_from_its_pcg64_state(tmp_path, caplog):
    path, model = saved(tmp_path)
    meta, _ = read_checkpoint(path)
    old_state = np.random.default_rng(5).bit_generator.state  # what distdl before format 2 saved
    legacy = tmp_path / "legacy.npz"
    repack(path, legacy, dict(meta, format_version=1, distdl_version="0.9", rng=[old_state]))
    other = build()[0]
    with caplog.at_level("WARNING", logger="distdl.checkpoint"):
        assert dl.load_checkpoint(legacy, model=other)["step"] == 1
    assert "legacy.npz: written by distdl 0.9, whose random numbers came from NumPy's PCG64" in caplog.text
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(other.state_dict()[k], v)
    seed = int(np.random.default_rng(5).bit_generator.random_raw())  # the old stream's next output
    assert dl.backend.rng_state() == {"generator": "splitmix64", "seed": seed, "counter": 0}

    for name, version, state in [("mixed1.npz", 1, meta["rng"][0]), ("mixed2.npz", 2, old_state)]:
        repack(path, tmp_path / name, dict(meta, format_version=version, rng=[state]))
        with pytest.raises(dl.CheckpointCorruptError, match=f"{name}: .*RNG state for rank 0 that does not fit"):
            dl.load_checkpoint(tmp_path / name, model=other)


def test_tensor_leaves_are_stored_as_their_arrays_and_map_location_places_the_extra_fields(tmp_path):
    when = np.array(["2026-01-02"], dtype="M8[D]")  # an array whose .data no buffer can view
    with dl.CheckpointManager(tmp_path) as manager:
        manager.save(1, table=dl.tensor(np.arange(6.0).reshape(2, 3)), when=when, scalar=np.float16(2.5))
        with pytest.raises(ValueError, match="unknown device 'tpu'"):
            manager.restore_latest(map_location="tpu")
        for extra in (manager.restore_latest(), dl.load_checkpoint(manager.path(1), map_location="cpu")):
            assert type(extra["table"]) is np.ndarray and extra["table"].dtype == np.float64
            np.testing.assert_array_equal(extra["table"], np.arange(6.0).reshape(2, 3))
            np.testing.assert_array_equal(extra["when"], when)
            assert extra["scalar"].shape == () and extra["scalar"].dtype == np.float16 and extra["scalar"] == 2.5
        if importlib.util.find_spec("cupy") is None:  # the extra fields' arrays are sent where map_location says
            with pytest.raises(RuntimeError, match="CuPy is not installed: pip install 'distdl\\[gpu\\]'"):
                manager.restore_latest(map_location="cuda")
