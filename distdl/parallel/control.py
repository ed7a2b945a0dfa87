"""The control elements at the end of every gradient bucket: DDP's checks ride in its own reduction.

Each rank writes, after its gradients: whether its gradients were finite, whether it
had a batch this step (``join()``: a rank out of data sends zeros), and the bits of
its step number and of its bucket layout, each bit as one element worth 0 or 1. The
bucket is averaged like the gradients, so each element comes back as (number of
ranks that sent 1) / size: the counts are exact small integers, and the ranks that
had a batch agree on a bit exactly when its count is 0 or the number of those ranks.
No message of its own, no extra round trip: the check of a step costs a few elements
in a reduction that happens anyway. A plain sum could not tell {3, 5} from {4, 4};
bit by bit it can.
"""

import zlib

import numpy as np

NONFINITE, ACTIVE = 0, 1  # positions of the two flags
BITS = 16
STEP_BITS = slice(2, 2 + BITS)
LAYOUT_BITS = slice(2 + BITS, 2 + 2 * BITS)
CONTROL_SIZE = 2 + 2 * BITS
_POWERS = 1 << np.arange(BITS)


def layout_code(layout):
    """A 16-bit digest of a bucket layout's text."""
    return zlib.crc32(layout.encode()) & 0xFFFF


def fill(control, active, nonfinite, step, layout):
    """Write this rank's control elements; a rank without a batch (``active`` false) contributes zeros only."""
    control[...] = 0
    if active:
        control[NONFINITE] = 1 if nonfinite else 0
        control[ACTIVE] = 1
        control[STEP_BITS] = (step & 0xFFFF) & _POWERS > 0
        control[LAYOUT_BITS] = layout & _POWERS > 0


def counts(control, size):
    """The averaged control elements back as counts of ranks."""
    return np.rint(np.asarray(control, np.float64) * size).astype(np.int64)


def agreement(reduced):
    """Which of step and layout the ranks that had a batch disagree on (an empty list when they agree)."""
    active = reduced[ACTIVE]
    differ = []
    for name, bits in (("step", STEP_BITS), ("bucket layout", LAYOUT_BITS)):
        if not np.all((reduced[bits] == 0) | (reduced[bits] == active)):
            differ.append(name)
    return differ
