"""Who may talk to a job: proofs of the run token, per-run keys, and the gatekeeper of every inbox.

The run token (DISTDL_RUN_ID) never crosses the network: a side proves it holds
the token by an HMAC-SHA256, under the token, of fresh nonces and of what it
says. Each rank makes a CURVE key pair at start; the rendezvous hands the public
keys to the ranks that proved the token, and every inbox then admits only the
connections of those ranks, through ZeroMQ's ZAP handler, so that a frame of
anyone else never reaches distdl's code. Two schemes (DISTDL_ZMQ_SECURITY):

- ``auth`` (the default): ZeroMQ's PLAIN handshake carrying a one-time password,
  HMAC(token, client key, server key): it opens one connection, once, in this run
  only (the keys are fresh), and says nothing of the token. Frames then travel
  unencrypted, at full speed, on a connection only the peer could have opened.
- ``curve``: CURVE on every connection: encrypted and authenticated frames, at a
  cost in bandwidth (README, "Threat model").
"""

import hashlib
import hmac
import logging
import os
import secrets
import threading
import time

import zmq
from zmq.utils import z85
from zmq.utils.monitor import recv_monitor_message

log = logging.getLogger("distdl.comm")

SCHEMES = ("auth", "curve")
ZAP_ENDPOINT = "inproc://zeromq.zap.01"  # where libzmq asks its context's handler, by the ZAP specification
ZAP_DOMAIN = b"distdl"
COOKIE_BYTES = 16
LOGGED_REFUSALS = 32  # refusals logged in full by one socket; further ones are counted
# Handshakes that fail in libzmq itself (garbage, a wrong mechanism or key); the ZAP handler logs its own refusals.
HANDSHAKE_FAILURES = zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL


def scheme():
    """The scheme named in DISTDL_ZMQ_SECURITY (default ``auth``)."""
    name = os.environ.get("DISTDL_ZMQ_SECURITY", "auth")
    if name not in SCHEMES:
        raise ValueError(f"DISTDL_ZMQ_SECURITY={name!r} is not a scheme: use one of {', '.join(SCHEMES)}")
    return name


def new_keypair():
    """(public, secret) CURVE keys, Z85 text."""
    public, secret = zmq.curve_keypair()
    return public.decode(), secret.decode()


def nonce():
    return secrets.token_hex(16)


def proof(token, label, *parts):
    """HMAC-SHA256 under ``token`` of ``label`` and ``parts`` (text), unambiguously joined."""
    message = "\0".join((label,) + tuple(f"{len(p)}:{p}" for p in parts)).encode()
    return hmac.new(str(token).encode(), message, hashlib.sha256).hexdigest()


def verify(token, claimed, label, *parts):
    return isinstance(claimed, str) and hmac.compare_digest(claimed.encode(), proof(token, label, *parts).encode())


class Cookies:
    """Challenges that bind a connection to this rendezvous without keeping state for strangers.

    A cookie is a time, a random value and a MAC of both and of the connection's
    routing id under a secret of this process: it is valid only on the connection
    it was issued to, in this run, for ``lifetime`` seconds.
    """

    def __init__(self, lifetime):
        self._secret = secrets.token_bytes(32)
        self._lifetime = lifetime

    def issue(self, route):
        body = f"{time.monotonic_ns()}:{secrets.token_hex(COOKIE_BYTES)}"  # exact: a rounded time could lie ahead
        return f"{body}:{self._mac(route, body)}"

    def valid(self, route, cookie):
        if not isinstance(cookie, str) or cookie.count(":") != 2:
            return False
        issued, _, mac = cookie.split(":")
        body = cookie[:-len(mac) - 1]
        try:
            fresh = 0 <= time.monotonic_ns() - int(issued) <= self._lifetime * 1e9
        except ValueError:
            return False
        return fresh and hmac.compare_digest(mac.encode(), self._mac(route, body).encode())

    def _mac(self, route, body):
        return hmac.new(self._secret, route + body.encode(), hashlib.sha256).hexdigest()


class Refusals:
    """The log of the connections one socket refused: each once, the first LOGGED_REFUSALS in full."""

    def __init__(self, who):
        self.who, self.count = who, 0

    def refused(self, what):
        self.count += 1
        if self.count <= LOGGED_REFUSALS:
            log.warning("distdl: %s refused %s", self.who, what)
        if self.count == LOGGED_REFUSALS:
            log.warning("distdl: %s counts further refusals without logging them", self.who)

    def watch(self, socket):
        """A monitor of ``socket``'s failed handshakes, for ``drain``."""
        return socket.get_monitor_socket(HANDSHAKE_FAILURES)

    def drain(self, monitor):
        while monitor.poll(0):
            event = recv_monitor_message(monitor)
            self.refused(f"a connection at {event['endpoint'].decode(errors='replace')} that failed the ZeroMQ "
                         f"handshake ({zmq.Event(event['event']).name}: not a peer of this job)")

    def summary(self):
        if self.count > LOGGED_REFUSALS:
            log.warning("distdl: %s refused %d connections in all", self.who, self.count)


def frame_property(frame, name):
    """A metadata property of a received frame ("Peer-Address", "User-Id"), or None where it has none."""
    try:
        return frame.get(name)
    except zmq.ZMQError:
        return None


def password(token, client_key, server_key):
    """The one-time password of the connection from ``client_key``'s rank to ``server_key``'s inbox."""
    return proof(token, "distdl connect", client_key, server_key)


def secure_inbox(socket, scheme_name, secret_key):
    """Make ``socket`` a server of ``scheme_name`` whose every connection the context's Gatekeeper vets."""
    socket.zap_domain = ZAP_DOMAIN
    if scheme_name == "curve":
        socket.curve_server = True
        socket.curve_secretkey = secret_key.encode()
    else:
        socket.plain_server = True


def secure_outbox(socket, scheme_name, token, my_keys, peer_key, my_rank):
    """Make ``socket`` a client that the inbox of the rank with ``peer_key`` admits."""
    public, secret = my_keys
    if scheme_name == "curve":
        socket.curve_serverkey = peer_key.encode()
        socket.curve_publickey = public.encode()
        socket.curve_secretkey = secret.encode()
    else:
        socket.plain_username = str(my_rank).encode()
        socket.plain_password = password(token, public, peer_key).encode()


class Gatekeeper:
    """The ZAP handler of one ZeroMQ context: it admits the job's peers and refuses, and logs, everyone else.

    Until ``admit`` names the peers (after the rendezvous), handshakes wait. A
    refused connection is logged once per address; its frames never arrive.
    """

    def __init__(self, context, rank, scheme_name):
        self.rank, self.scheme = rank, scheme_name
        self._socket = context.socket(zmq.REP)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.bind(ZAP_ENDPOINT)
        self._allowed = {}  # credential -> the user id (a rank) frames of its connection carry
        self._ready, self._stop = threading.Event(), threading.Event()
        self.refusals = Refusals(f"rank {rank}'s inbox")
        self._thread = threading.Thread(target=self._serve, name=f"distdl-zap-{rank}", daemon=True)
        self._thread.start()

    def admit(self, token, my_key, peer_keys):
        """Open the inbox to the ranks of ``peer_keys`` ({rank: public key}) only."""
        for rank, key in peer_keys.items():
            credential = (z85.decode(key) if self.scheme == "curve"
                          else (str(rank).encode(), password(token, key, my_key).encode()))
            self._allowed[credential] = str(rank).encode()
        self._ready.set()

    def close(self):
        self._stop.set()
        self._thread.join()
        self._socket.close(linger=0)

    def _serve(self):
        while not self._stop.is_set():
            if not self._ready.is_set() or not self._socket.poll(100):
                self._ready.wait(0.1)
                continue
            request = self._socket.recv_multipart()
            version, request_id, _, address, _, mechanism, *credentials = request + [b""] * max(0, 6 - len(request))
            user = self._vet(mechanism, credentials)
            if user is None:
                self.refusals.refused(f"a connection from {address.decode(errors='replace')}: a "
                                      f"{mechanism.decode(errors='replace')} handshake without a credential of "
                                      "this run")
            self._socket.send_multipart([version, request_id, b"200" if user else b"400",
                                         b"OK" if user else b"not a peer of this job", user or b"", b""])

    def _vet(self, mechanism, credentials):
        if self.scheme == "curve" and mechanism == b"CURVE" and len(credentials) == 1:
            return self._allowed.get(credentials[0])
        if self.scheme == "auth" and mechanism == b"PLAIN" and len(credentials) == 2:
            return self._allowed.pop(tuple(credentials), None)  # one connection per password, once
        return None
