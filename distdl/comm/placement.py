"""Which device a worker computes on: ``dl.init()`` binds each worker to one GPU, or to the host.

With ``device="auto"`` (the default) a worker uses GPU ``local_rank % GPUs`` when CuPy is installed
and sees a GPU, so ``mpirun``/``distdl-run`` with one worker per GPU needs no code (torch leaves the
choice to ``torch.cuda.set_device``, Horovod to the user; the one-GPU-per-worker rule they recommend
is the default here). Binding only says which GPU "cuda" means in this process and in every thread
distdl starts: a model on the host stays there until ``model.to("cuda")``. ``DISTDL_DEVICE`` (cpu,
sim, cuda, cuda:N) wins over ``init(device=...)``, so a launch can pin it without editing the script.
"""

import logging
import os

from distdl import backend, device

log = logging.getLogger("distdl.comm")

DEVICES = ("auto", "cpu", "sim", "cuda", "cuda:N")


def choose_device(requested, local_rank, gpus):
    """The device spec (cpu, sim, cuda:N) a worker of ``local_rank`` binds to when ``gpus`` GPUs are seen, and why."""
    if requested == "auto":
        if not gpus:
            return "cpu", "no GPU seen by CuPy"
        return f"cuda:{local_rank % gpus}", _gpu_reason(local_rank, gpus)
    if requested in ("cpu", "sim"):
        return requested, "asked for"
    try:
        _, index = backend.parse_device(requested)
    except ValueError:
        raise ValueError(f"unknown device {requested!r}: use one of {', '.join(DEVICES)}") from None
    if not gpus:
        backend.cupy_with_a_gpu(f"device={requested!r}")  # without CuPy, what to install; else what to check
        raise RuntimeError(f"a GPU was asked for (device={requested!r}) but none was counted here")
    if index is not None:
        if index >= gpus:
            raise ValueError(f"device={requested!r}, but CuPy sees {gpus} GPU{'s' * (gpus != 1)} here (cuda:0 to "
                             f"cuda:{gpus - 1}); check CUDA_VISIBLE_DEVICES="
                             f"{os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')}, or use device='cuda' "
                             "(GPU local_rank % GPUs)")
        return f"cuda:{index}", "asked for"
    return f"cuda:{local_rank % gpus}", _gpu_reason(local_rank, gpus)


def _gpu_reason(local_rank, gpus):
    return f"local rank {local_rank} % {gpus} GPU{'s' * (gpus != 1)}"


def place(requested, comm):
    """Bind this process to its device (see the module's docstring) and say so once, at info level."""
    chosen = os.environ.get("DISTDL_DEVICE") or requested
    gpus = backend.gpu_count() if chosen not in ("cpu", "sim") else 0
    try:
        spec, reason = choose_device(chosen, comm.local_rank, gpus)
    except (RuntimeError, ValueError) as exc:
        if chosen == requested:
            raise
        raise type(exc)(f"DISTDL_DEVICE={chosen} (it wins over init(device=...)): {exc}") from None
    if chosen != requested:
        reason = f"DISTDL_DEVICE={chosen}" + (f", {reason}" if reason != "asked for" else "")
    if spec.startswith("cuda") and comm.local_size > gpus > 0:
        reason += f", shared by {-(-comm.local_size // gpus)} local ranks"
    bound = _bind(spec)
    log.info("distdl: rank %d computes on %s (%s)", comm.rank, bound, reason)
    return bound


def _bind(spec):
    """``device.bind(spec)``, the variable set aside: ``bind`` would take DISTDL_DEVICE as written, but "cuda"
    there means this rank's GPU (``spec``), not CuPy's current one."""
    environment = os.environ.pop("DISTDL_DEVICE", None)
    try:
        return device.bind(spec)
    finally:
        if environment is not None:
            os.environ["DISTDL_DEVICE"] = environment
