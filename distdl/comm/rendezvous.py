"""How ZeroMQ workers find each other: every rank registers with rank 0, which answers with the table of peers.

Rank 0 listens at DISTDL_MASTER_ADDR:DISTDL_MASTER_PORT. Both sides prove they hold
the run token (DISTDL_RUN_ID) without sending it, by challenge and response:

    rank r -> 0   {"type": "hello"}
    0 -> r        {"type": "challenge", "cookie": C}       C: fresh, valid on this connection only
    r -> 0        {"type": "register", "cookie": C, "nonce": N, "registration": R,
                   "proof": HMAC(token, C, N, R)}           R: JSON text (rank, size, version, pid, peer)
    0 -> r        {"type": "table", "table": T, "proof": HMAC(token, N, T)}   or an "error", proved alike

Whatever is not such a message, a wrong proof, or a message over 64 KiB (ZeroMQ
drops the connection) comes from a stranger: it is refused on that connection
alone, logged once with its address, and rank 0 keeps waiting for its ranks. A
registration that proves the token but conflicts (a rank taken twice, another
world size or version) is an error of the job, named on both sides; ranks that do
not arrive in time are named to every rank that did.
"""

import json
import os
import time

import zmq

from distdl.comm import security
from distdl.comm.errors import RendezvousError
from distdl.version import __version__

REGISTER_GRACE_SECONDS = 5
MAX_MESSAGE_BYTES = 64 * 1024


def _send(socket, route, message):
    socket.send_multipart(route + [json.dumps(message).encode()])


def _receive(socket, deadline):
    """The next message on ``socket`` as a list of frames, or None at the deadline."""
    remaining = deadline - time.monotonic()
    if remaining <= 0 or not socket.poll(int(remaining * 1000) + 1):
        return None
    return socket.recv_multipart(copy=False)


def _json_object(data):
    """The JSON object in ``data`` (bytes or text), or None when it is anything else."""
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


# -- a rank other than 0 ---------------------------------------------------------------------------------------------
def register(rank, size, run_id, master, me, timeout):
    """Register with rank 0 at ``master`` (a tcp:// endpoint); return the table of every rank's ``me``."""
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    # wait longer than rank 0 does, so that its verdict (the list of missing ranks) arrives first
    deadline = time.monotonic() + timeout + REGISTER_GRACE_SECONDS
    try:
        socket.connect(master)
        _send(socket, [], {"type": "hello"})
        challenge = _answer(socket, deadline, rank, master)
        own_nonce = security.nonce()
        registration = json.dumps({"rank": rank, "size": size, "version": __version__, "pid": os.getpid(),
                                   "peer": me})
        _send(socket, [], {"type": "register", "cookie": challenge.get("cookie"), "nonce": own_nonce,
                           "registration": registration,
                           "proof": security.proof(run_id, "register", str(challenge.get("cookie")), own_nonce,
                                                   registration)})
        reply = _answer(socket, deadline, rank, master)
    finally:
        socket.close()
    kind, text = reply.get("type"), reply.get("table") if reply.get("type") == "table" else reply.get("error")
    check = ("check that every rank of the job has the same DISTDL_RUN_ID and that DISTDL_MASTER_ADDR and "
             "DISTDL_MASTER_PORT point at its rank 0")
    if kind == "refused" and isinstance(text, str):
        raise RendezvousError(f"rank {rank}: refused by the process at {master}: {text[:300]}; {check}")
    if kind not in ("table", "error") or not isinstance(text, str) or \
            not security.verify(run_id, reply.get("proof"), kind, own_nonce, text):
        raise RendezvousError(f"rank {rank}: the process at {master} answered without proving it holds this job's "
                              f"run token (DISTDL_RUN_ID); {check}")
    if kind == "error":
        raise RendezvousError(f"rank {rank}: refused by rank 0 at {master}: {text}")
    return json.loads(text)


def _answer(socket, deadline, rank, master):
    frames = _receive(socket, deadline)
    if frames is None:
        raise RendezvousError(f"rank {rank}: rank 0 did not answer at {master} in time; check that rank 0 runs "
                              "and that DISTDL_MASTER_ADDR and DISTDL_MASTER_PORT point at it")
    message = _json_object(frames[-1].bytes)
    if message is None:
        raise RendezvousError(f"rank {rank}: the process at {master} is not a distdl rendezvous (it answered "
                              f"{frames[-1].bytes[:40]!r})")
    return message


# -- rank 0 ------------------------------------------------------------------------------------------------------------
def serve(size, run_id, endpoint, me, timeout):
    """Rank 0: take the registrations at ``endpoint`` (tcp://addr:port), answer with the table."""
    socket = zmq.Context.instance().socket(zmq.ROUTER)
    socket.setsockopt(zmq.LINGER, 2000)  # let the last answers leave before the socket closes
    socket.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    inherited = os.environ.pop("DISTDL_MASTER_FD", None)
    if inherited is not None:  # distdl-run bound the port and handed it over: no other job can have taken it
        socket.setsockopt(zmq.USE_FD, int(inherited))
    try:
        socket.bind(endpoint)
    except zmq.ZMQError as exc:
        raise RendezvousError(f"rank 0: cannot listen at {endpoint} ({exc}); is the port taken by another job? "
                              "choose another DISTDL_MASTER_PORT") from exc
    refusals = security.Refusals("rank 0's rendezvous")
    monitor = refusals.watch(socket)
    try:
        return _Rendezvous(socket, monitor, refusals, size, run_id, me, timeout).collect()
    finally:
        refusals.drain(monitor)
        refusals.summary()
        monitor.close(linger=0)
        socket.close()


class _Rendezvous:
    """Rank 0's side: registrations that proved the token, strangers refused one connection at a time."""

    def __init__(self, socket, monitor, refusals, size, run_id, me, timeout):
        self.socket, self.size, self.run_id, self.timeout = socket, size, run_id, timeout
        self.monitor, self.refusals = monitor, refusals
        self.poller = zmq.Poller()
        self.poller.register(socket, zmq.POLLIN)
        self.poller.register(monitor, zmq.POLLIN)
        self.table = {0: me}
        self.joined = {0: {"rank": 0, "pid": os.getpid(), "peer": me}}  # rank -> registration
        self.routes = []  # (route, nonce) of every connection that proved the token
        self.cookies = security.Cookies(timeout + REGISTER_GRACE_SECONDS)
        self.refused = set()  # routes of refused connections: each is logged once, then ignored
        self.deadline = time.monotonic() + timeout

    def collect(self):
        while len(self.table) < self.size:
            frames = self.receive()
            if frames is None:
                missing = sorted(set(range(self.size)) - set(self.table))
                count = self.refusals.count
                strangers = f"; refused {count} connection(s) of strangers" if count else ""
                self.fail(f"ranks {missing} did not join within {self.timeout:g} s (world size {self.size}){strangers}; "
                          "check that every rank was started with the same DISTDL_RUN_ID and can reach the master "
                          "address")
            self.take(frames)
        table = json.dumps([self.table[r] for r in range(self.size)])
        for route, own_nonce in self.routes:
            _send(self.socket, route, {"type": "table", "table": table,
                                       "proof": security.proof(self.run_id, "table", own_nonce, table)})
        return json.loads(table)

    def receive(self):
        """The next message on the socket, or None at the deadline; failed handshakes are logged meanwhile."""
        while True:
            remaining = self.deadline - time.monotonic()
            ready = dict(self.poller.poll(int(remaining * 1000) + 1)) if remaining > 0 else {}
            if self.monitor in ready:
                self.refusals.drain(self.monitor)
            if self.socket in ready:
                return self.socket.recv_multipart(copy=False)
            if not ready:
                return None

    def take(self, frames):
        route = [frames[0].bytes]
        if route[0] in self.refused or any(route == r for r, _ in self.routes):
            return  # refused already, or a rank that registered and now waits: nothing more to say
        message = _json_object(frames[-1].bytes) if len(frames) == 2 else None
        if message is None or message.get("type") not in ("hello", "register"):
            return self.refuse(frames, route, "a message that is not a distdl registration")
        if message["type"] == "hello":
            return _send(self.socket, route, {"type": "challenge", "cookie": self.cookies.issue(route[0])})
        parts = [message.get(k) for k in ("cookie", "nonce", "registration")]
        if not all(isinstance(p, str) for p in parts) or not self.cookies.valid(route[0], parts[0]):
            return self.refuse(frames, route, "a registration without a valid challenge of this connection")
        if not security.verify(self.run_id, message.get("proof"), "register", *parts):
            return self.refuse(frames, route, "a wrong proof of the run token: it belongs to another job, or the "
                                              "job's workers were started with different environments")
        hello = _json_object(parts[2])
        problem = _malformed(hello)
        if problem:
            return self.refuse(frames, route, problem)
        self.routes.append((route, parts[1]))
        conflict = self.conflict(hello)
        if conflict:
            self.fail(conflict)
        self.table[hello["rank"]] = hello["peer"]
        self.joined[hello["rank"]] = hello

    def refuse(self, frames, route, why):
        self.refused.add(route[0])
        self.refusals.refused(f"a connection from {security.frame_property(frames[-1], 'Peer-Address') or 'an unknown address'}: {why}")
        _send(self.socket, route, {"type": "refused", "error": why})

    def conflict(self, hello):
        """Why a registration that proved the token cannot join, naming both sides; or None."""
        rank = hello["rank"]
        if hello["size"] != self.size:
            return f"rank {rank} (pid {hello['pid']}) expects a world of {hello['size']} but rank 0 expects {self.size}"
        if not 0 < rank < self.size:
            return f"rank {rank} (pid {hello['pid']}) is not a rank of this world of {self.size} other than 0"
        if hello["version"] != __version__:
            return f"rank {rank} (pid {hello['pid']}) runs distdl {hello['version']} but rank 0 runs {__version__}"
        if rank in self.joined:
            first = self.joined[rank]
            return (f"rank {rank} registered twice, by pid {first['pid']} on {first['peer']['host']} and by pid "
                    f"{hello['pid']} on {hello['peer']['host']}: two workers were started with the same DISTDL_RANK")
        return None

    def fail(self, reason):
        """Tell every rank that registered why the job cannot start, then raise it here."""
        for route, own_nonce in self.routes:
            _send(self.socket, route, {"type": "error", "error": reason,
                                       "proof": security.proof(self.run_id, "error", own_nonce, reason)})
        raise RendezvousError(f"rank 0: {reason}")


PEER_FIELDS = {"host": str, "tcp": str, "key": str}


def _malformed(hello):
    """What is wrong with the shape of a registration, or None (its content is judged by ``conflict``)."""
    if hello is None:
        return "a registration that is not a JSON object"
    fields = {"rank": int, "size": int, "version": str, "pid": int, "peer": dict}
    wrong = [k for k, kind in fields.items() if not isinstance(hello.get(k), kind) or isinstance(hello.get(k), bool)]
    if not wrong:
        wrong = [k for k, kind in PEER_FIELDS.items() if not isinstance(hello["peer"].get(k), kind)]
    return f"a registration with missing or mistyped fields {wrong}" if wrong else None
