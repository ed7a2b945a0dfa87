"""Turning a list of samples into one batch."""

import numbers

import numpy as np

from distdl.backend import xp_of


def same_kind(sequence, values):
    """``values`` as a sequence of ``sequence``'s type: a tuple, a list, or a namedtuple (built from its fields)."""
    return type(sequence)(*values) if hasattr(sequence, "_fields") else type(sequence)(values)


def default_collate(samples):
    """Stack a list of samples into a batch, field by field.

    Arrays are stacked along a new first axis; numbers become a 1-D array; tuples,
    lists (namedtuples too) and dicts keep their structure with each field collated.
    """
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    first = samples[0]
    if isinstance(first, dict):
        return {key: default_collate([s[key] for s in samples]) for key in first}
    if isinstance(first, (tuple, list)):
        if any(len(s) != len(first) for s in samples):
            raise ValueError("cannot collate samples with different numbers of fields")
        return same_kind(first, [default_collate(list(field)) for field in zip(*samples)])
    if isinstance(first, numbers.Number) or hasattr(first, "shape"):
        shapes = {np.shape(s) for s in samples}
        if len(shapes) > 1:
            raise ValueError(f"cannot stack samples of different shapes {sorted(shapes)}: "
                             "pad them to one shape or pass a collate_fn")
        xp = xp_of(first)
        return xp.stack([xp.asarray(s) for s in samples])
    raise TypeError(f"default_collate does not know how to batch {type(first).__name__}; pass a collate_fn")
