"""DistributedDataParallel: every replica takes the same step, from gradients averaged over the ranks.

The gradients live in flat buckets (each ``.grad`` a view into one), filled in
reverse parameter order, the order backward produces them. When a bucket's last
gradient is final (the engine's post-accumulate hook), its allreduce starts on the
communication thread while backward goes on with earlier layers. Buckets are
launched strictly in index order, so every rank issues the same collectives in the
same order even when some parameters get no gradient on some ranks. When backward
ends, the buckets not yet launched (those holding unused parameters, whose zeroed
gradients then count as zeros) are launched, and every bucket is waited for: the
optimizer reads averaged gradients.
"""

import time
import weakref
from contextlib import contextmanager

from distdl.autograd.engine import register_backward_end_callback
from distdl.comm import get_comm
from distdl.parallel.buckets import coalesced, plan_buckets


class DistributedDataParallel:
    """Wrap ``module`` so that ``backward()`` averages its gradients over the ranks of ``comm``.

    - On construction, every rank must hold the same parameter and buffer names,
      shapes and dtypes; then rank 0's values are broadcast to all.
    - ``bucket_mb``: the size of the gradient buckets (one allreduce each).
    - ``broadcast_buffers``: before each training forward, rank 0's buffers (BatchNorm's
      running statistics) are broadcast, as PyTorch does; SyncBatchNorm instead
      reduces the batch statistics themselves.
    - ``compression="fp16"``: gradients travel as scaled float16, half the bytes.
    - ``no_sync()``: accumulate gradients locally; the next synced backward averages the sum.

    Move the model to its device and dtype before wrapping it: the buckets are
    allocated for the parameters as they are then. Call the wrapper, not
    ``ddp.module``, for the forward pass: that is what arms the gradient sync.
    """

    def __init__(self, module, comm=None, bucket_mb=25, broadcast_buffers=True, compression=None):
        if compression not in (None, "fp16"):
            raise ValueError(f"unknown compression {compression!r}: use None or 'fp16'")
        self.module = module
        self.comm = comm if comm is not None else get_comm()
        self.broadcast_buffers = broadcast_buffers
        self.compression = compression
        self._check_same_model()
        self._broadcast(list(module.parameters()) + list(module.buffers()))
        self._params = [p for p in module.parameters() if p.requires_grad]
        self.buckets = plan_buckets(self._params, int(bucket_mb * 1024 * 1024))
        self._bucket_of = {p: b for b in self.buckets for p in b.params}
        for p in self._params:
            if p.grad is not None:
                self._bucket_of[p].views[p][...] = p.grad
            p.grad = self._bucket_of[p].views[p]
        self._sync = True
        self.last_sync_wait = 0.0  # seconds the last backward waited for its allreduces: the exposed communication
        self.last_allreduces = []  # (bucket index, start, end, bytes) of the last backward, wall clock
        self._armed = False  # a forward ran: the next backward must average
        self._next_bucket = 0
        for p in self._params:
            p.register_post_accumulate_grad_hook(_weak(self, "_on_grad_ready"))
        end = register_backward_end_callback(_weak(self, "_on_backward_end"))
        weakref.finalize(self, end.remove)

    # -- construction ------------------------------------------------------------------------------------------------
    def _check_same_model(self):
        """Compare every rank's (name, shape, dtype) list with rank 0's; name the first difference."""
        mine = [[name, list(value.shape), str(value.dtype)] for name, value in self.module.named_parameters()]
        mine += [[name, list(value.shape), str(value.dtype)] for name, value in self.module.named_buffers()]
        everyone = self.comm.allgather_json(mine)
        for rank, theirs in enumerate(everyone[1:], 1):
            if theirs != everyone[0]:
                raise ValueError(f"DistributedDataParallel: rank {rank}'s model differs from rank 0's: "
                                 f"{_first_difference(everyone[0], theirs, rank)}; every rank must build the same "
                                 "model")

    def _broadcast(self, tensors):
        """Rank 0's values of ``tensors`` into every rank's, one coalesced broadcast per dtype."""
        arrays = [t.data for t in tensors]
        for group, flat in coalesced(arrays):
            self.comm.broadcast(flat, root=0)
            offset = 0
            for array in group:
                array[...] = flat[offset:offset + array.size].reshape(array.shape)
                offset += array.size

    # -- the step ----------------------------------------------------------------------------------------------------
    def __call__(self, *args, **kwargs):
        if self.module.training and self.broadcast_buffers and self.comm.size > 1:
            buffers = [b for b in self.module.buffers() if b is not None]
            if buffers:
                self._broadcast(buffers)
        self._prepare_for_backward()
        return self.module(*args, **kwargs)

    def _prepare_for_backward(self):
        """Arm the sync for the next backward; every bucket waits for all its gradients again."""
        for bucket in self.buckets:
            bucket.pending = len(bucket.params)
        self._next_bucket = 0
        self._armed = self._sync
        self.last_allreduces = []

    def _on_grad_ready(self, param):
        if not self._armed:
            return
        bucket = self._bucket_of[param]
        _home(param, bucket)
        bucket.pending -= 1
        if bucket.pending == 0:
            self._launch(ready_only=True)

    def _launch(self, ready_only):
        """Start the allreduce of the next buckets in index order (only complete ones if ``ready_only``).

        The last bucket is left to the end of backward, which reduces it in its own
        thread: nothing is left to overlap it with, and handing it to the
        communication thread would only add two thread wake-ups to the step.
        """
        last = len(self.buckets) - 1
        while self._next_bucket < last or (self._next_bucket == last and not ready_only):
            bucket = self.buckets[self._next_bucket]
            if ready_only and bucket.pending:
                return
            if self._next_bucket == last and not self.compression:
                start = time.time()
                self.comm.allreduce(bucket.flat, "mean", check=False)  # in this thread: see above
                self.last_allreduces.append((self._next_bucket, start, time.time(), bucket.nbytes))
            else:
                bucket.request = self.comm.iallreduce(bucket.flat, "mean", check=False, compression=self.compression)
            self._next_bucket += 1

    def _on_backward_end(self):
        if not self._armed:
            return
        self._armed = False
        for bucket in self.buckets[self._next_bucket:]:
            for p in bucket.params:
                if p.grad is None:  # no gradient this step, after zero_grad(set_to_none=True): it counts as zero
                    bucket.views[p][...] = 0
                    p.grad = bucket.views[p]
                else:  # e.g. accumulated under no_sync, unused in this pass
                    _home(p, bucket)
        start = time.perf_counter()
        self._launch(ready_only=False)  # the last bucket, and those whose unused parameters count as zeros
        for index, bucket in enumerate(self.buckets):
            if bucket.request is not None:
                bucket.request.wait()
                self.last_allreduces.append((index, bucket.request.started_at, bucket.request.finished_at,
                                             bucket.nbytes))
                bucket.request = None
        self.last_sync_wait = time.perf_counter() - start

    @contextmanager
    def no_sync(self):
        """Accumulate gradients locally inside the block; the first backward after it averages the sum."""
        previous, self._sync = self._sync, False
        try:
            yield
        finally:
            self._sync = previous

    # -- the wrapped module ------------------------------------------------------------------------------------------
    def parameters(self):
        return self.module.parameters()

    def named_parameters(self):
        return self.module.named_parameters()

    def state_dict(self):
        """The wrapped module's state_dict, with its own keys: it loads into a plain model and back."""
        return self.module.state_dict()

    def load_state_dict(self, state_dict, strict=True):
        return self.module.load_state_dict(state_dict, strict=strict)

    def train(self, mode=True):
        self.module.train(mode)
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self, set_to_none=True):
        self.module.zero_grad(set_to_none)

    def __getattr__(self, name):
        if name == "module":  # not yet set: __init__ failed early
            raise AttributeError(name)
        return getattr(self.module, name)

    def __repr__(self):
        sizes = ", ".join(f"{b.nbytes / 2 ** 20:.2f}" for b in self.buckets)
        return (f"DistributedDataParallel(rank {self.comm.rank} of {self.comm.size}, buckets MiB [{sizes}], "
                f"compression={self.compression})\n  {self.module!r}")


def _home(param, bucket):
    """Make ``param.grad`` its bucket view again.

    After ``zero_grad(set_to_none=True)`` the engine hands the first gradient over as
    a fresh array: one copy into the bucket, cheaper than zeroing the bucket before
    backward and adding into it. With ``set_to_none=False`` the engine adds into the
    view in place and nothing is copied.
    """
    view = bucket.views[param]
    if param.grad is not view:
        view[...] = param.grad
        param.grad = view


def _weak(obj, method):
    """A callback to ``obj.method`` that does not keep ``obj`` alive."""
    ref = weakref.ref(obj)

    def call(*args):
        target = ref()
        if target is not None:
            getattr(target, method)(*args)

    return call


def _first_difference(ours, theirs, rank):
    for mine, other in zip(ours, theirs):
        if mine != other:
            return (f"rank 0 has {mine[0]} {tuple(mine[1])} {mine[2]} where rank {rank} has {other[0]} "
                    f"{tuple(other[1])} {other[2]}")
    longer, which = (ours, "rank 0") if len(ours) > len(theirs) else (theirs, f"rank {rank}")
    extra = longer[min(len(ours), len(theirs))]
    return (f"{which} has {len(longer)} parameters and buffers, the other {min(len(ours), len(theirs))}; "
            f"the first extra one is {extra[0]}")


__all__ = ["DistributedDataParallel"]
