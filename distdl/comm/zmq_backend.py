"""Collectives over ZeroMQ (pyzmq), for where MPI is missing or broken.

Transport: every rank binds one PULL inbox (TCP on the interface that reaches the
master, and an ipc:// socket for peers on the same host) and connects one PUSH
socket to every peer's inbox. Messages are [header, payload]: the header says who
sent it and which collective call it belongs to (sequence number, collective, op,
dtype, element count, and a tag for the step and segment), and the receiver checks
it against the call it is making, so mismatched calls across ranks fail with an
error naming both calls. Large payloads leave without a copy (tracked, so the
array is not handed back before ZeroMQ is done with it).

Waiting: a receive first polls without blocking for a short spin (waking a process
blocked in the kernel costs tens of microseconds, the price of a small message),
then blocks in bounded polls. Every wait has a deadline (DISTDL_TIMEOUT), and a
monitor on each outgoing connection reports a peer whose process went away.

Algorithms: allreduce is recursive doubling up to ``small_bytes`` (latency bound,
log2(n) exchanges) and a ring above (reduce-scatter then allgather, bandwidth
optimal), in segments so that receiving, reducing and forwarding overlap. Each
element is reduced in one fixed order, so every rank ends bit-identical.
"""

import os
import socket
import tempfile
import time
from collections import deque

import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from distdl.comm import rendezvous
from distdl.comm.base import Communicator
from distdl.comm.errors import CollectiveMismatchError, CollectiveTimeoutError, DistError, PeerLostError
from distdl.comm.reduction import UFUNCS, finish_mean, split_counts
from distdl.comm.signature import HEADER, describe_signature, pack_header, signature, unpack_header

SPIN_SECONDS = 200e-6
POLL_MS = 50  # a blocked receive wakes this often to check deadlines and lost peers
LOST_GRACE_SECONDS = 0.2  # messages a dead peer sent just before dying may still be on their way
ZERO_COPY_BYTES = 64 * 1024
SMALL_BYTES = int(os.environ.get("DISTDL_ZMQ_SMALL_BYTES", 64 * 1024))
SEGMENT_BYTES = int(os.environ.get("DISTDL_ZMQ_SEGMENT_BYTES", 512 * 1024))


def reachable_address(master_addr):
    """The local address of the interface that routes to ``master_addr`` (loopback for a local job)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect((master_addr, 9))  # UDP connect sends nothing; it only picks the route
        return probe.getsockname()[0]
    finally:
        probe.close()


class ZMQCommunicator(Communicator):
    backend = "zmq"

    def __init__(self, rank, size, master_addr, master_port, run_id, timeout=300.0):
        self.timeout = float(timeout)
        self._context = zmq.Context()
        self._inbox = self._context.socket(zmq.PULL)
        self._inbox.setsockopt(zmq.RCVHWM, 0)
        self._inbox.setsockopt(zmq.LINGER, 0)
        host = reachable_address(master_addr)
        me = {"host": socket.gethostname(), "tcp": self._bind_tcp(host), "ipc": self._bind_ipc(run_id, rank)}
        master = f"tcp://{master_addr}:{master_port}"
        if rank == 0:
            table = rendezvous.serve(size, run_id, f"tcp://{host}:{master_port}", me, self.timeout)
        else:
            table = rendezvous.register(rank, size, run_id, master, me, self.timeout)
        local = [r for r, peer in enumerate(table) if peer["host"] == me["host"]]
        super().__init__(rank, size, local.index(rank), len(local))
        self._connect(table, me["host"])
        self._seq = 0
        self._stash = {peer: deque() for peer in range(size)}
        self._lost = {}  # peer -> when its connection went away
        self._trackers = []

    def _bind_tcp(self, host):
        port = self._inbox.bind_to_random_port(f"tcp://{host}")
        return f"tcp://{host}:{port}"

    def _bind_ipc(self, run_id, rank):
        path = os.path.join(tempfile.gettempdir(), f"distdl-{str(run_id)[:16]}-{rank}-{os.getpid()}.sock")
        endpoint = f"ipc://{path}"
        try:
            self._inbox.bind(endpoint)
        except zmq.ZMQError:  # no ipc transport here (Windows): peers on this host use TCP
            return None
        return endpoint

    def _connect(self, table, my_host):
        self._outbox, self._monitor_of = {}, {}
        self._poller = zmq.Poller()
        self._poller.register(self._inbox, zmq.POLLIN)
        for peer, address in enumerate(table):
            if peer == self.rank:
                continue
            out = self._context.socket(zmq.PUSH)
            out.setsockopt(zmq.SNDHWM, 0)
            out.setsockopt(zmq.LINGER, int(self.timeout * 1000))
            monitor = out.get_monitor_socket(zmq.EVENT_DISCONNECTED)
            same_host = address["host"] == my_host and address["ipc"]
            out.connect(address["ipc"] if same_host else address["tcp"])
            self._outbox[peer] = out
            self._monitor_of[monitor] = peer
            self._poller.register(monitor, zmq.POLLIN)

    # -- point to point ------------------------------------------------------------------------------------------------
    def _send(self, peer, call, tag, payload):
        """Send ``payload`` (an array) to ``peer`` as part of ``call``; large ones without a copy, tracked."""
        header = pack_header(call, self.rank, tag)
        if payload.nbytes >= ZERO_COPY_BYTES:
            self._trackers.append(self._outbox[peer].send_multipart([header, payload], copy=False, track=True))
        else:
            self._outbox[peer].send_multipart([header, payload])

    def _recv(self, peer, call, tag, dtype):
        """The payload ``peer`` sent for ``call`` and ``tag``, as a read-only array over ZeroMQ's buffer."""
        stash = self._stash[peer]
        frames = stash.popleft() if stash else self._wait_for(peer, call)
        got, _, got_tag = unpack_header(frames[0].bytes)
        if got != call or got_tag != tag:
            raise CollectiveMismatchError(
                f"rank {self.rank} called {describe_signature(call)} but rank {peer} sent its part of "
                f"{describe_signature(got)}"
                + (f" (step tag {got_tag}, expected {tag})" if got_tag != tag else "")
                + "; every rank must call the same collectives in the same order with the same op, dtype and size")
        return np.frombuffer(frames[1].buffer, dtype)

    def _wait_for(self, peer, call):
        start = time.monotonic()
        spin_until = start + (0 if self._calls.is_current() else SPIN_SECONDS)
        while True:
            try:
                frames = self._inbox.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                now = time.monotonic()
                if now < spin_until:
                    continue
                self._check_peer(peer, call, now - start)
                for sock, _ in self._poller.poll(POLL_MS):
                    if sock in self._monitor_of:
                        if recv_monitor_message(sock)["event"] == zmq.EVENT_DISCONNECTED:
                            self._lost.setdefault(self._monitor_of[sock], time.monotonic())
                continue
            sender = HEADER.unpack_from(frames[0].bytes)[1]
            if sender == peer:
                return frames
            self._stash[sender].append(frames)

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
        """Wait until ZeroMQ has sent every zero-copy payload, so the caller may reuse its arrays."""
        deadline = time.monotonic() + self.timeout
        for tracker in self._trackers:
            while not tracker.done:
                if time.monotonic() > deadline:
                    raise CollectiveTimeoutError(f"rank {self.rank}: {describe_signature(call)} could not deliver its "
                                                 f"data within {self.timeout:g} s: a peer stopped receiving")
                tracker.wait(0.05)
        self._trackers.clear()

    def _call(self, collective, op, array):
        """Start a call: the signature every message of it carries."""
        self._seq += 1
        return signature(self._seq, collective, op, array)

    # -- algorithms ----------------------------------------------------------------------------------------------
    def _allreduce(self, array, op, check):
        call = self._call("allreduce", op, array)
        flat = array.reshape(-1)
        if self.size > 1 and flat.size:
            if flat.nbytes <= SMALL_BYTES:
                self._recursive_doubling(flat, UFUNCS[op], call)
            else:
                self._ring(flat, UFUNCS[op], call, gather=True)
            self._flush(call)
        if op == "mean":
            finish_mean(array, self.size)

    def _recursive_doubling(self, flat, ufunc, call):
        """log2(n) pairwise exchanges; ranks beyond the largest power of two fold in first and are told after."""
        rank, size = self.rank, self.size
        p2 = 1 << (size.bit_length() - 1)
        if rank >= p2:
            self._send(rank - p2, call, 0, flat)
            flat[...] = self._recv(rank - p2, call, 1, flat.dtype)
            return
        if rank + p2 < size:
            ufunc(flat, self._recv(rank + p2, call, 0, flat.dtype), out=flat)
        mask, step = 1, 2
        while mask < p2:
            partner = rank ^ mask
            self._send(partner, call, step, flat.copy())
            ufunc(flat, self._recv(partner, call, step, flat.dtype), out=flat)
            mask, step = mask << 1, step + 1
        if rank + p2 < size:
            self._send(rank + p2, call, 1, flat)

    def _ring(self, flat, ufunc, call, gather):
        """Reduce-scatter (n-1 steps) then, if ``gather``, allgather (n-1 steps) around the ring, by segments.

        At reduce-scatter step s rank r receives chunk (r-s-2) mod n from its left
        neighbour, reduces it into its own and forwards it at step s+1; after n-1
        steps it holds chunk r fully reduced, which the allgather passes on.
        """
        rank, size = self.rank, self.size
        left, right = (rank - 1) % size, (rank + 1) % size
        counts = split_counts(flat.size, size)
        starts = np.concatenate([[0], np.cumsum(counts)])
        per_segment = max(1, SEGMENT_BYTES // flat.itemsize)

        def segments(chunk):
            return [(a, min(a + per_segment, starts[chunk + 1])) for a in range(starts[chunk], starts[chunk + 1],
                                                                                per_segment)]

        steps = 2 * (size - 1) if gather else size - 1
        for k, (a, b) in enumerate(segments((rank - 1) % size)):
            self._send(right, call, k, flat[a:b])
        for step in range(steps):
            reducing = step < size - 1
            for k, (a, b) in enumerate(segments((rank - step - 2) % size)):
                incoming = self._recv(left, call, step * 65536 + k, flat.dtype)
                if reducing:
                    ufunc(flat[a:b], incoming, out=flat[a:b])
                else:
                    flat[a:b] = incoming
                if step + 1 < steps:
                    self._send(right, call, (step + 1) * 65536 + k, flat[a:b])

    def _reduce_scatter(self, array, op):
        call = self._call("reduce_scatter", op, array)
        flat = array.reshape(-1).copy()
        if self.size > 1 and flat.size:
            self._ring(flat, UFUNCS[op], call, gather=False)
            self._flush(call)
        counts = split_counts(flat.size, self.size)
        start = sum(counts[:self.rank])
        out = flat[start:start + counts[self.rank]].copy()
        if op == "mean":
            finish_mean(out, self.size)
        return out

    def _broadcast(self, array, root):
        """A binomial tree from ``root``: log2(n) rounds."""
        call = self._call("broadcast", None, array)
        flat = array.reshape(-1)
        relative = (self.rank - root) % self.size
        mask = 1
        while mask < self.size:
            if relative & mask:
                flat[...] = self._recv((self.rank - mask) % self.size, call, 0, flat.dtype)
                break
            mask <<= 1
        mask >>= 1
        while mask > 0:
            if relative + mask < self.size:
                self._send((self.rank + mask) % self.size, call, 0, flat)
            mask >>= 1
        self._flush(call)

    def _allgather(self, array):
        call = self._call("allgather", None, array)
        out = np.empty((self.size,) + array.shape, array.dtype)
        out[self.rank] = array
        left, right = (self.rank - 1) % self.size, (self.rank + 1) % self.size
        for step in range(self.size - 1):
            self._send(right, call, step, out[(self.rank - step) % self.size].reshape(-1))
            out[(self.rank - step - 1) % self.size] = self._recv(left, call, step, array.dtype).reshape(array.shape)
        self._flush(call)
        return out

    def _gather(self, array, root):
        call = self._call("gather", None, array)
        if self.rank != root:
            self._send(root, call, 0, array.reshape(-1))
            self._flush(call)
            return None
        out = np.empty((self.size,) + array.shape, array.dtype)
        out[root] = array
        for peer in range(self.size):
            if peer != root:
                out[peer] = self._recv(peer, call, 0, array.dtype).reshape(array.shape)
        return out

    def _barrier(self):
        token = np.zeros(1, np.int32)
        call = self._call("barrier", None, token)
        if self.size > 1:
            self._recursive_doubling(token, np.add, call)

    def _release(self):
        try:
            if self._failure is None and self.size > 1:
                self._barrier()  # nobody disconnects while a peer still waits for its last message
        except DistError:
            pass  # closing after a failure: the sockets go anyway
        finally:
            for sock in list(self._outbox.values()) + [self._inbox]:
                sock.close(linger=0 if self._failure else None)
            for monitor in self._monitor_of:
                monitor.close(linger=0)
            self._context.term()

