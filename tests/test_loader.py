"""DataLoader: batches, shuffling, collation, prefetch equal to the plain loader, resumable position."""

import collections
import threading

import numpy as np
import pytest

from distdl import device
from distdl.data import (DataLoader, Dataset, DistributedSampler, Subset, TensorDataset, default_collate,
                         random_split)
from distdl.data import transforms as T


def numbered(n=23):
    x = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    return TensorDataset(x, np.arange(n))


class ItemDataset(Dataset):
    """A dataset without get_batch: the loader collates its dict items one by one."""

    def __len__(self):
        return 10

    def __getitem__(self, i):
        return {"x": np.full(2, i, np.float32), "meta": (i, float(i) / 2)}


def labels_of(loader):
    return [batch[1].tolist() for batch in loader]


def test_batches_in_order_with_and_without_drop_last():
    assert labels_of(DataLoader(numbered(), batch_size=10)) == [list(range(10)), list(range(10, 20)),
                                                                list(range(20, 23))]
    loader = DataLoader(numbered(), batch_size=10, drop_last=True)
    assert len(loader) == 2 and len(labels_of(loader)) == 2
    assert len(DataLoader(numbered(), batch_size=10)) == 3


def test_shuffle_is_seeded_and_changes_every_epoch():
    loader = DataLoader(numbered(), batch_size=5, shuffle=True, seed=4)
    epoch0, epoch1 = sum(labels_of(loader), []), sum(labels_of(loader), [])
    assert sorted(epoch0) == sorted(epoch1) == list(range(23))
    assert epoch0 != epoch1
    assert sum(labels_of(DataLoader(numbered(), batch_size=5, shuffle=True, seed=4)), []) == epoch0


def test_item_datasets_collate_dicts_and_tuples():
    batch = next(iter(DataLoader(ItemDataset(), batch_size=4)))
    np.testing.assert_array_equal(batch["x"], [[0, 0], [1, 1], [2, 2], [3, 3]])
    np.testing.assert_array_equal(batch["meta"][0], [0, 1, 2, 3])
    np.testing.assert_array_equal(batch["meta"][1], [0, 0.5, 1, 1.5])


Sample = collections.namedtuple("Sample", "image label")


class NamedSamples(Dataset):
    def __len__(self):
        return 12

    def __getitem__(self, i):
        return Sample(np.full((2, 2), i, np.float32), i)


@pytest.mark.parametrize("device", [None, "cpu", "sim"])
def test_namedtuple_samples_stay_namedtuples_through_collate_transform_and_staging(device):
    loader = DataLoader(NamedSamples(), batch_size=4, device=device, transform=lambda images, keys: images + 1)
    batches = list(loader)
    assert [type(b) for b in batches] == [Sample] * 3
    np.testing.assert_array_equal(np.asarray(batches[1].image)[:, 0, 0], [5, 6, 7, 8])
    np.testing.assert_array_equal(np.asarray(batches[1].label), [4, 5, 6, 7])


def test_collate_errors_say_what_to_do():
    with pytest.raises(ValueError, match="different shapes"):
        default_collate([np.zeros(2), np.zeros(3)])
    with pytest.raises(TypeError, match="collate_fn"):
        default_collate([object()])


@pytest.mark.parametrize("shuffle", [False, True])
def test_prefetch_gives_exactly_the_plain_batches(shuffle):
    def batches(prefetch):
        loader = DataLoader(numbered(101), batch_size=8, shuffle=shuffle, seed=1, prefetch=prefetch,
                            transform=T.RandomHorizontalFlip())
        return [b for _ in range(2) for b in loader]

    plain, prefetched = batches(0), batches(3)
    assert len(plain) == len(prefetched) == 26
    for (x0, y0), (x1, y1) in zip(plain, prefetched):
        np.testing.assert_array_equal(x0, x1)
        np.testing.assert_array_equal(y0, y1)


class Exploding(Dataset):
    def __len__(self):
        return 10

    def __getitem__(self, i):
        if i == 7:
            raise KeyError("sample 7 is unreadable")
        return np.zeros(1)


def test_prefetch_reraises_the_loading_error():
    with pytest.raises(KeyError, match="sample 7"):
        list(DataLoader(Exploding(), batch_size=2, prefetch=2))


def test_a_prefetch_thread_that_cannot_select_the_device_raises_instead_of_hanging(monkeypatch):
    """DISTDL_DEVICE names a device this process cannot use: the loop gets the reason, not an endless wait."""
    monkeypatch.setattr(device, "_bound", None)  # unbound: the thread reads DISTDL_DEVICE
    monkeypatch.setenv("DISTDL_DEVICE", "tpu")
    loop = threading.Thread(target=lambda: outcome.append(_first_error(DataLoader(numbered(), prefetch=2))))
    outcome = []
    loop.start()
    loop.join(timeout=20)
    assert not loop.is_alive(), "the loop waited for a prefetch thread that had died"
    assert "tpu" in str(outcome[0])


def _first_error(loader):
    try:
        list(loader)
    except Exception as exc:
        return exc
    return None


def test_leaving_a_prefetching_loop_early_stops_its_thread():
    for batch in DataLoader(numbered(1000), batch_size=1, prefetch=4):
        break
    assert not [t for t in threading.enumerate() if t.name == "distdl-prefetch"]


@pytest.mark.parametrize("prefetch,device", [(0, None), (2, None), (2, "sim")])
def test_state_counts_delivered_batches_so_a_resume_continues(prefetch, device):
    dataset = numbered(40)
    sampler = DistributedSampler(dataset, num_replicas=2, rank=0, seed=5)
    whole = labels_of(DataLoader(dataset, batch_size=4, sampler=sampler, prefetch=prefetch))

    sampler = DistributedSampler(dataset, num_replicas=2, rank=0, seed=5)
    loader = DataLoader(dataset, batch_size=4, sampler=sampler, prefetch=prefetch, device=device)
    seen = []
    for batch in loader:
        seen.append(batch[1].tolist())
        if len(seen) == 2:
            break
    state = loader.state_dict()
    assert state["position"] == 8

    resumed = DataLoader(dataset, batch_size=4, sampler=DistributedSampler(dataset, num_replicas=2, rank=0),
                         prefetch=prefetch)
    resumed.load_state_dict(state)
    assert seen + labels_of(resumed) == whole


def test_augmentation_of_a_sample_does_not_depend_on_the_world_size():
    images = np.random.default_rng(0).random((30, 3, 6, 6)).astype(np.float32)
    dataset = TensorDataset(images, np.arange(30))
    augment = T.Compose([T.RandomCrop(6, padding=2), T.RandomHorizontalFlip()])

    def augmented(world):
        out = {}
        for rank in range(world):
            sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, seed=9)
            sampler.set_epoch(2)
            for x, index in DataLoader(dataset, batch_size=4, sampler=sampler, transform=augment):
                out.update(zip(index.tolist(), x))
        return out

    one, three = augmented(1), augmented(3)
    assert sorted(one) == sorted(three) == list(range(30))
    for i in range(30):
        np.testing.assert_array_equal(one[i], three[i])
    assert any(not np.array_equal(one[i], images[i]) for i in range(30))


def test_transform_applies_to_the_named_field():
    loader = DataLoader(ItemDataset(), batch_size=5, transform=lambda x, keys: x * 0 + len(keys), transform_key="x")
    batch = next(iter(loader))
    np.testing.assert_array_equal(batch["x"], np.full((5, 2), 5))


def test_subset_and_random_split():
    dataset = numbered(10)
    subset = Subset(dataset, [7, 2, 5])
    assert subset[1][1] == 2 and len(subset) == 3
    assert labels_of(DataLoader(subset, batch_size=3)) == [[7, 2, 5]]
    parts = random_split(dataset, [0.7, 0.3], seed=1)
    assert [len(p) for p in parts] == [7, 3]
    assert sorted(np.concatenate([p.indices for p in parts]).tolist()) == list(range(10))
    assert [p.indices.tolist() for p in random_split(dataset, [7, 3], seed=1)] == [p.indices.tolist() for p in parts]
    with pytest.raises(ValueError, match="do not add up"):
        random_split(dataset, [4, 4])
    with pytest.raises(IndexError, match=r"\[0, 10\)"):
        Subset(dataset, [10])


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader(numbered(), batch_size=0)
    with pytest.raises(ValueError, match="not both"):
        DataLoader(numbered(), shuffle=True, sampler=DistributedSampler(numbered(), 1, 0))
    with pytest.raises(ValueError, match="same first dimension"):
        TensorDataset(np.zeros(3), np.zeros(4))


# ---- the device path: pinned buffers, a copy stream, an event per batch (on the simulated device) ---------------
class Mixed(Dataset):
    """Items of several dtypes and a field of names, which stays on the host as it is (see with_names)."""

    def __len__(self):
        return 21

    def __getitem__(self, i):
        return {"x": np.full((2, 3), i, np.float32), "label": np.int64(i), "mask": np.bool_(i % 2),
                "name": f"item {i}"}


def with_names(items):
    return {**default_collate([{k: v for k, v in item.items() if k != "name"} for item in items]),
            "names": [item["name"] for item in items]}


def read_at_hand_out(loader):
    """Each batch as its consumer sees it when handed out (copied then: later copies must not change it)."""
    return [{k: np.array(v, copy=True) for k, v in b.items()} if isinstance(b, dict)
            else [np.array(v, copy=True) for v in b] for b in loader]


def assert_same_batches(got, expected):
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        for key in (a if isinstance(a, dict) else range(len(a))):
            np.testing.assert_array_equal(a[key], b[key])
            assert a[key].dtype == b[key].dtype


@pytest.mark.parametrize("prefetch", [0, 2])
@pytest.mark.parametrize("data", ["tensors", "items"])
def test_a_device_loader_hands_out_the_host_loaders_batches(prefetch, data):
    def loader(device):
        dataset = numbered(101) if data == "tensors" else Mixed()
        return DataLoader(dataset, batch_size=8, shuffle=True, seed=3, prefetch=prefetch, device=device,
                          transform=T.RandomHorizontalFlip() if data == "tensors" else None,
                          collate_fn=None if data == "tensors" else with_names)

    assert_same_batches(read_at_hand_out(loader("sim")), read_at_hand_out(loader(None)))


def test_a_batch_handed_out_without_waiting_for_its_copy_is_stale(monkeypatch):
    from distdl import device

    sim = device.get("sim")
    host = read_at_hand_out(DataLoader(numbered(40), batch_size=8, prefetch=0))
    monkeypatch.setattr(sim.compute_stream(), "wait_event", lambda event: None)  # the one wait, removed
    stale = read_at_hand_out(DataLoader(numbered(40), batch_size=8, prefetch=0, device="sim"))
    assert all(not np.array_equal(a[0], b[0]) for a, b in zip(stale, host))


@pytest.mark.parametrize("wait", [True, False])
def test_a_pinned_buffer_is_refilled_only_after_its_copy_is_done(wait, monkeypatch):
    from distdl import device
    from distdl.data import staging

    if not wait:
        monkeypatch.setattr(staging._Slot, "reuse", lambda slot: None)  # refill at once: the early reuse
    sim = device.get("sim")
    ring = staging.StagingRing(sim, slots=1)
    first, second = np.arange(6.0).reshape(2, 3), -np.arange(6.0).reshape(2, 3)
    on_device, event = ring.upload(*ring.stage((first,)), sim.compute_stream())
    ring.stage((second,))  # the only buffer again, while the first batch's copy has not run yet
    sim.compute_stream().wait_event(event)
    np.testing.assert_array_equal(on_device[0], first if wait else second)


def test_the_prefetch_thread_selects_the_device_first(monkeypatch):
    from distdl import device

    threads = []
    original = device.thread_init
    monkeypatch.setattr(device, "thread_init", lambda: (threads.append(threading.current_thread().name), original()))
    list(DataLoader(numbered(16), batch_size=4, prefetch=2, device="sim"))
    assert threads == ["distdl-prefetch"]
