"""DistributedDataParallel: every replica takes the same step, from gradients averaged over the ranks.

The gradients live in flat buckets (each ``.grad`` a view into one), filled in
reverse parameter order, the order backward produces them. When a bucket's last
gradient is final (the engine's post-accumulate hook), its allreduce starts on the
communication thread while backward goes on with earlier layers, where this rank has
a core free for that thread (else every bucket is reduced when backward ends, in the
caller's thread: the thread would only take turns with backward; in a world of one
nothing is reduced). Buckets on a device (a GPU, or the simulated device) go through
``device_allreduce``: its stream waits on the gradients' event, and the compute
stream on each reduced bucket's event before the optimizer reads it. Buckets are
launched strictly in index order, so every rank issues the same collectives in the
same order even when some parameters get no gradient on some ranks. When backward
ends, the buckets not yet launched (those holding unused parameters, whose zeroed
gradients then count as zeros) are launched, and every bucket is waited for: the
optimizer reads averaged gradients.

On the host path each gradient is divided by the world size on its way into its bucket,
and the buckets are summed: the op that computes a parameter's whole gradient is offered
its bucket view (``_callbacks``; Linear writes there, scaled on its smaller operand), others'
gradients are scaled as they are copied in (a pass that happens anyway). No division
pass after the allreduce, and a sum of finite gradients overflows only where their squared norm
did on some rank (``_overflowed`` looks only there).

The path is checked, always: the first bucket of each step goes through the
communicator's signature check (a rank in another collective is named at once), and
the control elements at the end of every bucket (``control.py``) carry each rank's
step, finiteness and whether it had a batch, reduced with the gradients themselves.
The bucket layout is compared across ranks at construction. In a world of one nothing
travels: the rank's own finiteness check is the step's verdict, and no control is written.
"""

import math
import os
import time
import weakref
from contextlib import contextmanager
from functools import partial

import numpy as np

from distdl import device
from distdl.autograd.engine import pass_started, queue_callback
from distdl.backend import to_device, xp_of
from distdl.comm import CollectiveMismatchError, DistError, get_comm
from distdl.comm.threads import cores_per_rank
from distdl.parallel import control
from distdl.parallel.buckets import coalesced, layout_of, plan_buckets
from distdl.parallel.comm_hooks import run_hook
from distdl.parallel.device_allreduce import DeviceAllreduce
from distdl.parallel.errors import NonFiniteGradientError, StepMismatchError
from distdl.timing import PhaseRecorder

NONFINITE_POLICIES = ("error", "skip")
OVERLAP_CHOICES = ("auto", "thread", "inline")


class DistributedDataParallel:
    """Wrap ``module`` so that ``backward()`` averages its gradients over the ranks of ``process_group``.

    Args:
        module: the model, already on its device and in its dtype (the buckets are
            allocated for the parameters as they are then).
        process_group: the communicator (default ``dl.get_comm()``).
        bucket_cap_mb: the size of the gradient buckets (one allreduce each).
        broadcast_buffers: before each training forward, rank 0's buffers (BatchNorm's
            running statistics) are broadcast, as PyTorch does; SyncBatchNorm instead
            reduces the batch statistics themselves.
        nonfinite: what a NaN or Inf gradient on any rank does. ``"error"`` (default):
            every rank raises NonFiniteGradientError naming the step, a parameter and the
            ranks whose gradient was not finite. ``"skip"``: every rank skips that step
            alike, as AMP's GradScaler does: the gradients become None, so
            ``optimizer.step()`` moves nothing; ``step_skipped`` says so and
            ``skipped_steps`` counts.

    On construction, every rank must hold the same parameter and buffer names, shapes
    and dtypes; then rank 0's values are broadcast to all. Call the wrapper, not
    ``ddp.module``, for the forward pass: that is what arms the gradient sync.
    ``no_sync()`` accumulates locally; ``join()`` takes uneven inputs;
    ``register_comm_hook(state, hook)`` changes how buckets travel (fp16 compression).
    """

    def __init__(self, module, process_group=None, bucket_cap_mb=25, broadcast_buffers=True, nonfinite="error"):
        if nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"nonfinite={nonfinite!r}: use 'error' (stop with the step, parameter and ranks) or "
                             "'skip' (skip that step on every rank)")
        self.module = module
        self.comm = process_group if process_group is not None else get_comm()
        self.broadcast_buffers = broadcast_buffers
        self.nonfinite = nonfinite
        self._params = [p for p in module.parameters() if p.requires_grad]
        self._names = {p: name for name, p in module.named_parameters()}
        self.buckets = plan_buckets(self._params, int(bucket_cap_mb * 1024 * 1024))
        self._check_same_model()
        self._broadcast(list(module.parameters()) + list(module.buffers()))
        self._bucket_of = {p: b for b in self.buckets for p in b.params}
        self._buffer_list = [b for b in module.buffers() if b is not None]  # as torch, the buffers of construction
        # buckets on a device (CuPy parameters, or the simulated device bound) go through the device allreduce
        self.device = device.of(self._params[0].data) if self._params else device.HOST
        self._alone = self.comm.size == 1 and self.device.kind == "cpu"  # nothing to average: no allreduce
        # else every bucket is reduced at the end of backward, in this thread (alone: none is)
        self._overlap = _overlap(self.comm) and not self._alone
        self._reducer = self._local_flags = None
        if self.device.kind != "cpu":
            self._reducer = DeviceAllreduce(self.comm, self.device)
            weakref.finalize(self, self._reducer.stop)
            self._overlap = True  # the device allreduce has a stream of its own, on the communication thread
            self._local_flags = self.device.xp.zeros(len(self.buckets), self.buckets[0].flat.dtype)
        for p in self._params:
            if p.grad is not None:
                self._bucket_of[p].views[p][...] = p.grad
            p.grad = self._bucket_of[p].views[p]
        self._sync = True
        self.steps = 0  # synced steps (after join(), those of the ranks that trained longest)
        self.skipped_steps = 0  # of them, skipped for non-finite gradients (nonfinite="skip")
        self.step_skipped = False  # the last one was
        self.last_sync_wait = 0.0  # seconds the last backward waited for its allreduces: the exposed communication
        self.last_allreduces = []  # (bucket index, start, end, bytes) of the last backward, wall clock
        self.phases = PhaseRecorder(self.comm)  # each step's phases: timings(), DISTDL_TIMELINE
        self._hook = self._hook_state = None
        self._set_pre_scale()
        self._armed = False  # a forward ran: the next backward must average
        self._end_queued = False  # this backward pass will call _on_backward_end at its end
        self._next_bucket = 0
        self._local_nonfinite = None  # the first parameter whose gradient was not finite here, this step
        self._templates_high = self._templates = self._agreed_sums = None  # of 256 steps (control.templates)
        ready, offer = _callbacks(self)
        for p in self._params:
            # after those of any other DDP over this parameter that is still alive, as hooks would be
            p._grad_final = tuple(f for f in p._grad_final or () if f.owner() is not None) + (ready,)
            if self._reducer is None:
                p._grad_into = offer

    # -- construction ------------------------------------------------------------------------------------------------
    def _check_same_model(self):
        """Compare every rank's (name, shape, dtype) list and bucket layout with rank 0's; name the difference."""
        mine = [[name, list(value.shape), str(value.dtype)] for name, value in self.module.named_parameters()]
        mine += [[name, list(value.shape), str(value.dtype)] for name, value in self.module.named_buffers()]
        everyone = self.comm.allgather_json([mine, layout_of(self.buckets)])
        for rank, (theirs, layout) in enumerate(everyone[1:], 1):
            if theirs != everyone[0][0]:
                raise ValueError(f"DistributedDataParallel: rank {rank}'s model differs from rank 0's: "
                                 f"{_first_difference(everyone[0][0], theirs, rank)}; every rank must build the same "
                                 "model")
            if layout != everyone[0][1]:
                raise ValueError(f"DistributedDataParallel: rank {rank}'s gradient buckets differ from rank 0's "
                                 f"(gradients:dtype of each bucket, rank 0: {everyone[0][1]}; rank {rank}: {layout}); "
                                 "pass the same bucket_cap_mb on every rank")

    def _broadcast(self, tensors, root=0):
        """``root``'s values of ``tensors`` into every rank's, one coalesced broadcast per dtype."""
        arrays = [t.data for t in tensors]
        for group, flat in coalesced(arrays):
            self.comm.broadcast(flat, root=root)
            offset = 0
            for array in group:
                array[...] = flat[offset:offset + array.size].reshape(array.shape)
                offset += array.size

    def register_comm_hook(self, state, hook):
        """Average the buckets with ``hook(state, bucket)`` (see ``comm_hooks``), e.g. ``fp16_compress_hook``.

        Register it once, before the first backward, on every rank alike.
        """
        if not callable(hook):
            raise TypeError(f"register_comm_hook takes a callable hook(state, bucket), not {type(hook).__name__}")
        if self._hook is not None:
            raise RuntimeError("register_comm_hook: a communication hook is already registered; register one only")
        if self.steps:
            raise RuntimeError("register_comm_hook: register the hook before the first backward pass")
        self._hook, self._hook_state = hook, state
        self._alone = False  # a hook runs even in one process: it may do more than average
        self._overlap = True  # the hook runs on the communication thread
        self._set_pre_scale()

    def _set_pre_scale(self):
        """Divide by the world size in the copy into the bucket, not in a pass of its own after the sum.

        Only on the host path without a hook (a hook averages as it likes, the device allreduce
        in its own kernel): one scale per bucket, in its dtype; None elsewhere. As torch's default
        hook, the gradients are divided before they are summed; the control elements are summed
        as they are: what comes back is their counts (``_controls``).
        """
        host_sum = self._reducer is None and self._hook is None and not self._alone
        self._pre_scaled = host_sum
        self._bounded = host_sum and all(4 * self.comm.size ** 2 < np.finfo(b.grads.dtype).max for b in self.buckets)
        # each parameter's (bucket view, 1/world size in its bucket's dtype or None): looked up once per gradient
        self._places = {p: (b.views[p], b.grads.dtype.type(1 / self.comm.size) if host_sum else None)
                        for b in self.buckets for p in b.params}

    # -- the step ----------------------------------------------------------------------------------------------------
    def __call__(self, *args, **kwargs):
        self.phases.forward_begins()
        self._sync_buffers()
        self._prepare_for_backward()
        return self.module(*args, **kwargs)

    def _sync_buffers(self):
        """Rank 0's buffers (BatchNorm's running statistics) to every rank before a training forward, as torch."""
        if self.module.training and self.broadcast_buffers and self.comm.size > 1 and self._buffer_list:
            self._broadcast(self._buffer_list)

    def _prepare_for_backward(self):
        """Arm the sync for the next backward; every bucket waits for all its gradients again."""
        for bucket in self.buckets:
            bucket.pending = len(bucket.params)
        self._next_bucket = 0
        self._armed = self._sync
        self._end_queued = False
        self.step_skipped = False
        self._local_nonfinite = None
        self._homed = set()  # the parameters whose final gradient of this pass was put in its bucket (scaled)
        self._offered = set()  # those whose op was offered the bucket view to write into (_callbacks)
        self.last_allreduces = []
        step = self.steps + 1
        if step >> 8 != self._templates_high:
            self._templates_high = step >> 8
            self._templates = control.templates(self._templates_high, self.buckets[0].flat.dtype)
            self._agreed_sums = self._templates * self.comm.size  # what every rank at this step with a batch sums to
            if self._reducer is not None:  # a device copy: writing a bucket's control then costs no host sync
                self._device_templates = self.device.xp.asarray(self._templates)
        self._control, self._agreed = self._templates[step & 0xFF], self._agreed_sums[step & 0xFF]
        if self._reducer is not None:
            self._device_control = self._device_templates[step & 0xFF]

    def _on_grad_ready(self, param):
        """``param``'s gradient is final (overlapping only): home it, and launch the buckets now complete."""
        self._home_final(param)
        bucket = self._bucket_of[param]
        bucket.pending -= 1
        if bucket.pending == 0:
            try:
                self._launch(ready_only=True)
            except DistError as exc:
                self._raise_named(exc)

    def _home_final(self, param):
        """``param``'s gradient of this pass is final: into its bucket now (a new array is then freed at once)."""
        self._adopt(param)
        self._homed.add(param)

    def _adopt(self, param):
        """Make ``param``'s final gradient of this pass its bucket view, divided by the world size on the host
        path, unless its op already wrote it there, scaled (it was offered the view: ``_callbacks``)."""
        view, scale = self._places[param]
        if param not in self._offered or param.grad is not view:
            _home(param, view, scale)

    def _launch(self, ready_only):
        """Start the allreduce of the next buckets in index order (only complete ones if ``ready_only``)."""
        last = len(self.buckets) - 1
        while self._next_bucket < last or (self._next_bucket == last and not ready_only):
            bucket = self.buckets[self._next_bucket]
            if ready_only and bucket.pending:
                return
            if self._alone:  # nothing travels: this rank's own finiteness check is the whole verdict (_settle)
                self._locally_nonfinite(bucket)
            elif self._reducer is None:
                if bucket.index() == 0:
                    bucket.control[...] = self._control
                bucket.control[control.NONFINITE], bucket.control[control.LARGE] = self._locally_nonfinite(bucket)
            else:  # on the device, in stream order: no host sync per bucket
                if bucket.index() == 0:
                    bucket.control[...] = self._device_control
                self.device.launch(self.device.compute_stream(), _flag_nonfinite, bucket, self._local_flags)
            self._start(bucket)
            self._next_bucket += 1

    def _locally_nonfinite(self, bucket):
        """(whether this rank's gradients in ``bucket`` hold a NaN or Inf, whether their squared norm overflowed).

        One BLAS dot product in the common case; the first non-finite parameter is remembered.
        """
        if math.isfinite(bucket.grads.dot(bucket.grads)):
            return False, False
        bad = _nonfinite_param(bucket)
        if bad is not None and self._local_nonfinite is None:
            self._local_nonfinite = self._names[bad]
        return bad is not None, True

    def _start(self, bucket):
        """Average ``bucket`` over the ranks: the hook on its thread, else an allreduce.

        Without a hook the last bucket is reduced in the caller's thread: nothing is
        left to overlap it with, and the communication thread would only add two
        thread wake-ups to the step. So is every bucket where no core is free for
        the communication thread (``_overlap``), and none in a world of one.
        """
        if self._alone:
            return
        check = bucket.index() == 0  # the signature check of the step: a rank in another collective is named
        if self._reducer is not None:  # after the gradients' kernels, on the device allreduce's stream
            ready = self.device.record_event(self.device.compute_stream())
            bucket.request = self._reducer.submit(bucket, ready, check, self._hook, self._hook_state)
        elif self._hook is not None:
            bucket.request = self.comm.submit(partial(run_hook, self._hook, self._hook_state, bucket))
        elif bucket.is_last() or not self._overlap:
            start = time.time()
            self.comm.allreduce(bucket.flat, "sum", check=check)  # the gradients were divided in _home
            self.last_allreduces.append((bucket.index(), start, time.time(), bucket.nbytes))
        else:
            bucket.request = self.comm.iallreduce(bucket.flat, "sum", check=check)

    def _on_backward_end(self):
        self._end_queued = False
        if not self._armed:  # a pass under no_sync(), or one after the synced pass of this forward: no sync
            self.phases.backward_ended(pass_started())
            return
        self._armed = False
        for bucket in self.buckets[self._next_bucket:]:
            for p in bucket.params:
                # not homed yet (no gradient this step, which counts as zero; its op wrote into the view; it
                # accumulated there in place, or under no_sync and is unused in this pass), or a hook replaced it
                if p not in self._homed or p.grad is not bucket.views[p]:
                    self._adopt(p)
        start = time.perf_counter()
        try:
            self._launch(ready_only=False)  # the last bucket, and those whose unused parameters count as zeros
            self._wait_all()
        except DistError as exc:
            self._raise_named(exc)
        self.last_sync_wait = time.perf_counter() - start
        self.phases.backward_ended(pass_started(), self.last_sync_wait, self.last_allreduces)
        self._settle(had_batch=True)

    def _raise_named(self, exc):
        """A mismatch met in the gradient allreduce says where it happened and what usually causes it."""
        cause = exc if isinstance(exc, CollectiveMismatchError) else exc.__cause__
        if not isinstance(cause, CollectiveMismatchError):
            raise exc
        raise CollectiveMismatchError(
            f"{cause} [in DistributedDataParallel's gradient allreduce of step {self.steps + 1}: a rank that ran "
            "out of data, skipped or added a step, or evaluates while the others train; for uneven inputs use "
            "`with ddp.join():`]") from exc

    def _wait_all(self):
        for bucket in self.buckets:
            if bucket.request is not None:
                request, bucket.request = bucket.request, None
                request.wait()
                if self._reducer is not None:
                    self._compute_waits_for(bucket)
                self.last_allreduces.append((bucket.index(), request.started_at, request.finished_at,
                                             bucket.nbytes))

    def _compute_waits_for(self, bucket):
        """The optimizer's kernels (the compute stream) start only once the averaged bucket is in place."""
        self.device.compute_stream().wait_event(bucket.reduced_event)

    def _controls(self):
        """Every bucket's reduced control elements as sums over the ranks (counts), on the host: one copy on a
        device, the step's only sync.

        Summed on the host path as they are; a hook and the device allreduce average them, so their means are
        multiplied back (exact where it matters: n/n = 1, times n). On a device the reduced buckets' finiteness
        comes in the same copy (``_overflowed`` reads it).
        """
        size = self.comm.size
        if self._reducer is None:
            if self._pre_scaled:
                return [bucket.control for bucket in self.buckets]
            return [bucket.control * size for bucket in self.buckets]
        xp, count = self.device.xp, len(self.buckets)
        finite = [xp.isfinite(bucket.grads).all().reshape(1) for bucket in self.buckets]
        fetched = to_device(xp.concatenate([b.control for b in self.buckets] + finite + [self._local_flags]), "cpu")
        controls = fetched[:count * control.CONTROL_SIZE].reshape(count, control.CONTROL_SIZE)
        controls = controls.astype(self._control.dtype, copy=False) * size  # mixed dtypes were concatenated upwards
        self._reduced_finite = fetched[count * control.CONTROL_SIZE:-count]
        self._local_bad = fetched[-count:]
        return list(controls)

    def _overflowed(self, controls):
        """The first parameter whose reduced gradient is not finite, else None (after ``_controls``).

        On the host path without a hook only the buckets in which some rank's squared norm
        overflowed are read: where it is finite on every rank, each rank's gradient divided by W
        is below sqrt(max) in magnitude, so their sum stays below W sqrt(max) < max/2
        (``_bounded``: 4 W^2 < max, true up to 2^62 ranks in float32, 2^7 in float16).
        """
        if self._reducer is None:
            for bucket, sums in zip(self.buckets, controls):
                if sums[control.LARGE] or not self._bounded:
                    bad = _first_nonfinite(bucket)
                    if bad is not None:
                        return bad
            return None
        bucket = next((b for b, finite in zip(self.buckets, self._reduced_finite) if not finite), None)
        return None if bucket is None else _nonfinite_or_first(bucket)

    def _local_culprit(self, had_batch):
        """This rank's first parameter with a NaN or Inf gradient this step, by name, else None.

        On a device only the bucket is known (its flag was computed there): the name is that of the first of
        its parameters whose averaged gradient is not finite (NaN and Inf survive the mean), else its first.
        """
        if self._reducer is None:
            return self._local_nonfinite
        if not had_batch:
            return None
        bucket = next((b for b, bad in zip(self.buckets, self._local_bad) if bad), None)
        return None if bucket is None else self._names[_nonfinite_or_first(bucket)]

    def _settle(self, had_batch):
        """Read the reduced control elements: check the step, average over the ranks that had a batch, non-finite.

        ``had_batch`` is false on a rank that answers the others' step inside ``join()``.
        """
        if self._alone:  # nothing was reduced: no step to compare, and the sum is the local gradient
            self.steps += had_batch
            somewhere, overflowed = self._local_nonfinite is not None, None
        else:
            size = self.comm.size
            controls = self._controls()
            if not (had_batch and control.agree_fully(controls[0], self._agreed)):
                first = control.counts(controls[0])
                if not control.steps_agree(first):
                    self._raise_step_mismatch(had_batch)
                active = int(first[control.ACTIVE])
                if 0 < active < size:  # join(): the mean over the ranks that had a batch, not over all
                    for bucket in self.buckets:
                        bucket.grads *= bucket.grads.dtype.type(size / active)
            self.steps += had_batch
            somewhere = any(c[control.NONFINITE] for c in controls)
            # finite on every rank, the sum may still overflow: every rank reads the same sum, so reaches one verdict
            overflowed = None if somewhere else self._overflowed(controls)
        if somewhere or overflowed is not None:
            if self.nonfinite == "skip":
                self._skip_step()
            elif somewhere:
                self._raise_nonfinite(had_batch)
            else:
                self._raise_overflow(had_batch, self._names[overflowed])

    def _raise_step_mismatch(self, had_batch):
        """Every rank's step, gathered (one extra collective, only now) to name them."""
        everyone = self.comm.allgather_json(self.steps + 1 if had_batch else None)
        described = "; ".join(f"rank {r}: " + (f"step {step}" if step is not None else "out of data, in join()")
                              for r, step in enumerate(everyone))
        raise StepMismatchError(
            f"rank {self.comm.rank}: DistributedDataParallel: the ranks averaged the gradients of different steps "
            f"({described}); every rank must run the same synced steps: a rank skipped or added one (for uneven "
            "inputs use `with ddp.join():`)")

    def _step_name(self, had_batch):
        return f"step {self.steps}" if had_batch else "a step of the ranks still training (this one is in join())"

    def _skip_step(self):
        for p in self._params:
            p.grad = None  # optimizers skip parameters without a gradient: nothing moves
        self.skipped_steps += 1
        self.step_skipped = True

    def _raise_nonfinite(self, had_batch):
        """Some rank's gradient was NaN or Inf: stop every rank, naming them."""
        culprits = self.comm.allgather_json(self._local_culprit(had_batch))  # one extra collective, only now
        ranks = [r for r, name in enumerate(culprits) if name is not None]
        where = "; ".join(f"rank {r}: {culprits[r]}" for r in ranks)
        raise NonFiniteGradientError(
            f"rank {self.comm.rank}: {self._step_name(had_batch)}: a NaN or Inf gradient on rank{'s' * (len(ranks) > 1)} "
            f"{', '.join(map(str, ranks))} (first non-finite parameter: {where}); averaged, it would reach every "
            "replica, so every rank stops here. Look at those ranks' inputs of this step and the learning rate, or "
            "pass nonfinite='skip' to skip such steps")

    def _raise_overflow(self, had_batch, name):
        """Every rank's gradient was finite but their average is not: the reduction or a hook overflowed."""
        raise NonFiniteGradientError(
            f"rank {self.comm.rank}: {self._step_name(had_batch)}: every rank's gradient was finite, but their "
            f"average overflowed to Inf in {name} (in the reduction, or in a communication hook's compression); the "
            f"gradients are too large for {self.buckets[0].grads.dtype} or the hook's dtype: lower the learning rate "
            "or the loss scale, clip the gradients, or pass nonfinite='skip' to skip such steps")

    @contextmanager
    def no_sync(self):
        """Accumulate gradients locally inside the block; the first backward after it averages the sum."""
        previous, self._sync = self._sync, False
        try:
            yield
        finally:
            self._sync = previous

    def timings(self, all_ranks=False):
        """Mean seconds per step of each phase (data, forward, backward, communication, optimizer) over this
        rank's last 100 steps, and ``steps``; ``all_ranks=True`` (collective) gathers every rank's under ``ranks``
        and says under ``uneven`` which rank is slower and in which phase (None within 20%)."""
        return self.phases.timings(all_ranks)

    # -- uneven inputs -------------------------------------------------------------------------------------------------
    @contextmanager
    def join(self):
        """Uneven inputs: a rank whose loop ends early answers the others' steps with zeros until all are done.

        Wrap the training loop on every rank::

            with ddp.join():
                for x, y in loader:          # some ranks have more batches than others
                    ...forward, backward, optimizer.step()

        Each step's gradient is the mean over the ranks that had a batch in it, so the
        result equals one process trained on the same batches. At the end every rank
        gets the parameters and buffers of a rank that trained to the last step (the
        optimizer state of a rank that left early stays its own, as in PyTorch). Inside
        the block only DDP may communicate (no SyncBatchNorm, no collective callbacks),
        as with PyTorch's ``Join``.
        """
        first = self.steps
        yield self
        while self._shadow_step():
            pass
        done = self.comm.allgather(np.array([self.steps - first], np.int64))[:, 0]
        if (done != done.max()).any():
            self._broadcast(list(self.module.parameters()) + self._buffer_list, root=int(np.argmax(done)))
        self.steps = first + int(done.max())  # the steps of the job, on every rank

    def _shadow_step(self):
        """Answer one step of the ranks still training with zeros; False once every rank has joined."""
        self._sync_buffers()
        for bucket in self.buckets:
            bucket.flat[...] = 0  # zero gradients, and control elements that say "no batch here" (alone: all
            # there is, none being reduced, so a world of one ends here at once)
        self.last_allreduces = []
        self._start(self.buckets[0])
        self._wait_all()
        if control.counts(self._controls()[0])[control.ACTIVE] == 0:
            return False
        for bucket in self.buckets[1:]:
            self._start(bucket)
        self._wait_all()
        self._settle(had_batch=False)
        return True

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
        hook = getattr(self._hook, "__name__", repr(self._hook)) if self._hook is not None else None
        if self._reducer is not None:
            where = f", on {self.device}, gradient allreduce {self._reducer.method}"
        elif self._alone:
            where = ", one process: no allreduce"
        else:
            where = ", allreduce on the communication thread" if self._overlap else ", allreduce inline (no free core)"
        return (f"DistributedDataParallel(rank {self.comm.rank} of {self.comm.size}, buckets MiB [{sizes}]{where}, "
                f"comm hook {hook}, nonfinite={self.nonfinite!r})\n  {self.module!r}")


def _overlap(comm):
    """Whether the buckets' allreduces run on the communication thread, overlapping backward.

    Only where this rank has a core free for it (DISTDL_DDP_OVERLAP=auto): on one core per rank
    the thread only takes turns with backward, and each hand-off to it costs two thread wake-ups.
    """
    choice = os.environ.get("DISTDL_DDP_OVERLAP", "auto")
    if choice not in OVERLAP_CHOICES:
        raise ValueError(f"DISTDL_DDP_OVERLAP={choice!r}: use auto (the thread where a core per rank is free), "
                         "thread or inline")
    return choice == "thread" or (choice == "auto" and cores_per_rank(comm.local_size) >= 2)


def _flag_nonfinite(bucket, flags):
    """A device kernel: the bucket's finiteness flag (its control element, and this rank's copy in ``flags``)."""
    xp = xp_of(bucket.flat)
    bad = xp.logical_not(xp.isfinite(bucket.grads).all())
    bucket.control[control.NONFINITE:control.NONFINITE + 1] = bad
    flags[bucket.index():bucket.index() + 1] = bad


def _first_nonfinite(bucket):
    """The first parameter of ``bucket`` whose gradient holds a NaN or Inf, else None.

    One BLAS dot product in the common case: NaN and Inf make it non-finite. Only then
    (or when the dot product itself overflowed) are the parameters looked at one by one.
    """
    return None if math.isfinite(bucket.grads.dot(bucket.grads)) else _nonfinite_param(bucket)


def _nonfinite_param(bucket):
    """The first parameter of ``bucket`` whose gradient holds a NaN or Inf, looked at one by one, else None."""
    return next((p for p in bucket.params if not np.isfinite(bucket.views[p]).all()), None)


def _nonfinite_or_first(bucket):
    """The first parameter of ``bucket`` whose gradient is not finite, else its first parameter."""
    bad = _first_nonfinite(bucket)
    return bucket.params[0] if bad is None else bad


def _home(param, view, scale):
    """Make ``param.grad`` its bucket ``view`` again, multiplied by ``scale`` (1/world size) unless it is None.

    After ``zero_grad(set_to_none=True)`` the engine hands the first gradient over as
    a fresh array: one copy into the bucket (scaled on the way), cheaper than zeroing the
    bucket before backward and adding into it. With ``set_to_none=False`` the engine adds
    into the view in place, and only the scaling passes over it.
    """
    if param.grad is None:  # no gradient this step (unused, or a hook set it to None): it counts as zero
        view[...] = 0
        param.grad = view
    elif param.grad is not view:
        if scale is None:
            view[...] = param.grad
        else:
            np.multiply(param.grad, scale, out=view)
        param.grad = view
    elif scale is not None:
        view *= scale


def _callbacks(ddp):
    """The two callbacks every parameter of ``ddp`` gets, neither keeping ``ddp`` alive: (ready, offer).

    ``ready``, its ``_grad_final`` (a post-accumulate-grad hook that runs after the user's, so that
    theirs see and may change the local gradient): the first of a pass queues the end of the sync
    (at the end of this pass, not of any other; under no_sync only the step recorder's end of
    backward); overlapping, each one of a synced pass homes its gradient and may launch its bucket.
    Otherwise it homes only a gradient its op did not write into the view (a copy it needs anyway,
    the new array then freed at once): for the others it costs a check, and the end of backward
    scales those accumulated in place. ``offer``, its ``_grad_into``: the (bucket view, 1/world size
    or None) that the op computing its whole gradient may write it into, scaled (``engine._targets``),
    saving the copy into the bucket; None when not armed, or when user hooks must see the unscaled
    gradient. A copy of a parameter (``copy.deepcopy`` copies both) is not ``ddp``'s: both ignore it.
    """
    ref = weakref.ref(ddp)

    def ready(param):
        ddp = ref()
        place = None if ddp is None else ddp._places.get(param)  # None too for a copy of its parameter
        if place is None:
            return
        if not ddp._end_queued:
            ddp._end_queued = True
            queue_callback(ddp._on_backward_end)
        if ddp._armed:
            if ddp._overlap:
                ddp._on_grad_ready(param)
            elif param.grad is not place[0]:  # a new array (its op was offered no view): copied now,
                ddp._home_final(param)  # it is freed at once, not held to the end of backward

    def offer(param):
        ddp = ref()
        if ddp is None or not ddp._armed or param._hooks:
            return None
        place = ddp._places.get(param)  # None for a copy of its parameter
        if place is not None:
            ddp._offered.add(param)
        return place

    ready.owner = ref
    return ready, offer


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
