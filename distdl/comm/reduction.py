"""The arithmetic both transports share: the ufunc of each op, the mean's last division, near-equal parts."""

import numpy as np

UFUNCS = {"sum": np.add, "mean": np.add, "max": np.maximum, "min": np.minimum, "prod": np.multiply}


def finish_mean(array, size):
    """Turn a sum into the mean in place; integer means round down, as floor division does."""
    if array.dtype.kind == "f":
        array /= array.dtype.type(size)
    else:
        np.floor_divide(array, size, out=array)


def split_counts(count, parts):
    """Element counts of ``count`` cut into ``parts`` near-equal parts (the first ones one larger)."""
    base, extra = divmod(count, parts)
    return [base + (i < extra) for i in range(parts)]
