"""The device layer on the host and on the simulated asynchronous device: ordering, stale reads, events, streams."""

import importlib.util
import threading
import time

import numpy as np
import pytest

from distdl import device
from distdl.comm.errors import DistError
from distdl.comm.ordering import CommThread


@pytest.fixture
def sim():
    return device.get("sim")


def test_get_names_the_devices_and_shares_instances(monkeypatch):
    monkeypatch.delenv("DISTDL_DEVICE", raising=False)
    assert device.get("cpu") is device.HOST and repr(device.HOST) == "cpu"
    assert device.get("sim") is device.get("sim") and device.get("sim").is_async
    assert device.get(None) is device.HOST and device.current() is device.HOST


def test_distdl_device_overrides_what_bind_asks_for(monkeypatch):
    monkeypatch.setattr(device, "_bound", None)
    monkeypatch.setenv("DISTDL_DEVICE", "sim")
    assert device.current().kind == "sim"
    assert device.bind("cpu").kind == "sim" and device.current().kind == "sim"
    monkeypatch.delenv("DISTDL_DEVICE")
    assert device.bind("cpu") is device.HOST


@pytest.mark.parametrize("spec", ["tpu", "cuda:x", "cuda:-1"])
def test_a_wrong_device_name_lists_the_right_ones_and_says_where_it_came_from(monkeypatch, spec):
    with pytest.raises(ValueError, match=f"unknown device '{spec}': use 'cpu', 'sim', 'cuda' or 'cuda:N'"):
        device.get(spec)
    monkeypatch.setattr(device, "_bound", None)
    monkeypatch.setenv("DISTDL_DEVICE", spec)
    with pytest.raises(ValueError, match=f"DISTDL_DEVICE='{spec}': unknown device"):
        device.current()


def test_host_is_synchronous():
    host, stream = device.HOST, device.HOST.compute_stream()
    src, dst = np.arange(4.0), np.zeros(4)
    host.copy_to_host(src, dst, stream)
    np.testing.assert_array_equal(dst, src)
    host.launch(stream, np.multiply, dst, 2, dst)
    np.testing.assert_array_equal(dst, src * 2)
    event = host.record_event(stream)
    assert event.query()
    event.synchronize()


def test_sim_copy_takes_effect_only_when_its_event_is_synchronized(sim):
    stream = sim.new_stream()
    src, dst = np.arange(5.0), np.zeros(5)
    sim.copy_to_host(src, dst, stream)
    event = sim.record_event(stream)
    np.testing.assert_array_equal(dst, 0)  # a reader that forgot the wait sees stale data
    event.synchronize()
    np.testing.assert_array_equal(dst, src)


def test_sim_event_covers_only_the_work_before_it(sim):
    stream = sim.new_stream()
    a, b = np.zeros(3), np.zeros(3)
    sim.launch(stream, a.fill, 1.0)
    first = sim.record_event(stream)
    sim.launch(stream, b.fill, 2.0)
    first.synchronize()
    assert a[0] == 1.0 and b[0] == 0.0
    stream.synchronize()
    assert b[0] == 2.0


def test_sim_stream_order_holds_for_copies_and_kernels(sim):
    stream = sim.new_stream()
    host = np.array([1.0, 2.0])
    buf = np.zeros(2)
    sim.copy_to_device(host, buf, stream)
    sim.launch(stream, np.multiply, buf, 10.0, buf)
    sim.copy_to_host(buf, host, stream)
    sim.record_event(stream).synchronize()
    np.testing.assert_array_equal(host, [10.0, 20.0])


def test_sim_copy_reads_its_source_when_it_runs_not_when_enqueued(sim):
    """As on a GPU: writing the source before the copy ran is a race the caller must order."""
    stream = sim.new_stream()
    src, dst = np.ones(2), np.zeros(2)
    sim.copy_to_host(src, dst, stream)
    src[:] = 7.0
    stream.synchronize()
    np.testing.assert_array_equal(dst, 7.0)


def test_sim_stream_wait_event_orders_across_streams(sim):
    producer, consumer = sim.new_stream(), sim.new_stream()
    data, out = np.zeros(2), np.zeros(2)
    sim.launch(producer, data.fill, 3.0)
    ready = sim.record_event(producer)
    consumer.wait_event(ready)
    sim.copy_to_host(data, out, consumer)
    done = sim.record_event(consumer)
    assert data[0] == 0.0  # nothing ran yet
    done.synchronize()  # runs the consumer, which first runs the producer up to ``ready``
    np.testing.assert_array_equal(out, 3.0)


def test_sim_without_the_wait_the_consumer_reads_stale_data(sim):
    producer, consumer = sim.new_stream(), sim.new_stream()
    data, out = np.zeros(2), np.zeros(2)
    sim.launch(producer, data.fill, 3.0)
    sim.copy_to_host(data, out, consumer)  # no consumer.wait_event(...)
    sim.record_event(consumer).synchronize()
    np.testing.assert_array_equal(out, 0.0)


def test_sim_compute_stream_is_program_order_and_its_wait_happens_at_once(sim):
    compute, side = sim.compute_stream(), sim.new_stream()
    a = np.zeros(2)
    sim.launch(compute, a.fill, 1.0)  # runs now
    assert a[0] == 1.0 and sim.record_event(compute).query()
    sim.launch(side, a.fill, 5.0)
    event = sim.record_event(side)
    assert a[0] == 1.0
    compute.wait_event(event)
    assert a[0] == 5.0


def test_sim_query_completes_the_work_it_asks_about(sim):
    stream = sim.new_stream()
    a = np.zeros(1)
    sim.launch(stream, a.fill, 4.0)
    assert sim.record_event(stream).query() and a[0] == 4.0


def test_sim_streams_are_safe_across_threads(sim):
    """The communication thread enqueues while the main thread synchronizes: every op runs exactly once, in order."""
    stream = sim.new_stream()
    log = []
    def producer():
        for i in range(2000):
            sim.launch(stream, log.append, i)
    thread = threading.Thread(target=producer)
    thread.start()
    while thread.is_alive():
        sim.record_event(stream).synchronize()
    thread.join(10)
    stream.synchronize()
    assert log == list(range(2000))


def test_pinned_and_device_buffers_have_the_asked_shape(sim):
    for dev in (device.HOST, sim):
        assert dev.empty((2, 3), np.float32).shape == (2, 3)
        pinned = dev.pinned_empty((4,), np.float16)
        assert pinned.dtype == np.float16 and pinned.shape == (4,) and isinstance(pinned, np.ndarray)
        assert dev.xp is np


def test_of_gives_the_sim_device_for_host_arrays_only_when_bound(monkeypatch):
    monkeypatch.delenv("DISTDL_DEVICE", raising=False)
    monkeypatch.setattr(device, "_bound", None)
    assert device.of(np.zeros(1)) is device.HOST
    monkeypatch.setattr(device, "_bound", device.get("sim"))
    assert device.of(np.zeros(1)).kind == "sim"


def test_a_communication_thread_that_cannot_select_the_device_fails_its_requests(monkeypatch):
    """DISTDL_DEVICE=cuda without CuPy (this venv): the request fails saying what to install; nothing hangs."""
    if importlib.util.find_spec("cupy") is not None:
        pytest.skip("CuPy is installed here")
    monkeypatch.setattr(device, "_bound", None)
    monkeypatch.setenv("DISTDL_DEVICE", "cuda")
    calls = CommThread(0)
    request = calls.submit(lambda: None)
    assert request._event.wait(20), "the request never finished"
    with pytest.raises(DistError, match="CuPy is not installed: pip install 'distdl\\[gpu\\]'"):
        request.wait()
    calls.stop()


def test_a_wait_for_a_stuck_device_is_bounded_and_names_what_waited():
    class Stuck(device.Event):
        def query(self):
            return False

    start = time.monotonic()
    with pytest.raises(TimeoutError, match="the pinned buffer's copy waited 0.2 s for the device: it is stuck"):
        Stuck().wait("the pinned buffer's copy", timeout=0.2)
    assert time.monotonic() - start < 5
    device.get("sim").record_event(device.get("sim").compute_stream()).wait("nothing", timeout=0)  # done at once
