"""The control elements at the end of every gradient bucket: DDP's checks ride in its own reduction.

Each rank writes, after its gradients: whether its gradients were finite, whether their
squared norm overflowed (only then can the sum of finite gradients overflow), whether it
had a batch this step (``join()``: a rank out of data sends zeros), and the 16 low
bits of its step number, each bit as one element worth 0 or 1. The bucket is reduced
with the gradients, so each element's sum comes back as the number of ranks that sent 1
(DDP sums on the host path and multiplies a hook's or a device's mean back): the counts
are exact small integers, and the ranks that had a batch agree on a bit exactly when its
count is 0 or the number of those ranks. No message of its own,
no extra round trip: the check of a step costs a few elements in a reduction that
happens anyway. A plain sum of step numbers could not tell {3, 5} from {4, 4}; bit by
bit it can. Only the first bucket carries the batch and step elements (the others'
stay zero); every bucket carries its two finiteness flags. (The bucket layout is fixed at
construction, and compared across ranks there.)
"""

import numpy as np

NONFINITE, LARGE, ACTIVE = 0, 1, 2  # positions of the three flags
STEP_BITS = slice(3, 19)
CONTROL_SIZE = 19
_BYTE_BITS = ((np.arange(256)[:, None] >> np.arange(8)) & 1).astype(np.float64)  # row b: the 8 bits of b


def template(step, dtype):
    """The control elements of the first bucket of ``step`` on a rank that had a batch (finite, so far)."""
    return templates(step >> 8, dtype)[step & 0xFF]


def templates(high, dtype):
    """The templates of the 256 steps whose second byte is ``high``, as rows: a step then costs a row lookup."""
    out = np.zeros((256, CONTROL_SIZE), dtype)
    out[:, ACTIVE] = 1
    out[:, STEP_BITS.start:STEP_BITS.start + 8] = _BYTE_BITS
    out[:, STEP_BITS.start + 8:STEP_BITS.stop] = _BYTE_BITS[high & 0xFF]
    return out


def agree_fully(sums, agreed):
    """The common case, in one comparison: every rank had a batch and is at this rank's step.

    Then each summed element is exactly ``agreed``'s: this rank's template times the number of ranks.
    """
    return sums[ACTIVE:].tobytes() == agreed[ACTIVE:].tobytes()


def counts(sums):
    """The summed control elements as integer counts of ranks."""
    return np.rint(np.asarray(sums, np.float64)).astype(np.int64)


def steps_agree(reduced):
    """Whether the ranks that had a batch are at one step; ``reduced`` holds counts (``counts``)."""
    bits = reduced[STEP_BITS]
    return bool(np.all((bits == 0) | (bits == reduced[ACTIVE])))
