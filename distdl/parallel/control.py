"""The control elements at the end of every gradient bucket: DDP's checks ride in its own reduction.

Each rank writes, after its gradients: whether its gradients were finite, whether it
had a batch this step (``join()``: a rank out of data sends zeros), and the bits of
its step number and of its bucket layout, each bit as one element worth 0 or 1. The
bucket is averaged like the gradients, so each element comes back as (number of
ranks that sent 1) / size: the counts are exact small integers, and the ranks that
had a batch agree on a bit exactly when its count is 0 or the number of those ranks.
No message of its own, no extra round trip: the check of a step costs a few elements
in a reduction that happens anyway. A plain sum could not tell {3, 5} from {4, 4};
bit by bit it can. Only the first bucket carries the step, layout and batch elements
(the others' stay zero); every bucket carries its finiteness flag.
"""

import zlib

import numpy as np

NONFINITE, ACTIVE = 0, 1  # positions of the two flags
BITS = 16
STEP_BITS = slice(2, 2 + BITS)
LAYOUT_BITS = slice(2 + BITS, 2 + 2 * BITS)
CONTROL_SIZE = 2 + 2 * BITS
_BYTE_BITS = ((np.arange(256)[:, None] >> np.arange(8)) & 1).astype(np.float64)  # row b: the 8 bits of b


def layout_code(layout):
    """A 16-bit digest of a bucket layout's text."""
    return zlib.crc32(layout.encode()) & 0xFFFF


def template(step, layout, dtype):
    """The control elements of the first bucket of ``step`` on a rank that had a batch (finite, so far)."""
    out = np.zeros(CONTROL_SIZE, dtype)
    out[ACTIVE] = 1
    for start, value in ((STEP_BITS.start, step), (LAYOUT_BITS.start, layout)):
        out[start:start + 8] = _BYTE_BITS[value & 0xFF]
        out[start + 8:start + 16] = _BYTE_BITS[(value >> 8) & 0xFF]
    return out


def agree_fully(reduced, mine):
    """The common case, in one comparison: every rank had a batch and agrees with this one on step and layout.

    Then each averaged element is exactly this rank's 0 or 1 (n/n is exactly 1).
    """
    return reduced[ACTIVE:].tobytes() == mine[ACTIVE:].tobytes()


def counts(control, size):
    """The averaged control elements back as counts of ranks."""
    return np.rint(np.asarray(control, np.float64) * size).astype(np.int64)


def agreement(reduced):
    """Which of step and layout the ranks that had a batch disagree on (an empty list when they agree).

    ``reduced`` holds counts (``counts``).
    """
    active = reduced[ACTIVE]
    differ = []
    for name, bits in (("step", STEP_BITS), ("bucket layout", LAYOUT_BITS)):
        if not np.all((reduced[bits] == 0) | (reduced[bits] == active)):
            differ.append(name)
    return differ
