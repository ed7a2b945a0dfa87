"""DistributedDataParallel scenarios, each checked inside the workers: python ddp.py SCENARIO [options].

equivalence MODEL OPT DTYPE  N ranks with batch B reach, after 20 steps, what one worker with batch N*B reaches
nosync                       k micro-batches under no_sync, then synced, equal one step on the k-times batch
syncbn                       SyncBatchNorm on N ranks equals BatchNorm on one worker with the whole batch
unused                       each rank uses a different branch: DDP's gradient is the mean of plain local ones
laterhook                    a hook registered after DDP replaces the gradient: DDP averages what it left (inline
                             and on the communication thread), None as zeros; a copy of the wrapped model trains on
                             its own; a second DDP over the model leaves the first one averaging
mismatch                     rank 1 builds a different model: a clear error at construction
buckets                      rank 1 passes another bucket_cap_mb: a clear error at construction
skipstep                     rank 1's step count is one ahead (as after restoring another checkpoint): every rank
                             names the ranks' steps
fp16                         the fp16_compress_hook stays close to the uncompressed reference; allreduce_hook is exact
stall                        rank 1 stops itself (SIGSTOP) inside a 64 MiB allreduce: the others time out
uneven join|nojoin           rank r has 6 - 2r batches: with join() one process on the same batches is the reference;
                             without, a named error
evaluate                     rank 0 alone evaluates while rank 1 shuts down: a named error within 2 s (on both)
nonfinite                    finite gradients whose sum overflows; fp16 hook with an Inf and a NaN; NaN in rank 1's
                             input at step 3 skipped alike (nonfinite="skip", with and without the fp16 hook);
                             then the error names rank 1 and step 3
"""

import copy
import hashlib
import os
import signal
import sys
import threading
import time

import numpy as np

import distdl as dl
from distdl import nn, optim
from distdl.comm import DistError
from distdl.parallel import NonFiniteGradientError, StepMismatchError, allreduce_hook, fp16_compress_hook
from distdl.parallel import control
from distdl.parallel.buckets import Bucket

STEPS, BATCH = 20, 4


def build(model, dtype, seed):
    dl.seed(seed)
    if model == "mlp":
        net = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3))
    else:
        net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3),
                            nn.ReLU(), nn.Flatten(), nn.Linear(6 * 2 * 2, 3))
    return net.to(dtype)


def make_optimizer(name, params):
    if name == "sgd":
        return optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-3)
    return optim.Adam(params, lr=0.01)


def data(model, dtype, steps, global_batch):
    rng = np.random.default_rng(123)
    shape = (10,) if model == "mlp" else (2, 8, 8)
    x = rng.standard_normal((steps, global_batch) + shape).astype(dtype)
    y = rng.integers(0, 3, (steps, global_batch))
    return x, y


def digest(module):
    h = hashlib.sha256()
    for p in module.parameters():
        h.update(np.ascontiguousarray(p.data).tobytes())
    return h.hexdigest()


def assert_replicas_identical(comm, module, when):
    digests = comm.allgather_json(digest(module))
    assert len(set(digests)) == 1, f"replicas differ {when}"


def assert_close(got_module, want_module, dtype, what):
    rtol = 1e-5 if dtype == np.float32 else 1e-10
    for (name, got), (_, want) in zip(got_module.named_parameters(), want_module.named_parameters()):
        scale = np.abs(want.data).max()
        np.testing.assert_allclose(got.data, want.data, rtol=rtol, atol=rtol * scale, err_msg=f"{what}: {name}")


def step(model, optimizer, x, y, scale=1.0):
    optimizer.zero_grad()
    loss = nn.CrossEntropyLoss()(model(dl.tensor(x)), y) * scale
    loss.backward()
    optimizer.step()


def equivalence(comm, model_name, opt_name, dtype_name):
    dtype = np.dtype(dtype_name).type
    rank, size = comm.rank, comm.size
    model = build(model_name, dtype, seed=rank)  # different on every rank: DDP must broadcast rank 0's
    initial = copy.deepcopy(model) if rank == 0 else None
    ddp = dl.DistributedDataParallel(model, bucket_cap_mb=0.001)  # tiny buckets: several per model
    assert len(ddp.buckets) > 1
    optimizer = make_optimizer(opt_name, ddp.parameters())
    x, y = data(model_name, dtype, STEPS, BATCH * size)
    mine = slice(rank * BATCH, (rank + 1) * BATCH)
    assert_replicas_identical(comm, model, "after construction")
    for s in range(STEPS):
        step(ddp, optimizer, x[s, mine], y[s, mine])
        assert_replicas_identical(comm, model, f"after step {s}")
    if rank == 0:
        reference_optimizer = make_optimizer(opt_name, initial.parameters())
        for s in range(STEPS):
            step(initial, reference_optimizer, x[s], y[s])
        assert_close(model, initial, dtype, f"{model_name} {opt_name} {dtype_name}")


def nosync(comm, micro=3):
    rank, size = comm.rank, comm.size
    model = build("mlp", np.float64, seed=0)
    initial = copy.deepcopy(model)
    ddp = dl.DistributedDataParallel(model)
    optimizer = optim.SGD(ddp.parameters(), lr=0.1)
    x, y = data("mlp", np.float64, micro, BATCH * size)
    optimizer.zero_grad()
    for m in range(micro):
        mine = slice(rank * BATCH, (rank + 1) * BATCH)
        if m < micro - 1:
            with ddp.no_sync():
                (nn.CrossEntropyLoss()(ddp(dl.tensor(x[m, mine])), y[m, mine]) / micro).backward()
        else:
            (nn.CrossEntropyLoss()(ddp(dl.tensor(x[m, mine])), y[m, mine]) / micro).backward()
    optimizer.step()
    assert_replicas_identical(comm, model, "after the accumulated step")
    reference_optimizer = optim.SGD(initial.parameters(), lr=0.1)
    step(initial, reference_optimizer, x.reshape(-1, 10), y.reshape(-1))
    assert_close(model, initial, np.float64, "no_sync accumulation")


def syncbn(comm):
    """Also with several buckets and a hook: SyncBatchNorm's collectives in backward then fall between the
    buckets' allreduces, which must keep one order on every rank (they once ran on a thread of their own)."""
    for bucket_cap_mb, hook in ((25, None), (0.0002, None), (0.0002, allreduce_hook)):
        syncbn_once(comm, bucket_cap_mb, hook)


def syncbn_once(comm, bucket_cap_mb, hook):
    rank, size = comm.rank, comm.size

    def net():
        dl.seed(0)
        return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                             nn.Linear(3 * 4 * 4, 2)).to(np.float64)

    model = nn.SyncBatchNorm.convert_sync_batchnorm(net())
    reference = net()
    ddp = dl.DistributedDataParallel(model, bucket_cap_mb=bucket_cap_mb)
    if hook is not None:
        ddp.register_comm_hook(None, hook)
    assert (len(ddp.buckets) == 1) == (bucket_cap_mb == 25), len(ddp.buckets)
    rng = np.random.default_rng(7)
    x_all = rng.standard_normal((BATCH * size, 2, 4, 4)) * 3 + 1
    y_all = rng.integers(0, 2, BATCH * size)
    mine = slice(rank * BATCH, (rank + 1) * BATCH)
    x = dl.tensor(x_all[mine], requires_grad=True)
    out = ddp(x)
    nn.CrossEntropyLoss()(out, y_all[mine]).backward()

    x_ref = dl.tensor(x_all, requires_grad=True)
    out_ref = reference(x_ref)
    nn.CrossEntropyLoss()(out_ref, y_all).backward()
    np.testing.assert_allclose(out.data, out_ref.data[mine], rtol=1e-10, atol=1e-12, err_msg="forward")
    # each rank's loss is the mean over its shard: its input gradient is size times its part of the whole
    np.testing.assert_allclose(x.grad, size * x_ref.grad[mine], rtol=1e-9, atol=1e-12, err_msg="input gradient")
    for (name, p), (_, q) in zip(model.named_parameters(), reference.named_parameters()):
        np.testing.assert_allclose(p.grad, q.grad, rtol=1e-9, atol=1e-12, err_msg=f"gradient of {name}")
    for (name, b), (_, c) in zip(model.named_buffers(), reference.named_buffers()):
        np.testing.assert_allclose(b.data, c.data, rtol=1e-10, err_msg=f"buffer {name}")


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.body, self.left, self.right = nn.Linear(4, 8), nn.Linear(8, 2), nn.Linear(8, 2)

    def forward(self, x, use_left):
        h = self.body(x).relu()
        return self.left(h) if use_left else self.right(h)


def unused(comm):
    """Each rank's gradient is what a plain copy computes on its own batch (None as zeros); DDP holds their mean."""
    dl.seed(0)
    model = TwoHeads()
    ddp = dl.DistributedDataParallel(model, bucket_cap_mb=0.0001)
    optimizer = optim.SGD(ddp.parameters(), lr=0.1)
    rng = np.random.default_rng(comm.rank)
    for s in range(5):
        x, use_left = rng.standard_normal((3, 4)).astype(np.float32), (comm.rank + s) % 2 == 0
        plain = copy.deepcopy(model)
        plain.zero_grad()
        plain(dl.tensor(x), use_left=use_left).sum().backward()
        local = np.concatenate([(p.grad if p.grad is not None else np.zeros_like(p.data)).reshape(-1)
                                for p in plain.parameters()])
        want = comm.allgather(local).mean(axis=0)
        optimizer.zero_grad()
        ddp(dl.tensor(x), use_left=use_left).sum().backward()
        got = np.concatenate([p.grad.reshape(-1) for p in model.parameters()])
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7, err_msg=f"step {s}")
        assert np.abs(model.left.weight.grad).max() > 0 and np.abs(model.right.weight.grad).max() > 0  # one each
        optimizer.step()
        assert_replicas_identical(comm, model, f"after step {s}")


def laterhook(comm):
    """A hook registered after DDP's construction replaces each gradient by twice it: DDP averages what the hook
    left, on the communication thread as inline. A copy of the model made after wrapping (its parameters carry the
    hooks too) trains on its own, even while DDP waits for its backward."""
    def double(param):
        param.grad = param.grad * 2

    for overlap in ("inline", "thread"):
        os.environ["DISTDL_DDP_OVERLAP"] = overlap
        dl.seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
        ddp = dl.DistributedDataParallel(model, bucket_cap_mb=0.0001)
        for param in model.parameters():
            param.register_post_accumulate_grad_hook(double)
        plain = copy.deepcopy(model)
        optimizer = optim.SGD(ddp.parameters(), lr=0.1)
        rng = np.random.default_rng(comm.rank)
        for s in range(3):
            x = dl.tensor(rng.standard_normal((3, 4)).astype(np.float32))
            optimizer.zero_grad()
            plain.load_state_dict(model.state_dict())
            plain.zero_grad()
            loss = ddp(x).sum()  # DDP now waits for this backward
            plain(x).sum().backward()
            want = comm.allgather(np.concatenate([p.grad.reshape(-1) for p in plain.parameters()])).mean(axis=0)
            loss.backward()
            got = np.concatenate([p.grad.reshape(-1) for p in model.parameters()])
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7, err_msg=f"{overlap}, step {s}")
            optimizer.step()
            assert_replicas_identical(comm, model, f"{overlap}, after step {s}")
        assert ddp.steps == ddp.timings()["steps"] == 3, (ddp.steps, ddp.timings())
        dropped_bias_and_rewrapped(comm)
    del os.environ["DISTDL_DDP_OVERLAP"]


def dropped_bias_and_rewrapped(comm):
    """A hook that sets a gradient to None makes it count as zero; a second DDP over the same model leaves the
    first one averaging."""
    dl.seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    plain = copy.deepcopy(model)
    first = dl.DistributedDataParallel(model, bucket_cap_mb=0.0001)
    second = dl.DistributedDataParallel(model)
    model[2].bias.register_post_accumulate_grad_hook(lambda p: setattr(p, "grad", None))
    x = dl.tensor(np.random.default_rng(comm.rank).standard_normal((3, 4)).astype(np.float32))
    model.zero_grad()
    first(x).sum().backward()
    plain(x).sum().backward()
    plain[2].bias.grad[...] = 0
    want = comm.allgather(np.concatenate([p.grad.reshape(-1) for p in plain.parameters()])).mean(axis=0)
    got = np.concatenate([p.grad.reshape(-1) for p in model.parameters()])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert (first.steps, second.steps) == (1, 0)


def mismatch(comm):
    dl.seed(0)
    model = nn.Sequential(nn.Linear(4, 8 if comm.rank == 0 else 9), nn.ReLU(), nn.Linear(8 if comm.rank == 0 else 9, 2))
    dl.DistributedDataParallel(model)


def buckets(comm):
    dl.DistributedDataParallel(build("mlp", np.float64, seed=0), bucket_cap_mb=0.001 * (1 + comm.rank))


def skipstep(comm):
    rank, size = comm.rank, comm.size
    ddp = dl.DistributedDataParallel(build("mlp", np.float64, seed=0), bucket_cap_mb=0.001)
    optimizer = optim.SGD(ddp.parameters(), lr=0.05)
    x, y = data("mlp", np.float64, 5, BATCH * size)
    mine = slice(rank * BATCH, (rank + 1) * BATCH)
    try:
        for s in range(1, 6):
            if rank == 1 and s == 3:
                ddp.steps += 1
            step(ddp, optimizer, x[s - 1, mine], y[s - 1, mine])
    except StepMismatchError as exc:
        print(f"rank {rank} stopped: {exc}", flush=True)
    else:
        raise AssertionError("no error")


def fp16(comm):
    rank, size = comm.rank, comm.size
    model = build("mlp", np.float32, seed=0)
    initial = copy.deepcopy(model)
    ddp = dl.DistributedDataParallel(model)
    ddp.register_comm_hook(None, fp16_compress_hook)
    optimizer = optim.SGD(ddp.parameters(), lr=0.05)
    x, y = data("mlp", np.float32, 10, BATCH * size)
    mine = slice(rank * BATCH, (rank + 1) * BATCH)
    for s in range(10):
        step(ddp, optimizer, x[s, mine], y[s, mine])
        assert_replicas_identical(comm, model, f"after step {s}")
    reference_optimizer = optim.SGD(initial.parameters(), lr=0.05)
    for s in range(10):
        step(initial, reference_optimizer, x[s], y[s])
    for p, q in zip(model.parameters(), initial.parameters()):
        np.testing.assert_allclose(p.data, q.data, rtol=0, atol=2e-3 * np.abs(q.data).max())
    # allreduce_hook, and a hook that returns its handle as torch's do: what DDP does without one
    hooked, handed, plain = (build("mlp", np.float32, seed=0) for _ in range(3))
    with_hook = dl.DistributedDataParallel(hooked, bucket_cap_mb=0.001)
    with_hook.register_comm_hook(None, allreduce_hook)
    with_handle = dl.DistributedDataParallel(handed, bucket_cap_mb=0.001)
    with_handle.register_comm_hook(comm, lambda state, bucket: state.iallreduce(bucket.buffer(), "mean"))
    without = dl.DistributedDataParallel(plain, bucket_cap_mb=0.001)
    for ddp_ in (with_hook, with_handle, without):
        optimizer_ = optim.SGD(ddp_.parameters(), lr=0.05)
        for s in range(3):
            step(ddp_, optimizer_, x[s, mine], y[s, mine])
            # no blocking collective in these steps: done requests must not pile up, one per bucket and step
            assert len(comm._calls.pending) <= len(ddp_.buckets), f"{len(comm._calls.pending)} requests kept"
    assert digest(hooked) == digest(plain) == digest(handed)


def stall(comm, stamp):
    """Rank 1 writes the time to ``stamp`` and stops (SIGSTOP: every thread of it, the allreduce's included)."""
    big = np.ones(16 << 20, np.float32)  # 64 MiB

    def stop():
        with open(stamp, "w") as out:
            out.write(repr(time.time()))
        os.kill(os.getpid(), signal.SIGSTOP)

    if comm.rank == 1:
        threading.Timer(0.2, stop).start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        comm.allreduce(big)
    raise AssertionError("no timeout in 60 s")


def uneven(comm, mode):
    rank, size = comm.rank, comm.size
    batches = [6 - 2 * r for r in range(size)]
    model = build("mlp", np.float64, seed=rank)
    initial = copy.deepcopy(model)  # rank 0's is what DDP broadcasts
    ddp = dl.DistributedDataParallel(model, bucket_cap_mb=0.001)  # several buckets
    optimizer = optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
    x, y = data("mlp", np.float64, max(batches), BATCH * size)
    mine = slice(rank * BATCH, (rank + 1) * BATCH)
    if mode == "nojoin":
        try:
            for s in range(batches[rank]):
                step(ddp, optimizer, x[s, mine], y[s, mine])
            comm.allreduce(np.zeros(1), "sum")  # what a script reduces after its loop: the ranks still training differ
        except DistError as exc:  # printed here and exit 1: MPI_Abort could cut the output short
            print(f"rank {rank} stopped: {type(exc).__name__}: {exc}", flush=True)
            sys.exit(1)
        raise AssertionError("no error")
    with ddp.join():
        for s in range(batches[rank]):
            step(ddp, optimizer, x[s, mine], y[s, mine])
    assert ddp.steps == max(batches)  # the steps of the job, on every rank
    assert_replicas_identical(comm, model, "after join")
    if rank == 0:  # one process, each step on the batches of the ranks that had one
        reference_optimizer = optim.SGD(initial.parameters(), lr=0.05, momentum=0.9)
        for s in range(max(batches)):
            had = [r for r in range(size) if s < batches[r]]
            rows = np.concatenate([np.arange(r * BATCH, (r + 1) * BATCH) for r in had])
            step(initial, reference_optimizer, x[s, rows], y[s, rows])
        assert_close(model, initial, np.float64, "join")


def evaluate(comm):
    """Each rank prints how long it took to be told; under MPI the first to fail may end the other first."""
    dl.seed(0)
    model = nn.Sequential(nn.Linear(4, 3))
    trainer = dl.Trainer(model, optim.SGD(model.parameters(), lr=0.1), loss=nn.CrossEntropyLoss())
    val = (np.ones((40, 4), np.float32), np.zeros(40, np.int64))
    start = time.monotonic()
    try:
        if comm.rank == 0:  # a PyTorch habit: only rank 0 evaluates
            trainer.evaluate(val)
        else:
            dl.shutdown()
    except DistError as exc:  # printed here and exit 1: MPI_Abort could cut the output short
        print(f"rank {comm.rank}: named after {time.monotonic() - start:.2f} s: {type(exc).__name__}: {exc}",
              flush=True)
        sys.exit(1)
    raise AssertionError("no error")


def hook_alone(comm, bad):
    """The fp16 hook on a bucket of 1000 gradients, rank r's all r + 1, one of rank 1's ``bad``."""
    param = nn.Parameter(np.zeros(1000, np.float32))
    bucket = Bucket(0, [param], last=True)
    bucket.grads[...] = comm.rank + 1
    if comm.rank == 1:
        bucket.grads[7] = bad
    bucket.control[...] = control.template(1, np.float32)
    bucket.control[control.NONFINITE] = comm.rank == 1
    fp16_compress_hook(comm, bucket)
    mean = np.mean(np.arange(1, comm.size + 1))
    assert np.all(np.delete(bucket.grads, 7) == mean), f"good elements with one {bad}"
    assert bucket.grads[7] == (mean * comm.size - 2) / comm.size, f"the {bad} travels as zero"
    assert control.counts(bucket.control * comm.size)[control.NONFINITE] == 1  # the hook averaged them
    assert len(set(comm.allgather_json(hashlib.sha256(bucket.flat.tobytes()).hexdigest()))) == 1


def train_with_a_nan(comm, policy, hook, bad_step=3, steps=5):
    """Rank 1's input holds a NaN at ``bad_step`` (counted from 1)."""
    rank, size = comm.rank, comm.size
    model = build("mlp", np.float32, seed=0)
    initial = copy.deepcopy(model)
    ddp = dl.DistributedDataParallel(model, bucket_cap_mb=0.001, nonfinite=policy)
    if hook:
        ddp.register_comm_hook(None, hook)
    optimizer = optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
    x, y = data("mlp", np.float32, steps, BATCH * size)
    x[bad_step - 1, BATCH + 1, 3] = np.nan
    mine = slice(rank * BATCH, (rank + 1) * BATCH)
    for s in range(1, steps + 1):
        before = digest(model)
        step(ddp, optimizer, x[s - 1, mine], y[s - 1, mine])
        assert ddp.step_skipped == (s == bad_step), f"step {s}"
        assert (digest(model) == before) == (s == bad_step), f"step {s}: the parameters moved or did not"
        assert_replicas_identical(comm, model, f"after step {s}")
    assert ddp.skipped_steps == 1
    reference_optimizer = optim.SGD(initial.parameters(), lr=0.05, momentum=0.9)
    for s in range(1, steps + 1):
        if s != bad_step:
            step(initial, reference_optimizer, x[s - 1], y[s - 1])
    tolerance = 2e-3 if hook else 1e-5
    for p, q in zip(model.parameters(), initial.parameters()):
        np.testing.assert_allclose(p.data, q.data, rtol=0, atol=tolerance * np.abs(q.data).max())


def sum_then_divide_hook(state, bucket):
    comm = state if state is not None else dl.get_comm()
    comm.allreduce(bucket.buffer(), "mean", check=bucket.index() == 0)


def overflow(comm):
    """Gradients are divided by the world size before they are summed (as torch's default hook, and allreduce_hook):
    every rank's 3e38 averages to 3e38, finite, and nothing is skipped. Through a hook that sums, then divides, or on
    a device (which does so too), the sum overflows: every rank skips the step alike, or names the overflow."""
    for policy in ("skip", "error"):
        for hook in (None, allreduce_hook):
            model = nn.Linear(2, 1)
            ddp = dl.DistributedDataParallel(model, nonfinite=policy)
            if ddp.device.kind != "cpu":  # the device allreduce averages in its own kernel: sum, then divide
                break
            if hook is not None:
                ddp.register_comm_hook(None, hook)
            (ddp(np.ones((1, 2), np.float32)) * np.float32(3e38)).sum().backward()
            assert not ddp.step_skipped and model.bias.grad[0] == np.float32(3e38), (policy, hook, model.bias.grad)
    for policy in ("skip", "error"):
        model = nn.Linear(2, 1)
        ddp = dl.DistributedDataParallel(model, nonfinite=policy)
        if ddp.device.kind == "cpu":
            ddp.register_comm_hook(None, sum_then_divide_hook)
        try:
            (ddp(np.ones((1, 2), np.float32)) * np.float32(3e38)).sum().backward()
        except NonFiniteGradientError as exc:
            assert policy == "error" and "average overflowed to Inf in bias" in str(exc), exc
            print(f"rank {comm.rank} stopped: {exc}", flush=True)
        else:
            assert policy == "skip" and ddp.step_skipped and model.weight.grad is None, policy


def mixeddtypes(comm):
    """A float32 body and a float16 head (the head's bucket comes first): each bucket is divided by the world size
    in its own dtype, so the float32 mean is float32's (float16's 1/3 would be off by 4e-4)."""

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Parameter(np.zeros(4, np.float32))
            self.head = nn.Parameter(np.zeros(4, np.float16))

        def forward(self, x):
            return (self.body * x).sum() + (self.head * x.astype(np.float16)).sum()

    ddp = dl.DistributedDataParallel(Model())
    assert [str(b.grads.dtype) for b in ddp.buckets] == ["float16", "float32"], ddp.buckets
    ddp(dl.tensor(np.full(4, comm.rank + 1, np.float32))).backward()
    mean = (comm.size + 1) / 2
    np.testing.assert_allclose(ddp.module.body.grad, mean, rtol=1e-6)
    np.testing.assert_allclose(ddp.module.head.grad.astype(np.float32), mean, rtol=2e-3)


def nonfinite(comm):
    overflow(comm)
    for bad in (np.inf, np.nan):
        hook_alone(comm, bad)
    train_with_a_nan(comm, "skip", None)
    train_with_a_nan(comm, "skip", fp16_compress_hook)
    try:
        train_with_a_nan(comm, "error", None)
    except NonFiniteGradientError as exc:
        print(f"rank {comm.rank} stopped: {exc}", flush=True)
    else:
        raise AssertionError("no error")


def main():
    comm = dl.init()
    scenario, args = sys.argv[1], sys.argv[2:]
    {"equivalence": equivalence, "nosync": nosync, "syncbn": syncbn, "unused": unused, "mismatch": mismatch,
     "fp16": fp16, "stall": stall, "uneven": uneven, "evaluate": evaluate, "nonfinite": nonfinite, "buckets": buckets, "mixeddtypes": mixeddtypes,
     "skipstep": skipstep, "laterhook": laterhook}[scenario](comm, *args)
    dl.shutdown()
    print(f"rank {comm.rank}: {scenario} {' '.join(args)} ok")


if __name__ == "__main__":
    main()
