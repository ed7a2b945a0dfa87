"""Allreduce among the ranks of one host through shared memory; ZeroMQ carries only the signals.

Over ``ipc://`` every byte is copied into a socket and out of it again, by ZeroMQ's
I/O threads, one segment at a time; here each rank of the group maps one segment of
every other rank's (a header page and two slots of ``DISTDL_ZMQ_SHM_BYTES``). Per chunk
of the array, each rank copies the pieces the others reduce into its own slot, signals,
reduces its own piece over the group's slots in rank order into its own slot, signals,
and copies the others' reduced pieces out. Piece i of every chunk lies in the array's
part i (the array cut in near-equal parts), so the same slots also serve the
hierarchical allreduce's in-node reduce-scatter and allgather.

Signals: a rank signals by storing its progress (the call's sequence number and the
step) in its header, after the call's signature; its peers spin on it briefly, then
sleep in growing pauses. A ZeroMQ message per signal cost 150-200 us here (ZeroMQ's I/O
threads must get a core), a store under a microsecond. This relies on stores becoming
visible in program order (x86-64); elsewhere the group keeps ipc://. While it waits, a
rank keeps the communicator's deadline and dead-peer detection, compares the peer's
signature at each call's first signal, and takes any ZeroMQ message a group peer sent
meanwhile as that peer having made another call: every wait ends, with a named error
if not with the data.

Trust: a segment is a file of this user's, mode 0600, with a random name, made in
/dev/shm (``DISTDL_ZMQ_SHM_DIR``) and reserved in full (a full /dev/shm fails at
once, not with a SIGBUS later); its name travels only over the authenticated ZeroMQ
channel; a peer's segment must be a regular file of this user's, 0600, of the size this
rank expects, or the allreduce fails naming it. Each rank unlinks its own file once
every peer has said it mapped it, so nothing is left in /dev/shm however the job ends
later. Where a rank cannot make or map one, every rank of the group keeps the
``ipc://`` ring, and says so once in the log.
"""

import contextlib
import logging
import mmap
import os
import platform
import secrets
import stat
import time

import numpy as np

from distdl import _env
from distdl.comm.errors import CollectiveMismatchError, ProtocolError
from distdl.comm.reduction import split_counts
from distdl.comm.signature import describe_signature, unpack_header

log = logging.getLogger("distdl.comm")

# Measured (2 ranks, slots of 256 KiB to 4 MiB interleaved in one job): 1 MiB took 64 MiB in 16.5 ms (4 MiB slots
# 39.5 ms: the slots leave the caches), 1-16 MiB within 5% of the best; 256 KiB was slower from 4 MiB (more signals).
DEFAULT_SLOT_BYTES = 1 << 20
LEAST_SLOT_BYTES = 4096
HEADER_BYTES = 4096  # a page of its own: the owner's progress, then its call's signature
ORDERED_STORES = platform.machine().lower() in ("x86_64", "amd64")  # a flag stored after data is seen after it
SPIN_SECONDS = 200e-6
LONGEST_PAUSE = 250e-6  # a late peer is seen within this; each wake-up costs a few microseconds of a core
REGION_ALIGN = 64  # bytes: a member's region of a slot starts at a multiple of it
PREFIX = "distdl-"
TOKEN_BYTES = 32  # the hex of 16 random bytes: the segment's name after PREFIX
OFF_TOKEN = b"-" * TOKEN_BYTES  # in place of a name: shared memory is off on this rank
NAMES_TAG, ACKS_TAG = 2 ** 32 - 3, 2 ** 32 - 2  # below signature.AGREE_TAG (2**32 - 1)
ALLGATHER_TAGS = 1 << 31  # the hierarchical allgather's steps come after every step of its reduce-scatter
MAPPED, UNAVAILABLE, REFUSED = 1, 0, 2  # what a rank says after mapping its peers' segments
U8 = np.dtype(np.uint8)


def slot_bytes():
    """The bytes of one slot (DISTDL_ZMQ_SHM_BYTES; 0 turns shared memory off), checked when a job first needs it."""
    return _env.number("DISTDL_ZMQ_SHM_BYTES", DEFAULT_SLOT_BYTES,
                       lambda value: value == 0 or value >= LEAST_SLOT_BYTES,
                       f"give a number of bytes, at least {LEAST_SLOT_BYTES} (default {DEFAULT_SLOT_BYTES}), or 0 "
                       "for ZeroMQ's ipc:// sockets instead of shared memory")


def directory():
    return os.environ.get("DISTDL_ZMQ_SHM_DIR", "/dev/shm")


def attach(comm, group, call):
    """The group's segments mapped here (a ``Segments``), or None where some rank has no shared memory.

    Every rank of ``group`` calls it in the same collective ``call``; they all get segments or all get None.
    """
    nbytes = slot_bytes()
    off = nbytes // len(group) < REGION_ALIGN  # 0, or too small a slot for this many ranks
    if not ORDERED_STORES:  # the host's, alike for every rank of the group
        if not off:
            log.warning("distdl: rank %d: shared-memory signals need x86-64's ordered stores, not %s; the allreduces "
                        "of ranks %s use ipc:// sockets", comm.rank, platform.machine(), group)
        return None
    peers = [r for r in group if r != comm.rank]
    total = HEADER_BYTES + 2 * nbytes
    path, own, reason = (None, None, None) if off else _create(total)
    try:
        token = OFF_TOKEN if off else os.path.basename(path)[len(PREFIX):].encode() if path else b"\0" * TOKEN_BYTES
        for peer in peers:
            comm._send(peer, call, NAMES_TAG, np.frombuffer(token, U8))
        tokens = {peer: bytes(comm._recv(peer, call, NAMES_TAG, U8, TOKEN_BYTES)) for peer in peers}
        mismatch = _on_off_mismatch(comm.rank, off, nbytes, tokens)
        if mismatch is not None:
            _close_all({}, own)
            raise mismatch
        if off:  # on every rank
            return None
        maps, status, refusal = {}, MAPPED if own is not None else UNAVAILABLE, None
        for peer, theirs in tokens.items():
            if status != MAPPED:
                break
            if theirs == b"\0" * TOKEN_BYTES:
                status, reason = UNAVAILABLE, f"rank {peer} could not make its segment"
                continue
            try:
                maps[peer] = _open(theirs, total, peer, comm.rank)
            except ProtocolError as exc:
                status, refusal = REFUSED, exc
            except OSError as exc:
                status, reason = UNAVAILABLE, f"rank {peer}'s segment cannot be mapped here ({exc})"
        for peer in peers:
            comm._send(peer, call, ACKS_TAG, np.array([status], U8))
        said = {peer: int(comm._recv(peer, call, ACKS_TAG, U8, 1)[0]) for peer in peers}
    finally:
        if path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # every peer has mapped it, or none will
    if refusal is not None:
        _close_all(maps, own)
        raise refusal
    refused = [peer for peer, s in said.items() if s == REFUSED]
    if refused:
        _close_all(maps, own)
        raise ProtocolError(f"rank {comm.rank}: rank(s) {refused} refused this rank's shared-memory segment "
                            "(their errors say why: a different DISTDL_ZMQ_SHM_BYTES, or a file not of this "
                            "user's); every rank must run the same distdl with the same settings")
    if status == MAPPED and all(s == MAPPED for s in said.values()):
        maps[comm.rank] = own
        return Segments(group, group.index(comm.rank), [maps[r] for r in group], nbytes)
    _close_all(maps, own)
    if reason is None:
        reason = f"rank(s) {[p for p, s in said.items() if s != MAPPED]} could not map every segment"
    log.warning("distdl: rank %d: no shared memory among ranks %s (%s); their allreduces use ipc:// sockets",
                comm.rank, group, reason)
    return None


def _on_off_mismatch(rank, off, nbytes, tokens):
    """The error that refuses, on every rank alike, a group whose ranks disagree on whether shared memory is on
    (one rank's DISTDL_ZMQ_SHM_BYTES=0 would otherwise leave the others waiting in a protocol it never enters),
    else None."""
    differ = [peer for peer, token in tokens.items() if (token == OFF_TOKEN) != off]
    if not differ:
        return None
    here, there = ("off", "on") if off else ("on", "off")
    return ProtocolError(f"rank {rank}: shared memory is {here} here (DISTDL_ZMQ_SHM_BYTES={nbytes} for "
                         f"{len(tokens) + 1} ranks) and {there} for rank(s) {differ}: every rank must run with the "
                         "same DISTDL_ZMQ_SHM_BYTES")


def _create(nbytes):
    """(path, mmap, None) of a new segment of this user's, reserved in full; (None, None, why) where it cannot be."""
    path = os.path.join(directory(), PREFIX + secrets.token_hex(TOKEN_BYTES // 2))
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        return None, None, f"cannot make a segment in {directory()}: {exc}"
    try:
        os.posix_fallocate(fd, 0, nbytes)
        return path, mmap.mmap(fd, nbytes), None
    except OSError as exc:
        os.unlink(path)
        return None, None, f"cannot reserve {nbytes} bytes in {directory()}: {exc}"
    finally:
        os.close(fd)


def _open(token, nbytes, peer, rank):
    """Map ``peer``'s segment, refusing (ProtocolError) one that is not this user's private file of ``nbytes``."""
    name = token.decode("ascii", "replace")
    if len(name) != TOKEN_BYTES or any(c not in "0123456789abcdef" for c in name):
        raise ProtocolError(f"rank {rank}: rank {peer} named a shared-memory segment {name!r}, not one distdl makes")
    path = os.path.join(directory(), PREFIX + name)
    fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
            raise ProtocolError(f"rank {rank}: rank {peer}'s shared-memory segment {path} is not a private file of "
                                f"this user's (mode {stat.filemode(info.st_mode)}, owner {info.st_uid}): refused")
        if info.st_size != nbytes:
            raise ProtocolError(f"rank {rank}: rank {peer}'s shared-memory segment {path} has {info.st_size} bytes "
                                f"where this rank expects {nbytes} ({HEADER_BYTES} + 2 x DISTDL_ZMQ_SHM_BYTES): "
                                "refused; every rank must run the same distdl with the same settings")
        return mmap.mmap(fd, nbytes)
    finally:
        os.close(fd)


def _close_all(maps, own):
    for segment in list(maps.values()) + ([own] if own is not None else []):
        segment.close()


class Segments:
    """Every group member's segment, mapped: two slots each, a slot being one region per member."""

    def __init__(self, group, position, maps, nbytes):
        self.group, self.position, self.slot_bytes = group, position, nbytes
        self._maps = maps
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        self._spin = SPIN_SECONDS if len(group) <= cores else 0.0  # more ranks than cores: a spin holds up a peer
        self._headers = [np.frombuffer(m, np.int64, 7) for m in maps]  # progress, then the signature
        self._views = {}

    def _slots(self, dtype):
        """Per member, its (2, members, piece) array of ``dtype`` over its segment.

        Each region starts at the same byte whatever the dtype (a multiple of 64 bytes: aligned for every
        dtype, a cache line of its own): a call of one dtype never writes into the region that a peer may
        still be reading from the last call of another.
        """
        if dtype not in self._views:
            members = len(self.group)
            region = self.slot_bytes // members // REGION_ALIGN * REGION_ALIGN
            self._views[dtype] = [np.ndarray((2, members, region // dtype.itemsize), dtype, m, HEADER_BYTES,
                                             (members * region, region, dtype.itemsize)) for m in self._maps]
        return self._views[dtype]

    def _chunks(self, flat, alternate):
        """Per chunk: its slot views (the two slots in turn if ``alternate``, else the first) and (start, stop)
        of its piece in each member's part of ``flat``."""
        slots = self._slots(flat.dtype)
        piece = slots[0].shape[2]
        starts = np.concatenate([[0], np.cumsum(split_counts(flat.size, len(self.group)))]).tolist()
        chunks = -(-(starts[1] - starts[0]) // piece)
        for k in range(chunks):
            yield [view[k % 2 if alternate else 0] for view in slots], [(a + k * piece, min(a + (k + 1) * piece, b))
                                                                         for a, b in zip(starts[:-1], starts[1:])]

    def _signal(self, comm, call, tag):
        """Tell every peer this rank reached step ``tag`` of ``call``, and wait until each of them has too.

        A call's steps must be numbered in the order they are taken: a peer is past a step when its
        progress is at least the step's.
        """
        mine = self._headers[self.position]
        mine[1:] = call
        mine[0] = progress = (call[0] << 32) + tag + 1
        for i, peer in enumerate(self.group):
            if i != self.position:
                self._wait(comm, call, tag, self._headers[i], peer, progress)

    def _wait(self, comm, call, tag, header, peer, progress):
        start = time.monotonic()
        spin_until = start + (0 if comm._calls.is_current() else self._spin)  # no spin beside the caller's work
        pause = 0.0
        while header[0] < progress:
            now = time.monotonic()
            if now < spin_until:
                continue
            comm._stash_arrived(call)
            if header[0] >= progress:
                break
            if comm._stash[peer]:
                got, _, got_tag = unpack_header(comm._stash[peer][0][0].bytes)
                raise CollectiveMismatchError(
                    f"rank {comm.rank} called {describe_signature(call)} but rank {peer} sent its part of "
                    f"{describe_signature(got)} (step tag {got_tag}); every rank must call the same collectives in "
                    "the same order with the same op, dtype, size and root")
            comm._check_peer(peer, call, now - start)
            if pause:
                time.sleep(pause)
            else:
                os.sched_yield()  # the peer may be waiting for this core
            pause = min(2 * pause + 10e-6, LONGEST_PAUSE)
        if tag == 0 and tuple(header[1:].tolist()) != tuple(call):  # a call's first signal is never its last:
            raise CollectiveMismatchError(  # the peer is still in this call, its signature still there
                f"rank {comm.rank} called {describe_signature(call)} but rank {peer} made "
                f"{describe_signature(header[1:].tolist())} at the same time; every rank must call the same "
                "collectives in the same order with the same op, dtype, size and root")

    def _reduce_piece(self, slots, pieces, flat, ufunc):
        """This member's piece reduced over every member in rank order, into its own slot and into ``flat``."""
        me = self.position
        a, b = pieces[me]
        out = slots[me][me, :b - a]
        inputs = [flat[a:b] if i == me else slot[me, :b - a] for i, slot in enumerate(slots)]
        ufunc(inputs[0], inputs[1], out=out)
        for x in inputs[2:]:
            ufunc(out, x, out=out)
        flat[a:b] = out

    def _copy_in(self, slots, pieces, flat):
        mine = slots[self.position]
        for i, (a, b) in enumerate(pieces):
            if i != self.position:
                mine[i, :b - a] = flat[a:b]

    def _copy_out(self, slots, pieces, flat):
        for i, (a, b) in enumerate(pieces):
            if i != self.position:
                flat[a:b] = slots[i][i, :b - a]

    def allreduce(self, comm, flat, ufunc, call):
        """Reduce ``flat`` in place over the group.

        One slot serves every chunk (fewer bytes in the caches): it is written again only after a
        signal that says every reader is done with it. The pieces a peer reduces are read before
        that peer's second signal, a reduced piece before the peers' first signal of the next
        chunk (or call).
        """
        for k, (slots, pieces) in enumerate(self._chunks(flat, alternate=False)):
            self._copy_in(slots, pieces, flat)
            self._signal(comm, call, 2 * k)
            self._reduce_piece(slots, pieces, flat, ufunc)
            self._signal(comm, call, 2 * k + 1)
            self._copy_out(slots, pieces, flat)

    def reduce_scatter(self, comm, flat, ufunc, call):
        """Leave this member's part of ``flat`` reduced over the group (the other parts as they were).

        One signal per chunk: the two slots alternate, and a peer's signal for chunk k+1 says it is
        done reading chunk k's slot.
        """
        for k, (slots, pieces) in enumerate(self._chunks(flat, alternate=True)):
            self._copy_in(slots, pieces, flat)
            self._signal(comm, call, k)
            self._reduce_piece(slots, pieces, flat, ufunc)

    def allgather(self, comm, flat, call):
        """Every member's part of ``flat`` copied from its owner's slots into every other member's ``flat``."""
        me = self.position
        for k, (slots, pieces) in enumerate(self._chunks(flat, alternate=True)):
            a, b = pieces[me]
            slots[me][me, :b - a] = flat[a:b]
            self._signal(comm, call, ALLGATHER_TAGS + k)
            self._copy_out(slots, pieces, flat)

    def close(self):
        self._views.clear()
        self._headers.clear()
        for segment in self._maps:
            try:
                segment.close()
            except BufferError:
                pass  # a failed call's traceback still holds a view: the mapping goes with it, the file is long gone
