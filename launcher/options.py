"""Values of distdl-run's options, with the names torchrun, mpirun and horovodrun users know, as argparse types.

Each refusal says what is allowed.
"""

import argparse
import os
import re

from launcher.hosts import HostsError, parse_hosts
from launcher.spec import BOTH_STREAMS


def gpu_count():
    """The GPUs this process may use: CUDA_VISIBLE_DEVICES where set, else the NVIDIA driver's list, else 0."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and not d.strip().startswith("-")])
    try:
        return len(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        return 0


def workers_value(text):
    """torchrun's --nproc-per-node: a count, or auto (the GPUs if any, else the cores), gpu, cpu."""
    if text in ("auto", "gpu", "cpu"):
        gpus = gpu_count()
        if text == "gpu" and not gpus:
            raise argparse.ArgumentTypeError("gpu: this machine has no GPU (give a number, auto or cpu)")
        return gpus if gpus and text != "cpu" else len(os.sched_getaffinity(0))
    return positive(text)


def _whole_number(text, least, allowed):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"{value}: give {allowed}")
    return value


def positive(text):
    return _whole_number(text, 1, "at least 1")


def non_negative(text):
    return _whole_number(text, 0, "0 or more")


def nodes_value(text):
    """torchrun's --nnodes N or MIN:MAX; a distdl job has a fixed size, so only N or N:N."""
    low, _, high = text.partition(":")
    if high and high != low:
        raise argparse.ArgumentTypeError(f"{text}: elastic node ranges are not supported (a distdl job keeps "
                                         "its size); give --nnodes N")
    return positive(low)


def endpoint_value(text):
    """torchrun's --rdzv-endpoint HOST:PORT."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r}: give HOST:PORT, a port from 1 to 65535")
    return host, int(port)


def ranks_value(text):
    """torchrun's --local-ranks-filter 0,2: the local ranks whose output is shown."""
    try:
        ranks = {int(r) for r in text.split(",")}
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give local ranks separated by commas, e.g. 0 or 0,1") from None
    if min(ranks) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: local ranks are 0 or more")
    return ranks


TEE_STREAMS = {"0": frozenset(), "1": frozenset({"stdout"}), "2": frozenset({"stderr"}), "3": BOTH_STREAMS}


def tee_value(text):
    """torchrun's --tee: 0 none, 1 stdout, 2 stderr, 3 both, or per local rank (0:3,1:1; a rank not named: none).

    Returns {local rank: the streams}, the key None standing for every local rank.
    """
    if re.fullmatch(r"[0-3]", text):
        return {None: TEE_STREAMS[text]}
    if re.fullmatch(r"\d+:[0-3](,\d+:[0-3])*", text):
        return {int(rank): TEE_STREAMS[value] for rank, value in (part.split(":") for part in text.split(","))}
    raise argparse.ArgumentTypeError(f"{text!r}: give 0 (none), 1 (stdout), 2 (stderr), 3 (both), or per local "
                                     "rank as 0:3,1:1")


def hosts_value(text):
    """horovodrun's and mpirun's -H a:2,b:2."""
    try:
        return parse_hosts(text)
    except HostsError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
