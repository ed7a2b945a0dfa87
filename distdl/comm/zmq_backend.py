"""Collectives over ZeroMQ (pyzmq), for where MPI is missing or broken.

Transport: every rank binds one PULL inbox (TCP on the interface that reaches the
master, and an abstract-namespace ipc:// socket, which leaves no file, for peers on
the same host and network namespace) and connects one PUSH socket to every peer's
inbox. Only the job's ranks get a connection in (``security``: a one-time
credential, or CURVE, vetted by the context's ZAP handler), and each message says
which rank's connection it came by. Messages are [header, payload]: the header
says who sent it and which collective call it belongs to (the ``signature``: seq,
collective, op, dtype, count, root; and a tag for the step and segment). The
receiver checks every frame against the call it is making: the sender against the
connection, the signature, the tag, the payload's length; so mismatched calls
across ranks fail with an error naming both calls. No frame is larger than a
segment (``ZMQ_MAXMSGSIZE``). Large payloads leave without a copy (tracked, so the
array is not handed back before ZeroMQ is done with it).

Waiting: where the rank has a second core for ZeroMQ's I/O thread, a receive first
polls without blocking for a short spin (waking a process blocked in the kernel costs
tens of microseconds, the price of a small message); then, or at once, it blocks in
bounded polls. Every wait has a deadline (DISTDL_TIMEOUT), and a
monitor on each outgoing connection reports a peer whose process went away.

Algorithms: allreduce is recursive doubling up to ``small_bytes`` (latency bound,
log2(n) exchanges); above, where every rank is on one host, it runs through shared
memory (``shared_memory``: copies and signals, no socket), else a ring (reduce-scatter
then allgather, bandwidth optimal), in segments so that receiving, reducing and
forwarding overlap; on several nodes of several ranks each the ring is hierarchical
(``hierarchical``: within the node, in shared memory where it can, across nodes,
within the node). Each
element is reduced in one fixed order, so every rank ends bit-identical.
Broadcast and gather first compare every rank's signature (an allgather of it),
so ranks that name different roots all fail alike.
"""

import os
import secrets
import socket
import sys
import time
from collections import deque

import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from distdl import _env
from distdl.comm import hierarchical, rendezvous, security, shared_memory
from distdl.comm.base import Communicator
from distdl.comm.errors import CollectiveMismatchError, CollectiveTimeoutError, PeerLostError, ProtocolError
from distdl.comm.reduction import UFUNCS, finish_mean, split_counts
from distdl.comm.signature import HEADER, check_agreed, describe_signature, pack_header, signature, unpack_header
from distdl.comm.threads import cores_per_rank

SPIN_SECONDS = 200e-6  # where a rank has a core for itself and one for ZeroMQ's I/O thread (spin_seconds)
POLL_MS = 50  # a blocked receive wakes this often to check deadlines and lost peers
LOST_GRACE_SECONDS = 0.2  # messages a dead peer sent just before dying may still be on their way
ZERO_COPY_BYTES = 64 * 1024
SMALL_BYTES = int(os.environ.get("DISTDL_ZMQ_SMALL_BYTES", 64 * 1024))
# Measured (bench_allreduce.py, 2 ranks): 4 MiB segments took 16 MiB from 21-37 ms (512 KiB) to 17 ms, 64 MiB
# from 98 ms to 42-68 ms; fewer, larger frames cost less per byte, and 4 MiB still pipelines a ring's parts.
SEGMENT_BYTES = int(os.environ.get("DISTDL_ZMQ_SEGMENT_BYTES", 4 << 20))
HIERARCHICAL = os.environ.get("DISTDL_ZMQ_HIERARCHICAL", "auto")  # auto | on | off: see hierarchical.py
MAX_FRAME_BYTES = max(SMALL_BYTES, SEGMENT_BYTES, HEADER.size)  # the largest frame a peer may send
WIRE_OVERHEAD_BYTES = 256  # what CURVE adds to a frame on the wire (command name, nonce, MAC, flags)
STEP = 65536  # tag = step * STEP + segment
FAILED_LINGER_MS = 1000
AGREE_TAG = 2 ** 32 - 1  # the tag of the signature exchange before a broadcast or gather
SIGNATURE_DTYPE = np.dtype(np.int64)


def reachable_address(master_addr):
    """The local address of the interface that routes to ``master_addr`` (loopback for a local job)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect((master_addr, 9))  # UDP connect sends nothing; it only picks the route
        return probe.getsockname()[0]
    finally:
        probe.close()


def spin_seconds(local_size):
    """How long a receive polls before it blocks: SPIN_SECONDS where this rank has two cores (its own and one
    for ZeroMQ's I/O thread, which must run for a message to arrive), else none: a spinning rank would hold
    the core its I/O thread or a peer waits for. DISTDL_ZMQ_SPIN_US sets it (0: never spin), e.g. where ranks
    share cores that their host does not know of (an emulated cluster's nodes on one machine)."""
    micro = _env.number("DISTDL_ZMQ_SPIN_US", None, lambda value: 0 <= value <= 1e6,
                        "give the microseconds a receive polls before it blocks, 0 to 1000000 (0: never)", float)
    if micro is None:
        return SPIN_SECONDS if cores_per_rank(local_size) >= 2 else 0.0
    return micro * 1e-6


def network_namespace():
    """This process's network namespace (abstract ipc sockets are reachable only inside it), or None."""
    try:
        return os.readlink("/proc/self/ns/net")
    except OSError:
        return None


class ZMQCommunicator(Communicator):
    backend = "zmq"

    def __init__(self, rank, size, master_addr, master_port, run_id, timeout=300.0):
        self.timeout = float(timeout)
        self._scheme = security.scheme()
        self._context = zmq.Context()
        self._keys = security.new_keypair()
        self._gatekeeper = security.Gatekeeper(self._context, rank, self._scheme)  # before any socket binds
        self._inbox = self._context.socket(zmq.PULL)
        self._inbox.setsockopt(zmq.RCVHWM, 0)
        self._inbox.setsockopt(zmq.LINGER, 0)
        self._inbox.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES + WIRE_OVERHEAD_BYTES)
        security.secure_inbox(self._inbox, self._scheme, self._keys[1])
        self._inbox_monitor = self._gatekeeper.refusals.watch(self._inbox)
        host = reachable_address(master_addr)
        me = {"host": socket.gethostname(), "netns": network_namespace(), "tcp": self._bind_tcp(host),
              "ipc": self._bind_ipc(), "key": self._keys[0]}
        master = f"tcp://{master_addr}:{master_port}"
        if rank == 0:
            table = rendezvous.serve(size, run_id, f"tcp://{host}:{master_port}", me, self.timeout)
        else:
            table = rendezvous.register(rank, size, run_id, master, me, self.timeout)
        local = [r for r, peer in enumerate(table) if peer["host"] == me["host"]]
        super().__init__(rank, size, local.index(rank), len(local))
        self._spin = spin_seconds(len(local))
        self._gatekeeper.admit(run_id, self._keys[0], {r: peer["key"] for r, peer in enumerate(table) if r != rank})
        self._connect(table, me, run_id)
        self._seq = 0
        self._stash = {peer: deque() for peer in range(size)}
        self._lost = {}  # peer -> when its connection went away
        self._trackers = []
        self._user_ids = {str(peer): peer for peer in range(size) if peer != rank}
        self._everyone = list(range(size))
        self._hierarchy = hierarchical.plan([peer["host"] for peer in table], rank, HIERARCHICAL)
        self._same_host = self._hierarchy.local if self._hierarchy else (self._everyone if len(local) == size else None)
        self._shm = None  # shared_memory.Segments of the same-host ranks once mapped; False where they cannot be
        self.ring_layout = hierarchical.describe(self._hierarchy)  # what large allreduces run as
        self.address = me  # where this rank listens (host, tcp, ipc) and its public key

    def _bind_tcp(self, host):
        port = self._inbox.bind_to_random_port(f"tcp://{host}")
        return f"tcp://{host}:{port}"

    def _bind_ipc(self):
        """An abstract-namespace socket (Linux): no file to leave behind, whatever way the process ends."""
        if not sys.platform.startswith("linux"):
            return None  # peers on this host use TCP
        endpoint = f"ipc://@distdl-{secrets.token_hex(12)}"
        self._inbox.bind(endpoint)
        return endpoint

    def _connect(self, table, me, run_id):
        self._outbox, self._monitor_of = {}, {}
        self._poller = zmq.Poller()
        self._poller.register(self._inbox, zmq.POLLIN)
        self._poller.register(self._inbox_monitor, zmq.POLLIN)
        for peer, address in enumerate(table):
            if peer == self.rank:
                continue
            out = self._context.socket(zmq.PUSH)
            out.setsockopt(zmq.SNDHWM, 0)
            out.setsockopt(zmq.LINGER, int(self.timeout * 1000))
            security.secure_outbox(out, self._scheme, run_id, self._keys, address["key"], self.rank)
            monitor = out.get_monitor_socket(zmq.EVENT_DISCONNECTED)
            same_host = (address["host"], address.get("netns")) == (me["host"], me["netns"]) and address.get("ipc")
            out.connect(address["ipc"] if same_host else address["tcp"])
            self._outbox[peer] = out
            self._monitor_of[monitor] = peer
            self._poller.register(monitor, zmq.POLLIN)

    # -- point to point ------------------------------------------------------------------------------------------------
    def _send(self, peer, call, tag, payload):
        """Send ``payload`` (an array) to ``peer`` as part of ``call``; large ones without a copy, tracked."""
        header = pack_header(call, self.rank, tag)
        if payload.nbytes >= ZERO_COPY_BYTES:
            tracker = self._outbox[peer].send_multipart([header, payload], copy=False, track=True)
            self._trackers.append((peer, tracker))
        else:
            self._outbox[peer].send_multipart([header, payload])

    def _recv(self, peer, call, tag, dtype, count, agree=False):
        """The ``count`` elements ``peer`` sent for ``call`` and ``tag``, read-only over ZeroMQ's buffer.

        With ``agree`` (the signature exchange) only the sequence number and tag must match: the
        payload carries the peer's signature, which the caller compares.
        """
        stash = self._stash[peer]
        header, payload = stash.popleft() if stash else self._wait_for(peer, call)
        got, _, got_tag = unpack_header(header.bytes)
        if (got[0] != call[0] or got_tag != tag) if agree else (got != call or got_tag != tag):
            raise CollectiveMismatchError(
                f"rank {self.rank} called {describe_signature(call)} but rank {peer} sent its part of "
                f"{describe_signature(got)}"
                + (f" (step tag {got_tag}, expected {tag})" if got_tag != tag else "")
                + "; every rank must call the same collectives in the same order with the same op, dtype, size "
                  "and root")
        if len(payload) != count * dtype.itemsize:
            raise ProtocolError(
                f"rank {self.rank}: in {describe_signature(call)} rank {peer} sent {len(payload)} bytes for "
                f"{describe_signature(got)} step tag {tag}, where {count} {dtype} elements "
                f"({count * dtype.itemsize} bytes) belong; its distdl differs, or its memory is corrupt")
        return np.frombuffer(payload.buffer, dtype)

    def _wait_for(self, peer, call):
        start = time.monotonic()
        spin_until = start + (0 if self._calls.is_current() else self._spin)
        while True:
            try:
                frames = self._inbox.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                frames = None  # nothing yet; handled below, so that a lost peer's error chains no zmq.Again
            if frames is None:
                now = time.monotonic()
                if now < spin_until:
                    continue
                self._check_peer(peer, call, now - start)
                self._watch_connections(POLL_MS)
                continue
            sender = self._sender_of(frames, call)
            if sender == peer:
                return frames
            self._stash[sender].append(frames)

    def _stash_arrived(self, call):
        """Take every message that has arrived, without waiting, into its sender's stash; note lost peers."""
        self._watch_connections(0)
        while True:
            try:
                frames = self._inbox.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._stash[self._sender_of(frames, call)].append(frames)

    def _watch_connections(self, timeout_ms):
        """Wait up to ``timeout_ms`` for the inbox; meanwhile note peers whose connection went away."""
        for sock, _ in self._poller.poll(timeout_ms):
            if sock is self._inbox_monitor:
                self._gatekeeper.refusals.drain(sock)
            elif sock in self._monitor_of:
                if recv_monitor_message(sock)["event"] == zmq.EVENT_DISCONNECTED:
                    self._lost.setdefault(self._monitor_of[sock], time.monotonic())

    def _sender_of(self, frames, call):
        """The rank whose connection ``frames`` came by, once they are seen to be a message of its own."""
        sender = self._user_ids.get(security.frame_property(frames[0], "User-Id"))
        if sender is None:  # the gatekeeper admits only peers: this cannot happen, but must never pass
            raise ProtocolError(f"rank {self.rank}: a message came by a connection of no peer, during "
                                f"{describe_signature(call)}")
        if len(frames) != 2 or len(frames[0]) != HEADER.size:
            raise ProtocolError(f"rank {self.rank}: rank {sender} sent a message of {len(frames)} frames "
                                f"(header {len(frames[0])} bytes) during {describe_signature(call)}; a distdl "
                                f"message is a {HEADER.size}-byte header and a payload: its distdl differs")
        claimed = unpack_header(frames[0].bytes)[1]
        if claimed != sender:
            raise ProtocolError(f"rank {self.rank}: rank {sender} sent a message that claims to come from rank "
                                f"{claimed}, during {describe_signature(call)}")
        return sender

    def _check_peer(self, peer, call, waited):
        lost_at = self._lost.get(peer)
        if lost_at is not None and time.monotonic() - lost_at > LOST_GRACE_SECONDS:
            raise PeerLostError(f"rank {self.rank}: rank {peer} went away during {describe_signature(call)}: its "
                                "process died or closed its communicator; its own output says why")
        if waited > self.timeout:
            raise CollectiveTimeoutError(
                f"rank {self.rank}: {describe_signature(call)} waited {self.timeout:g} s for rank {peer}; check that "
                f"rank {peer} is alive and calls the same collectives in the same order (DISTDL_TIMEOUT sets the limit)")

    def _flush(self, call):
        """Wait until ZeroMQ has sent every zero-copy payload, so the caller may reuse its arrays.

        A send may take long (a peer paused, a loaded machine); only DISTDL_TIMEOUT makes it an error.
        """
        start = time.monotonic()
        for peer, tracker in self._trackers:
            while not tracker.done:
                if time.monotonic() - start > self.timeout:
                    raise CollectiveTimeoutError(f"rank {self.rank}: {describe_signature(call)} could not deliver "
                                                 f"its data to rank {peer} within {self.timeout:g} s: it stopped "
                                                 "receiving")
                try:
                    tracker.wait(POLL_MS / 1000)
                except zmq.NotDone:
                    self._watch_connections(0)
                    self._check_peer(peer, call, 0)  # a peer that died takes its unread data with it
        self._trackers.clear()

    def _call(self, collective, op, array, root=-1):
        """Start a call: the signature every message of it carries."""
        self._seq += 1
        return signature(self._seq, collective, op, array, root)

    def _segments(self, start, stop, itemsize):
        """(a, b) element ranges of at most SEGMENT_BYTES covering [start, stop); one empty one if it is empty."""
        per_segment = max(1, SEGMENT_BYTES // itemsize)
        return [(a, min(a + per_segment, stop)) for a in range(start, stop, per_segment)] or [(start, start)]

    def _send_all(self, peer, call, step, flat):
        for k, (a, b) in enumerate(self._segments(0, flat.size, flat.itemsize)):
            self._send(peer, call, step * STEP + k, flat[a:b])

    def _recv_into(self, peer, call, step, flat):
        for k, (a, b) in enumerate(self._segments(0, flat.size, flat.itemsize)):
            flat[a:b] = self._recv(peer, call, step * STEP + k, flat.dtype, b - a)

    def _agree(self, call):
        """Compare every rank's signature of ``call`` (a ring allgather of it): a difference fails on every rank."""
        mine = np.array(call, SIGNATURE_DTYPE)
        everyone = np.empty((self.size, mine.size), SIGNATURE_DTYPE)
        everyone[self.rank] = mine
        left, right = (self.rank - 1) % self.size, (self.rank + 1) % self.size
        for step in range(self.size - 1):
            self._send(right, call, AGREE_TAG, everyone[(self.rank - step) % self.size])
            everyone[(self.rank - step - 1) % self.size] = self._recv(left, call, AGREE_TAG, SIGNATURE_DTYPE,
                                                                      mine.size, agree=True)
        self._flush(call)
        check_agreed(self.rank, everyone, mine)

    # -- algorithms ----------------------------------------------------------------------------------------------
    def _allreduce(self, array, op, check):
        call = self._call("allreduce", op, array)
        flat = array.reshape(-1)
        if self.size > 1 and flat.size:
            if flat.nbytes <= SMALL_BYTES:
                self._recursive_doubling(flat, UFUNCS[op], call)
            elif self._hierarchy is not None:
                hierarchical.allreduce(self, flat, UFUNCS[op], call, self._hierarchy, self._shared(call))
            elif self._same_host == self._everyone and self._shared(call):
                self._shm.allreduce(self, flat, UFUNCS[op], call)
            else:
                self._ring(flat, UFUNCS[op], call, self._everyone, 0, 2 * (self.size - 1))
            self._flush(call)
        if op == "mean":
            finish_mean(array, self.size)

    def _shared(self, call):
        """The same-host ranks' shared-memory segments (mapped in the first call that needs them), or None."""
        if self._shm is None:
            group = self._same_host
            self._shm = (group is not None and len(group) > 1 and shared_memory.attach(self, group, call)) or False
        return self._shm or None

    def _recursive_doubling(self, flat, ufunc, call):
        """log2(n) pairwise exchanges; ranks beyond the largest power of two fold in first and are told after."""
        rank, size, n = self.rank, self.size, flat.size
        p2 = 1 << (size.bit_length() - 1)
        if rank >= p2:
            self._send(rank - p2, call, 0, flat)
            flat[...] = self._recv(rank - p2, call, 1, flat.dtype, n)
            return
        if rank + p2 < size:
            ufunc(flat, self._recv(rank + p2, call, 0, flat.dtype, n), out=flat)
        mask, step = 1, 2
        while mask < p2:
            partner = rank ^ mask
            self._send(partner, call, step, flat.copy())
            ufunc(flat, self._recv(partner, call, step, flat.dtype, n), out=flat)
            mask, step = mask << 1, step + 1
        if rank + p2 < size:
            self._send(rank + p2, call, 1, flat)

    def _ring(self, flat, ufunc, call, group, first, last):
        """Steps ``first`` to ``last`` of a ring among ``group`` (ranks in ring order), by segments.

        Steps 0 to n-2 reduce-scatter, n-1 to 2n-3 allgather. At step s the rank at
        position r receives chunk (r-s-2) mod n from its left neighbour, reduces it into
        its own (or, allgathering, takes it) and forwards it at step s+1; after n-1 steps
        it holds chunk r fully reduced, which the allgather passes on.
        """
        size, position = len(group), group.index(self.rank)
        left, right = group[(position - 1) % size], group[(position + 1) % size]
        starts = np.concatenate([[0], np.cumsum(split_counts(flat.size, size))])

        def segments(chunk):
            return self._segments(starts[chunk], starts[chunk + 1], flat.itemsize)

        for k, (a, b) in enumerate(segments((position - first - 1) % size)):
            self._send(right, call, first * STEP + k, flat[a:b])
        for step in range(first, last):
            reducing = step < size - 1
            for k, (a, b) in enumerate(segments((position - step - 2) % size)):
                incoming = self._recv(left, call, step * STEP + k, flat.dtype, b - a)
                if reducing:
                    ufunc(flat[a:b], incoming, out=flat[a:b])
                else:
                    flat[a:b] = incoming
                if step + 1 < last:
                    self._send(right, call, (step + 1) * STEP + k, flat[a:b])

    def _reduce_scatter(self, array, op):
        call = self._call("reduce_scatter", op, array)
        flat = array.reshape(-1).copy()
        if self.size > 1 and flat.size:
            self._ring(flat, UFUNCS[op], call, self._everyone, 0, self.size - 1)
            self._flush(call)
        counts = split_counts(flat.size, self.size)
        start = sum(counts[:self.rank])
        out = flat[start:start + counts[self.rank]].copy()
        if op == "mean":
            finish_mean(out, self.size)
        return out

    def _broadcast(self, array, root):
        """A binomial tree from ``root``: log2(n) rounds, after the ranks agree on the call and its root."""
        call = self._call("broadcast", None, array, root)
        if self.size == 1:
            return
        self._agree(call)
        flat = array.reshape(-1)
        relative = (self.rank - root) % self.size
        mask = 1
        while mask < self.size:
            if relative & mask:
                self._recv_into((self.rank - mask) % self.size, call, 0, flat)
                break
            mask <<= 1
        mask >>= 1
        while mask > 0:
            if relative + mask < self.size:
                self._send_all((self.rank + mask) % self.size, call, 0, flat)
            mask >>= 1
        self._flush(call)

    def _allgather(self, array):
        call = self._call("allgather", None, array)
        out = np.empty((self.size,) + array.shape, array.dtype)
        out[self.rank] = array
        rows = out.reshape(self.size, array.size)
        left, right = (self.rank - 1) % self.size, (self.rank + 1) % self.size
        for step in range(self.size - 1):
            self._send_all(right, call, step, rows[(self.rank - step) % self.size])
            self._recv_into(left, call, step, rows[(self.rank - step - 1) % self.size])
        self._flush(call)
        return out

    def _gather(self, array, root):
        call = self._call("gather", None, array, root)
        if self.size > 1:
            self._agree(call)
        if self.rank != root:
            self._send_all(root, call, 0, array.reshape(-1))
            self._flush(call)
            return None
        out = np.empty((self.size,) + array.shape, array.dtype)
        out[root] = array
        rows = out.reshape(self.size, array.size)
        for peer in range(self.size):
            if peer != root:
                self._recv_into(peer, call, 0, rows[peer])
        return out

    def _barrier(self):
        token = np.zeros(1, np.int32)
        call = self._call("barrier", None, token)
        if self.size > 1:
            self._recursive_doubling(token, np.add, call)

    def _release(self):
        """Close every socket once ZeroMQ has delivered what is queued: within a second after a failure
        (what was sent may tell a peer why; a dead peer never takes it)."""
        linger = FAILED_LINGER_MS if self._failure is not None else None
        for sock in list(self._outbox.values()) + [self._inbox]:
            sock.close(linger=linger)
        self._gatekeeper.refusals.drain(self._inbox_monitor)
        self._gatekeeper.refusals.summary()
        for monitor in list(self._monitor_of) + [self._inbox_monitor]:
            monitor.close(linger=0)
        if self._shm:
            self._shm.close()
        self._gatekeeper.close()
        self._context.term()
