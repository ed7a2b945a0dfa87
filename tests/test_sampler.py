"""DistributedSampler shards each epoch exactly, reshuffles in step on every rank, and resumes where it stopped."""

import numpy as np
import pytest

import distdl.comm.world
from distdl.data import DistributedSampler, RandomSampler, SequentialSampler

WORLD_SIZES = range(1, 9)
DATASET_SIZES = [1, 5, 16, 17, 100, 101]


def shards(n, world, epoch=0, **options):
    samplers = [DistributedSampler(range(n), num_replicas=world, rank=r, **options) for r in range(world)]
    for s in samplers:
        s.set_epoch(epoch)
    return [list(s) for s in samplers]


@pytest.mark.parametrize("world", WORLD_SIZES)
@pytest.mark.parametrize("n", DATASET_SIZES)
def test_padded_shards_cover_the_data_with_equal_lengths(world, n):
    parts = shards(n, world)
    per_rank = -(-n // world)
    assert [len(p) for p in parts] == [per_rank] * world
    counts = np.bincount(np.concatenate(parts), minlength=n)
    assert counts.min() >= 1  # every index is visited
    assert counts.sum() - n == per_rank * world - n  # only the padding repeats
    if n >= world:
        assert counts.max() <= 2


@pytest.mark.parametrize("world", WORLD_SIZES)
@pytest.mark.parametrize("n", DATASET_SIZES)
def test_unpadded_shards_hold_every_sample_exactly_once(world, n):
    parts = shards(n, world, shuffle=False, pad=False)
    assert sorted(np.concatenate(parts).tolist()) == list(range(n))
    lengths = [len(p) for p in parts]
    assert max(lengths) - min(lengths) <= 1 and sum(lengths) == n


@pytest.mark.parametrize("world", WORLD_SIZES)
@pytest.mark.parametrize("n", DATASET_SIZES)
def test_drop_last_gives_disjoint_equal_shards(world, n):
    parts = shards(n, world, drop_last=True)
    flat = np.concatenate(parts) if parts[0] else np.array([], np.int64)
    assert [len(p) for p in parts] == [n // world] * world
    assert len(set(flat.tolist())) == len(flat) == n // world * world


@pytest.mark.parametrize("world", [2, 3, 8])
def test_same_epoch_same_shards_on_every_rank_and_new_epoch_new_order(world):
    first, again = shards(101, world, epoch=3), shards(101, world, epoch=3)
    assert first == again
    assert shards(101, world, epoch=4) != first


@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_the_epoch_order_does_not_depend_on_the_world_size(world):
    """Rank r takes positions r, r+W, ... of one order: interleaving the shards gives it back."""
    parts = shards(96, world, epoch=2)
    interleaved = np.stack(parts, axis=1).ravel()
    np.testing.assert_array_equal(interleaved, shards(96, 1, epoch=2)[0])


def test_resume_continues_where_the_sampler_stopped():
    sampler = DistributedSampler(range(50), num_replicas=2, rank=1, seed=7)
    sampler.set_epoch(5)
    whole = list(sampler)
    sampler = DistributedSampler(range(50), num_replicas=2, rank=1, seed=7)
    sampler.set_epoch(5)
    iterator = iter(sampler)
    done = [next(iterator) for _ in range(9)]
    state = sampler.state_dict()
    assert state == {"seed": 7, "epoch": 5, "position": 9, "samples_seen": 18}

    resumed = DistributedSampler(range(50), num_replicas=2, rank=1)
    resumed.load_state_dict(state)
    resumed.set_epoch(5)  # the training loop calls it again on resume: same epoch keeps the position
    assert done + list(resumed) == whole
    resumed.set_epoch(6)
    assert resumed.position == 0 and len(list(resumed)) == 25


def test_resume_on_a_different_world_size_skips_the_samples_already_seen():
    n, seen = 60, 24
    order = shards(n, 1, epoch=1, seed=3)[0]
    state = {"seed": 3, "epoch": 1, "position": seen // 2, "samples_seen": seen}
    rest = []
    for rank in range(3):
        sampler = DistributedSampler(range(n), num_replicas=3, rank=rank)
        sampler.load_state_dict(state)
        rest.append(list(sampler))
    assert sorted(np.concatenate(rest).tolist()) == sorted(order[seen:])


def test_a_finished_epoch_iterated_again_repeats_it():
    sampler = DistributedSampler(range(10), num_replicas=2, rank=0)
    assert list(sampler) == list(sampler)


def test_local_samplers():
    assert list(SequentialSampler(range(4))) == [0, 1, 2, 3]
    sampler = RandomSampler(range(20), seed=1)
    first = list(sampler)
    assert sorted(first) == list(range(20))
    sampler.set_epoch(1)
    assert list(sampler) != first


def test_rank_outside_the_world_is_refused():
    with pytest.raises(ValueError, match="rank 2 is not in a world of 2"):
        DistributedSampler(range(10), num_replicas=2, rank=2)


def test_world_defaults_to_the_communicator(monkeypatch):
    monkeypatch.setattr(distdl.comm.world, "_current", None)
    sampler = DistributedSampler(range(10))
    assert (sampler.num_replicas, sampler.rank) == (1, 0)


def test_a_launched_worker_that_never_initialised_is_told_to(monkeypatch):
    monkeypatch.setattr(distdl.comm.world, "_current", None)
    monkeypatch.setenv("DISTDL_WORLD_SIZE", "4")
    with pytest.raises(RuntimeError, match=r"one of 4 workers .* call dl.init\(\)"):
        DistributedSampler(range(10))
