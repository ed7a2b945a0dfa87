"""The checkpoint's meta.json, checked member by member: whatever a file holds, the answer is a named error.

The checks mirror what ``save_checkpoint`` writes, so a file that passes them has the
shape the loader expects: no KeyError, AttributeError or RecursionError can escape
later, and the manifest's arrays add up to no more bytes than the file holds.
"""

import json
import math
import re

import numpy as np

from distdl import rng
from distdl.checkpoint.errors import CheckpointCorruptError, CheckpointError
from distdl.version import __version__

FORMAT = "distdl-checkpoint"
FORMAT_VERSION = 2  # 2: the RNG states are distdl.rng's (seed, counter); 1 held NumPy PCG64 states
MAX_DEPTH = 64  # the format needs 6 levels; the rest is room for nested extra fields
MAX_DIMS = 64
MEMBERS = ("format", "format_version", "distdl_version", "saved_at", "step", "epoch", "world_size", "rng",
           "model", "optimizer", "scheduler", "sampler", "extra", "manifest")
ENTRY = ("member", "shape", "dtype", "sha256")
_MEMBER_NAME = re.compile(r"^arrays/\d{6}\.npy$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def parse(path, raw):
    """The metadata in the bytes ``raw`` of ``path``'s meta.json, checked."""
    try:
        meta = json.loads(raw)
    except RecursionError:
        raise CheckpointCorruptError(f"{path}: its meta.json nests deeper than a checkpoint ever does") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise CheckpointCorruptError(f"{path}: its meta.json is not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a distdl checkpoint (its meta.json names no distdl format)")
    version = meta.get("format_version")
    if not _is_int(version):
        raise CheckpointCorruptError(f"{path}: its format_version is {version!r}, not a number")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: written in checkpoint format {version} by distdl "
                              f"{meta.get('distdl_version')}; this distdl {__version__} reads format "
                              f"{FORMAT_VERSION} at most: upgrade distdl")
    _check(path, meta)
    return meta


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _fail(path, what):
    raise CheckpointCorruptError(f"{path}: its meta.json {what}")


def _check(path, meta):
    _depth(path, meta)
    _exact_members(path, meta, MEMBERS, "")
    for name, kinds in (("distdl_version", str), ("saved_at", (int, float)), ("rng", list), ("extra", dict),
                        ("manifest", dict)):
        if not isinstance(meta[name], kinds) or isinstance(meta[name], bool):
            _fail(path, f"has {name} of type {type(meta[name]).__name__}")
    for name in ("step", "epoch"):
        if meta[name] is not None and not _is_int(meta[name]):
            _fail(path, f"has {name} {meta[name]!r}, neither a whole number nor null")
    for name in ("model", "optimizer", "scheduler", "sampler"):
        if meta[name] is not None and not isinstance(meta[name], dict):
            _fail(path, f"has {name} of type {type(meta[name]).__name__}, neither an object nor null")
    if not _is_int(meta["world_size"]) or meta["world_size"] < 1:
        _fail(path, f"has world_size {meta['world_size']!r}")
    if len(meta["rng"]) != meta["world_size"]:
        _fail(path, f"does not hold one RNG state per rank of its world of {meta['world_size']}")
    for rank, state in enumerate(meta["rng"]):
        _rng_state(path, rank, state, meta["format_version"])
    members = set()
    for name, entry in meta["manifest"].items():
        _entry(path, name, entry)
        if entry["member"] in members:
            _fail(path, f"names member {entry['member']} twice")
        members.add(entry["member"])
    for part in ("model", "optimizer", "extra"):
        for reference in _references(meta[part]):
            if reference not in meta["manifest"]:
                _fail(path, f"refers to array {reference!r}, which its manifest does not list")


def _rng_state(path, rank, state, version):
    """Refuse an RNG state that distdl could not restore: ``distdl.rng``'s, or NumPy PCG64's in format 1."""
    try:
        if version >= 2:
            rng.check_state(state)
        else:
            np.random.PCG64().state = state  # PCG64 itself checks the members, and raises if one is missing
    except (AttributeError, TypeError, ValueError, KeyError, OverflowError) as exc:
        _fail(path, f"has an RNG state for rank {rank} that does not fit ({exc})")


def _exact_members(path, value, names, where):
    missing, extra = [n for n in names if n not in value], sorted(set(value) - set(names))
    problems = ([f"missing members {missing}"] if missing else []) + ([f"unexpected members {extra}"] if extra else [])
    if problems:
        _fail(path, f"{where}has {' and '.join(problems)}")


def _depth(path, meta):
    """Refuse nesting deeper than MAX_DEPTH, walking without recursion."""
    stack = [(meta, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            _fail(path, f"nests deeper than {MAX_DEPTH} levels; no checkpoint needs that")
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))


def _references(tree):
    """The array names that ``tree`` refers to as {"__array__": name} (depth already bounded)."""
    stack = [tree]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            if set(value) == {"__array__"}:
                yield value["__array__"]
            else:
                stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)


def _entry(path, name, entry):
    if not isinstance(entry, dict):
        _fail(path, f"has manifest entry {name!r} of type {type(entry).__name__}")
    _exact_members(path, entry, ENTRY, f"manifest entry {name!r} ")
    member, shape, sha256 = entry["member"], entry["shape"], entry["sha256"]
    if not isinstance(member, str) or not _MEMBER_NAME.match(member):
        _fail(path, f"names member {member!r} for array {name!r}; distdl names them arrays/NNNNNN.npy")
    if (not isinstance(shape, list) or len(shape) > MAX_DIMS
            or not all(_is_int(n) and n >= 0 for n in shape)):
        _fail(path, f"has shape {shape!r} for array {name!r}")
    if not isinstance(sha256, str) or not _SHA256.match(sha256):
        _fail(path, f"has no SHA-256 for array {name!r}")
    dtype(path, name, entry)


def dtype(path, name, entry):
    """The NumPy dtype of a manifest entry: plain numbers, booleans or times only, never objects or records."""
    try:
        result = np.dtype(entry["dtype"]) if isinstance(entry["dtype"], str) else None
    except (TypeError, ValueError):
        result = None
    if result is None or result.kind not in "biufcmM" or result.fields is not None or result.subdtype is not None:
        _fail(path, f"has dtype {entry['dtype']!r} for array {name!r}; a checkpoint holds plain number arrays")
    return result


def nbytes(path, name, entry):
    """The bytes the entry's shape and dtype need (exact integers: no overflow)."""
    return math.prod(entry["shape"]) * dtype(path, name, entry).itemsize
