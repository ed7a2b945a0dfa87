"""Communication hooks: how a gradient bucket is averaged over the ranks (PyTorch's ``register_comm_hook``).

A hook is ``hook(state, bucket)``: it replaces every element of ``bucket.buffer()``
by its mean over the ranks, in place, and returns when done (or returns a handle
whose ``wait()`` does). DDP calls it on the communicator's communication thread,
bucket after bucket in index order, while backward goes on, in one order with the
rank's other collectives; the hook may call the communicator's collectives, blocking
or not. ``state`` is what was registered with the hook;
for the built-in hooks it is the communicator, None meaning ``dl.get_comm()``.

Every rank must end with bit-identical buffers: the replicas take their step from them.
"""

import numpy as np

from distdl.comm import get_comm

FLOAT16_MAX = 60000.0  # a little under float16's largest finite value, 65504


def run_hook(hook, state, bucket):
    """Average ``bucket`` with ``hook``: its return, when a handle, is waited for (as torch's futures)."""
    handle = hook(state, bucket)
    if handle is not None:
        handle.wait()


def allreduce_hook(state, bucket):
    """The default, as torch's: the gradients divided by the world size, then one allreduce of the whole bucket
    (what DDP does without a hook, minus its shortcuts: a sum of finite gradients then overflows only near the
    dtype's maximum itself); the control elements, counts, are divided after the sum (exact)."""
    comm = state if state is not None else get_comm()
    bucket.grads *= bucket.grads.dtype.type(1 / comm.size)
    comm.allreduce(bucket.buffer(), "sum", check=bucket.index() == 0)
    bucket.control /= comm.size


def fp16_compress_hook(state, bucket):
    """Send the gradients as float16, half the bytes of float32.

    The ranks agree on a power-of-two scale that brings the largest finite |gradient|
    x world size close to float16's maximum, so small values do not underflow and the
    sum cannot overflow; the result is unscaled back into the bucket's dtype. NaN and
    Inf travel as zeros: the bucket's control elements already tell every rank that a
    gradient was not finite, and DDP's policy (stop or skip the step) applies to all
    alike. The control elements (small integers) travel unscaled and exactly.
    """
    comm = state if state is not None else get_comm()
    grads, control = bucket.grads, bucket.control
    finite = np.isfinite(grads)
    largest = np.array([float(np.abs(grads, where=finite, out=np.zeros_like(grads)).max()) if grads.size else 0.0])
    comm.allreduce(largest, "max", check=bucket.index() == 0)  # finite on every rank: the same on every rank
    scale = _scale(largest[0], comm.size, grads.dtype)
    wire = np.zeros(bucket.flat.size, np.float16)
    np.multiply(grads, grads.dtype.type(scale), out=wire[:grads.size], where=finite, casting="unsafe")
    wire[grads.size:] = control
    comm.allreduce(wire, "sum", check=False)
    np.multiply(wire[:grads.size], 1 / (scale * comm.size), out=grads, dtype=grads.dtype)
    np.multiply(wire[grads.size:], 1 / comm.size, out=control, dtype=control.dtype)


def _scale(largest, size, dtype):
    """The power of two that brings ``largest`` x ``size`` just under float16's maximum, within ``dtype``'s range."""
    if largest <= 0:
        return 1.0
    exponent = np.floor(np.log2(FLOAT16_MAX / largest) - np.log2(size))  # no overflow near float64's maximum
    return float(2.0 ** min(exponent, np.finfo(dtype).maxexp // 2))
