"""DistributedDataParallel: N real workers equal one worker with the N-times batch; buckets, no_sync, SyncBatchNorm;
no hang and no silent wrong result: timeouts, uneven inputs and join(), a rank in another collective, non-finite
gradients."""

import copy
import os
import re
import secrets
import subprocess
import sys
import time
import weakref
from pathlib import Path

import numpy as np
import pytest

import distdl as dl
from distdl import nn, optim
from distdl.parallel import comm_hooks, control, fp16_compress_hook
from distdl.parallel.buckets import plan_buckets
from gradcheck import module_gradcheck
from multiproc import WORKERS, run

BACKENDS = ["mpi", "zmq"]
# (model, optimizer, dtype): both models, both optimizers, both dtypes
COMBINATIONS = [("mlp", "sgd", "float32"), ("mlp", "adam", "float64"), ("cnn", "sgd", "float64"),
                ("cnn", "adam", "float32")]


def ran_everywhere(result, size, scenario):
    assert result.ok(), str(result)
    assert "".join(result.outputs).count(f"{scenario}") >= size


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("size", [2, 3])
@pytest.mark.parametrize("model,optimizer,dtype", COMBINATIONS)
def test_n_workers_reach_the_parameters_of_one_worker_with_the_whole_batch(backend, size, model, optimizer, dtype):
    """20 steps; replicas bit-identical after every step (checked in the workers)."""
    result = run(backend, size, "ddp.py", "equivalence", model, optimizer, dtype, timeout=120)
    ran_everywhere(result, size, "equivalence")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scenario", ["nosync", "syncbn", "unused", "laterhook", "fp16"])
def test_ddp_scenarios_on_real_workers(backend, scenario):
    result = run(backend, 3 if scenario == "syncbn" else 2, "ddp.py", scenario, timeout=120)
    ran_everywhere(result, 2, scenario)


@pytest.mark.parametrize("backend", BACKENDS)
def test_different_models_on_different_ranks_fail_at_construction(backend):
    result = run(backend, 2, "ddp.py", "mismatch", timeout=60)
    assert not result.ok()
    assert ("rank 1's model differs from rank 0's: rank 0 has 0.weight (8, 4) float32 where rank 1 has "
            "0.weight (9, 4) float32") in "".join(result.outputs), str(result)


@pytest.mark.parametrize("backend", BACKENDS)
def test_different_bucket_sizes_on_different_ranks_fail_at_construction(backend):
    result = run(backend, 2, "ddp.py", "buckets", timeout=60)
    assert not result.ok()
    assert ("rank 1's gradient buckets differ from rank 0's (gradients:dtype of each bucket, rank 0: 67:float64;"
            "256:float64;16:float64;160:float64; rank 1: 67:float64;256:float64;176:float64); pass the same "
            "bucket_cap_mb on every rank") in "".join(result.outputs), str(result)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ranks_at_different_steps_are_named_on_every_rank(backend):
    result = run(backend, 2, "ddp.py", "skipstep", timeout=60)
    ran_everywhere(result, 2, "skipstep")
    for rank in range(2):
        assert (f"rank {rank} stopped: rank {rank}: DistributedDataParallel: the ranks averaged the gradients of "
                "different steps (rank 0: step 3; rank 1: step 4)") in "".join(result.outputs), str(result)


def processes_with(marker):
    """The processes whose command line holds ``marker``."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker.encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except OSError:  # gone meanwhile
            pass
    return found


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_rank_stopped_inside_a_64_mib_allreduce_ends_the_job_naming_the_timeout(backend, tmp_path):
    stamp = tmp_path / f"stopped-{secrets.token_hex(8)}"  # also the mark of the job's processes
    result = subprocess.run([sys.executable, "-m", "launcher", "-n", "2", "--backend", backend,
                             str(WORKERS / "ddp.py"), "stall", str(stamp)], capture_output=True, text=True, timeout=90,
                            env=dict(os.environ, DISTDL_TIMEOUT="10", OMP_NUM_THREADS="1"))
    ended = time.time()
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert ended - float(stamp.read_text()) < 20, f"the job ended {ended - float(stamp.read_text()):.1f} s after the stop"
    assert re.search(r"CollectiveTimeoutError: rank 0: allreduce #\d+ \(sum, float32, 16777216 elements\) waited 10 s",
                     output), output
    assert not processes_with(str(stamp))


@pytest.mark.parametrize("backend", BACKENDS)
def test_uneven_inputs_with_join_equal_one_process_on_the_same_batches(backend):
    ran_everywhere(run(backend, 2, "ddp.py", "uneven", "join", timeout=60), 2, "uneven join")


@pytest.mark.parametrize("backend", BACKENDS)
def test_uneven_inputs_without_join_are_a_named_error_not_a_hang(backend):
    start = time.monotonic()
    result = run(backend, 2, "ddp.py", "uneven", "nojoin", timeout=60, collective_timeout=20)
    assert time.monotonic() - start < 20
    output = "".join(result.outputs)
    assert not result.ok()
    assert re.search(r"stopped: CollectiveMismatchError: rank \d.*allreduce #20 \(sum, float64, 86 elements\).*"
                     r"allreduce #20 \(sum, float64, 1 elements\)", output), output
    assert "no error" not in output and "killed by the test harness" not in output


@pytest.mark.parametrize("backend", BACKENDS)
def test_rank_0_evaluating_alone_while_rank_1_shuts_down_is_named_within_2_seconds(backend):
    result = run(backend, 2, "ddp.py", "evaluate", timeout=60, collective_timeout=20)
    output = "".join(result.outputs)
    assert not result.ok()
    named = re.findall(r"rank \d: named after ([\d.]+) s: CollectiveMismatchError: .*allreduce #\d+ \(sum, float64, "
                       r"2 elements\).*barrier #\d+", output)  # both ranks, or the first under MPI (MPI_Abort)
    assert named and all(float(seconds) < 2 for seconds in named), output


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_finite_gradients_stop_every_rank_naming_rank_and_step_or_are_skipped_alike(backend):
    """3e38 on every rank averages to 3e38 (divided before summed, with or without allreduce_hook); summed first
    (a hook that does so), it overflows:
    skipped alike, or named; fp16 with an Inf and a NaN: bit-identical;
    "skip": both ranks skip step 3, replicas bit-identical, the
    parameters those of one process that left step 3 out; "error": every rank names rank 1 and step 3."""
    result = run(backend, 2, "ddp.py", "nonfinite", timeout=90)
    ran_everywhere(result, 2, "nonfinite")
    output = "".join(result.outputs)
    for rank in range(2):
        assert (f"rank {rank} stopped: rank {rank}: step 3: a NaN or Inf gradient on rank 1 (first non-finite "
                "parameter: rank 1: 4.bias)") in output, output
        assert f"rank {rank} stopped: rank {rank}: step 1: every rank's gradient was finite, but their average " \
               "overflowed to Inf in bias" in output, output


@pytest.mark.parametrize("backend", BACKENDS)
def test_buckets_of_two_dtypes_are_each_averaged_in_their_own_dtype(backend):
    ran_everywhere(run(backend, 3, "ddp.py", "mixeddtypes", timeout=60), 3, "mixeddtypes")


def mlp():
    dl.seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))


def test_buckets_follow_reverse_parameter_order_and_their_size():
    params = list(mlp().parameters())
    buckets = plan_buckets(params, bucket_bytes=100)
    assert [p for b in buckets for p in b.params] == params[::-1]
    assert all(b.grads.nbytes <= 100 or len(b.params) == 1 for b in buckets)
    assert len(plan_buckets(params, 1 << 20)) == 1


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_control_elements_tell_ranks_at_different_steps_where_a_plain_sum_would_not(dtype):
    def summed(*rows):  # what an allreduce "sum" of the ranks' control elements gives
        return np.sum(rows, axis=0, dtype=np.float64).astype(dtype)

    three, four, five = (control.template(s, dtype) for s in (3, 4, 5))
    nothing = np.zeros(control.CONTROL_SIZE, dtype)
    assert 3 + 5 == 4 + 4  # the sum of the step numbers would agree
    assert not control.steps_agree(control.counts(summed(three, five)))
    assert control.steps_agree(control.counts(summed(four, four)))
    assert control.agree_fully(summed(four, four), 2 * four) and not control.agree_fully(summed(three, five), 2 * five)
    joined = control.counts(summed(four, nothing, four))  # one rank out of data, in join()
    assert control.steps_agree(joined) and joined[control.ACTIVE] == 2
    assert not control.agree_fully(summed(four, nothing), 2 * four)
    assert [int(b) for b in control.template(0xBEEF, dtype)[control.STEP_BITS]] == [(0xBEEF >> i) & 1
                                                                                   for i in range(16)]


def test_grads_are_views_into_the_buckets_across_steps_and_zero_grad():
    model = mlp()
    ddp = dl.DistributedDataParallel(model, bucket_cap_mb=0.0002)
    optimizer = optim.SGD(ddp.parameters(), lr=0.1)
    x, y = dl.tensor(np.random.default_rng(0).random((8, 6), np.float32)), np.arange(8) % 3
    for set_to_none in (True, False, True):
        optimizer.zero_grad(set_to_none=set_to_none)
        nn.CrossEntropyLoss()(ddp(x), y).backward()
        for p in model.parameters():
            bucket = ddp._bucket_of[p]
            assert p.grad is bucket.views[p] and np.shares_memory(p.grad, bucket.flat)
        optimizer.step()


def test_a_world_of_one_trains_exactly_like_the_plain_model():
    plain, wrapped = mlp(), mlp()
    ddp = dl.DistributedDataParallel(wrapped)
    opt_a, opt_b = optim.Adam(plain.parameters(), lr=0.01), optim.Adam(ddp.parameters(), lr=0.01)
    rng = np.random.default_rng(1)
    for _ in range(5):
        x, y = dl.tensor(rng.random((8, 6), np.float32)), rng.integers(0, 3, 8)
        for model, opt in ((plain, opt_a), (ddp, opt_b)):
            opt.zero_grad()
            nn.CrossEntropyLoss()(model(x), y).backward()
            opt.step()
    for p, q in zip(plain.parameters(), wrapped.parameters()):
        np.testing.assert_array_equal(p.data, q.data)


def test_a_new_gradient_array_is_copied_into_its_bucket_and_freed_at_its_hook_not_at_the_end():
    """Where nothing overlaps (a world of one): a Conv2d returns a new array (no op writes into its bucket view);
    held until the end of backward, every such gradient would add to the peak memory of the pass."""
    dl.seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Tanh(), nn.Conv2d(3, 2, 3))
    plain = copy.deepcopy(model)
    ddp = dl.DistributedDataParallel(model)
    new_array, alive_later = [], []
    model[2].weight.register_post_accumulate_grad_hook(lambda p: new_array.append(weakref.ref(p.grad)))
    model[0].weight.register_post_accumulate_grad_hook(lambda p: alive_later.append(new_array[0]() is not None))
    x = dl.tensor(np.random.default_rng(0).standard_normal((2, 2, 7, 7)).astype(np.float32))
    ddp.zero_grad()  # the gradients are None: backward makes new arrays
    ddp(x).sum().backward()
    plain(x).sum().backward()
    assert alive_later == [False]  # conv2's weight gradient was gone by the time conv1's was final
    for p, q in zip(plain.parameters(), model.parameters()):
        np.testing.assert_array_equal(p.grad, q.grad)


def test_only_a_backward_that_reaches_the_model_finishes_its_gradient_averaging():
    ddp = dl.DistributedDataParallel(mlp())
    out = ddp(dl.tensor(np.ones((2, 6), np.float32)))
    other = dl.tensor(np.ones(3, np.float32), requires_grad=True)
    (other * 2).sum().backward()  # reaches no parameter of the model: its step is not over
    assert ddp.steps == 0
    nn.CrossEntropyLoss()(out, np.array([0, 1])).backward()
    assert ddp.steps == 1


def test_no_sync_accumulates_in_place():
    ddp = dl.DistributedDataParallel(mlp())
    x, y = dl.tensor(np.ones((2, 6), np.float32)), np.array([0, 1])
    nn.CrossEntropyLoss()(ddp(x), y).backward()
    once = [p.grad.copy() for p in ddp.parameters()]
    with ddp.no_sync():
        nn.CrossEntropyLoss()(ddp(x), y).backward()
    for p, g in zip(ddp.parameters(), once):
        np.testing.assert_allclose(p.grad, 2 * g, rtol=1e-6)


def test_state_dict_passes_through_to_a_plain_model_and_back():
    ddp = dl.DistributedDataParallel(mlp())
    state = ddp.state_dict()
    assert list(state) == list(mlp().state_dict())  # no "module." prefix
    plain = mlp()
    for p in plain.parameters():
        p.data[...] = 0.5
    ddp.load_state_dict(plain.state_dict())
    assert all(np.all(p.data == 0.5) for p in ddp.parameters())
    assert ddp.module.training and not ddp.eval().module.training


def test_sync_batchnorm_alone_is_batchnorm_and_its_gradients_check(float64):
    bn = nn.BatchNorm2d(3).to(np.float64)
    sync = nn.SyncBatchNorm.convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(3))).to(np.float64)[0]
    assert type(sync).__name__ == "SyncBatchNorm"
    x = np.random.default_rng(2).standard_normal((4, 3, 2, 2)) * 2 + 1
    np.testing.assert_allclose(sync(dl.tensor(x)).data, bn(dl.tensor(x)).data, rtol=1e-12)
    np.testing.assert_allclose(sync.running_var.data, bn.running_var.data, rtol=1e-12)
    module_gradcheck(sync, x)
    bn.load_state_dict(sync.state_dict())  # the gradient check ran many training passes
    sync.eval()
    np.testing.assert_allclose(sync(dl.tensor(x)).data, bn.eval()(dl.tensor(x)).data, rtol=1e-12)


@pytest.mark.parametrize("largest,size", [(1.0, 2), (3e38, 2), (1.7e308, 4), (1.7e308, 1 << 20)])
def test_the_fp16_hooks_scale_brings_the_largest_sum_just_under_float16s_maximum(largest, size):
    """Also where largest x size is past float64's maximum (a scale of 0 divided by zero there)."""
    scale = comm_hooks._scale(largest, size, np.float64)
    assert comm_hooks.FLOAT16_MAX / 2 < largest * scale * size <= comm_hooks.FLOAT16_MAX
    assert np.log2(scale) == int(np.log2(scale))  # a power of two: scaling loses no digits


def test_bad_arguments_are_refused_with_what_to_do():
    with pytest.raises(ValueError, match="nonfinite='ignore': use 'error'"):
        dl.DistributedDataParallel(mlp(), nonfinite="ignore")
    ddp = dl.DistributedDataParallel(mlp())
    with pytest.raises(TypeError, match="takes a callable hook"):
        ddp.register_comm_hook(None, "fp16")
    ddp.register_comm_hook(None, fp16_compress_hook)
    with pytest.raises(RuntimeError, match="already registered"):
        ddp.register_comm_hook(None, fp16_compress_hook)
