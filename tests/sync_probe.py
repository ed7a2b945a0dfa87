"""Did the host wait for the GPU while it queued some work? A probe that holds for any CuPy version.

``cupyx.allow_synchronize(False)`` is deprecated, and in CuPy 14 ``ndarray.get`` no longer declares its
wait, so it catches nothing there. This probe asks the device instead: a kernel that spins for a few
seconds is queued on the compute stream, then the work is queued by the host; if the spin is still
running once the work is queued, the host never waited for the device (a ``.get()``, an ``int()``, a
boolean mask's size, a synchronize: each would have waited for the spin first). A wait on another
thread that this one waits for counts too, as it should. Used by tests/test_gpu_syncs.py and open to
scripts/gpu_check.py; it needs a real GPU (on the simulated device there is no kernel to spin).
"""

import time

import numpy as np

SPIN = r"""
extern "C" __global__ void distdl_spin(unsigned long long nanoseconds) {
    unsigned long long start, now;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
    do {
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
    } while (now - start < nanoseconds);
}
"""


def host_waited(device, work, at_least=2.0):
    """True when queueing ``work()`` made the host wait for ``device`` (a CUDA Device of distdl.device).

    ``work`` runs twice: once to compile its kernels, fill the memory pools and time it, then under a
    spin ten times that long (``at_least`` seconds), so that work that does not wait is surely queued
    before the spin ends. Waits for the device at the end.
    """
    if device.kind != "cuda":
        raise ValueError(f"the sync probe spins a kernel on a GPU; {device} has none")
    compute = device.compute_stream()
    start = time.perf_counter()
    work()
    compute.synchronize()
    seconds = max(at_least, 10 * (time.perf_counter() - start))
    spin = device.xp.RawKernel(SPIN, "distdl_spin")
    device.launch(compute, spin, (1,), (1,), (np.uint64(seconds * 1e9),))
    spun = device.record_event(compute)
    work()
    waited = spun.query()
    compute.synchronize()
    return waited
