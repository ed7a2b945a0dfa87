"""How ZeroMQ workers find each other: every rank registers with rank 0, which answers with the address table.

Rank 0 listens at DISTDL_MASTER_ADDR:DISTDL_MASTER_PORT. Each rank sends
(rank, world size, run token, host, its data endpoints, distdl version). Rank 0
refuses a wrong token, a rank out of range or already taken, or a different world
size, and tells both sides; when some ranks do not arrive in time, every rank
that did fails with the list of the missing ones.
"""

import hmac
import json
import os
import time

import zmq

from distdl.comm.errors import RendezvousError
from distdl.version import __version__

REGISTER_GRACE_SECONDS = 5


def _recv_json(socket, deadline):
    """The next message on ``socket`` as (frames before the payload, payload), or None at the deadline."""
    remaining = deadline - time.monotonic()
    if remaining <= 0 or not socket.poll(int(remaining * 1000) + 1):
        return None
    *route, payload = socket.recv_multipart()
    try:
        return route, json.loads(payload)
    except ValueError:
        return route, {"garbled": payload[:40].hex()}


def register(rank, size, run_id, master, me, timeout):
    """Register with rank 0 at ``master`` (a tcp:// endpoint); return the table of every rank's ``me``."""
    context = zmq.Context.instance()
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    try:
        socket.connect(master)
        socket.send(json.dumps({"rank": rank, "size": size, "token": run_id, "version": __version__,
                                "peer": me}).encode())
        # wait longer than rank 0 does, so that its verdict (the list of missing ranks) arrives first
        answer = _recv_json(socket, time.monotonic() + timeout + REGISTER_GRACE_SECONDS)
    finally:
        socket.close()
    if answer is None:
        raise RendezvousError(f"rank {rank}: rank 0 did not answer at {master} within "
                              f"{timeout + REGISTER_GRACE_SECONDS:g} s; check that "
                              "rank 0 runs and that DISTDL_MASTER_ADDR and DISTDL_MASTER_PORT point at it")
    reply = answer[1]
    if "error" in reply:
        raise RendezvousError(f"rank {rank}: refused by rank 0 at {master}: {reply['error']}")
    return reply["table"]


def serve(size, run_id, endpoint, me, timeout):
    """Rank 0: take the registrations at ``endpoint`` (tcp://addr:port), answer with the table."""
    context = zmq.Context.instance()
    socket = context.socket(zmq.ROUTER)
    socket.setsockopt(zmq.LINGER, 2000)  # let the last answers leave before the socket closes
    inherited = os.environ.pop("DISTDL_MASTER_FD", None)
    if inherited is not None:  # distdl-run bound the port and handed it over: no other job can have taken it
        socket.setsockopt(zmq.USE_FD, int(inherited))
    try:
        socket.bind(endpoint)
    except zmq.ZMQError as exc:
        raise RendezvousError(f"rank 0: cannot listen at {endpoint} ({exc}); is the port taken by another job? "
                              "choose another DISTDL_MASTER_PORT") from exc
    try:
        return _collect(socket, size, run_id, me, time.monotonic() + timeout, timeout)
    finally:
        socket.close()


def _collect(socket, size, run_id, me, deadline, timeout):
    table = {0: me}
    routes = {}

    def refuse_all(reason):
        for route in routes.values():
            socket.send_multipart(route + [json.dumps({"error": reason}).encode()])
        raise RendezvousError(f"rank 0: {reason}")

    while len(table) < size:
        message = _recv_json(socket, deadline)
        if message is None:
            missing = sorted(set(range(size)) - set(table))
            refuse_all(f"ranks {missing} did not join within {timeout:g} s (world size {size}); check that every "
                       "rank was started and can reach the master address")
        route, hello = message
        problem = _problem(hello, size, run_id, table)
        if problem:
            socket.send_multipart(route + [json.dumps({"error": problem}).encode()])
            refuse_all(f"refused a peer: {problem}")
        table[hello["rank"]] = hello["peer"]
        routes[hello["rank"]] = route
    answer = json.dumps({"table": [table[r] for r in range(size)]}).encode()
    for route in routes.values():
        socket.send_multipart(route + [answer])
    return [table[r] for r in range(size)]


def _problem(hello, size, run_id, table):
    """Why a registration is refused, or None."""
    if "garbled" in hello or not {"rank", "size", "token", "peer"} <= set(hello):
        return f"a message that is not a distdl registration (starts {hello.get('garbled', '?')})"
    rank = hello["rank"]
    if not hmac.compare_digest(str(hello["token"]).encode(), str(run_id).encode()):
        return (f"rank {rank} presented a different run token (DISTDL_RUN_ID): it belongs to another job, "
                "or the job's workers were started with different environments")
    if hello["size"] != size:
        return f"rank {rank} expects a world of {hello['size']} but rank 0 expects {size}"
    if not isinstance(rank, int) or not 0 < rank < size:
        return f"rank {rank} is not a rank of a world of {size}"
    if rank in table:
        return f"rank {rank} registered twice: two workers were started with the same DISTDL_RANK"
    if hello.get("version") != __version__:
        return f"rank {rank} runs distdl {hello.get('version')} but rank 0 runs {__version__}"
    return None
