"""Nested state (dicts and lists of arrays, Tensors and JSON values) to a JSON skeleton and named arrays, and back.

An array leaf becomes ``{"__array__": name}`` in the skeleton. Device (CuPy) arrays
are collected as they are, never through ``.data`` (a CuPy array's ``.data`` is a
MemoryPointer, which would be stored as a 0-d object array), and ``to_host`` then
brings them over in a few packed copies.
"""

import numpy as np

from distdl import backend


def leaf_array(value):
    """The array a leaf holds, or None when it is no array: a Tensor's data, a device array as it is."""
    from distdl.autograd import Tensor  # here, not above: distdl's package imports reach checkpoint before autograd

    if isinstance(value, Tensor):
        value = value.data
    if backend.is_gpu_array(value):
        return value
    return np.asarray(value) if hasattr(value, "shape") else None  # NumPy arrays and scalars, and array-likes


def split(tree, prefix, arrays):
    """``tree`` with every array replaced by a reference; the arrays collected into ``arrays`` by path."""
    if isinstance(tree, dict):
        return {str(k): split(v, f"{prefix}/{k}", arrays) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [split(v, f"{prefix}/{i}", arrays) for i, v in enumerate(tree)]
    array = leaf_array(tree)
    if array is None:
        return tree
    arrays[prefix] = array
    return {"__array__": prefix}


def to_host(arrays):
    """The dict of named arrays with every one a C-ordered NumPy array (device arrays packed per device and dtype)."""
    host = backend.gather_to_host(list(arrays.values()))
    return {name: np.asarray(a, order="C") for name, a in zip(arrays, host)}  # 0-d stays 0-d


def join(tree, arrays, device=None):
    """The tree with its array references replaced by the arrays, moved to ``device`` when one is given.

    Depth and references were checked by ``schema``.
    """
    if isinstance(tree, dict):
        if set(tree) == {"__array__"}:
            array = arrays[tree["__array__"]]
            return array if device is None else backend.to_device(array, device)
        return {k: join(v, arrays, device) for k, v in tree.items()}
    if isinstance(tree, list):
        return [join(v, arrays, device) for v in tree]
    return tree
