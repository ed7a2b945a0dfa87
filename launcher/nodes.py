"""The launchers of a multi-node job: node 0 coordinates every attempt, the other nodes follow it.

Node 0 listens at --master-addr:--master-port for the whole job. A node that
connects must prove it holds the job secret (launcher/secret.py) by an HMAC over
a nonce from each side, and node 0 proves it back; a stranger (wrong secret,
garbage, JSON of the wrong shape, a line over 64 KiB, silence) is refused on
that connection alone and logged once with its address, and the job goes on. A
node with the secret but a different script, distdl version or options is a
genuine conflict: an error naming both.

Each attempt: node 0 sends every node ``{"plan": {attempt, nonce, port}}``; each
node derives the run token from the nonce (it never crosses the network) and
starts its workers. A node whose workers end sends ``{"result": ...}``; at the
first failure anywhere node 0 sends ``{"stop": attempt}`` and waits until every
node has stopped its workers and said so; then it sends the next plan (a
restart from the newest checkpoint) or ``{"end": ...}``. Every launcher sends a
heartbeat each second; a node silent for LOST_AFTER seconds, or whose
connection drops, is lost, and a job that lost a node ends.
"""

import queue
import socket
import threading
import time

from launcher import secret
from launcher.failure import Failure, Kind
from launcher.spec import reserve_port
from launcher.wire import Refused, encode, receive

HEARTBEAT_SECONDS = 1.0
LOST_AFTER = 5.0
HANDSHAKE_SECONDS = 5.0
MAX_PENDING = 64  # connections waiting for their handshake at once; more are closed at once
STOP_SECONDS = 60.0  # how long node 0 waits for a node told to stop to say it did
IDENTITY_FIELDS = (("version", "distdl version"), ("script", "script (SHA-256)"), ("nproc", "worker count"),
                   ("nnodes", "number of nodes"), ("max_restarts", "--max-restarts"))


class NodeError(RuntimeError):
    pass


class _Peer:
    def __init__(self, node, sock, reader, address):
        self.node, self.sock, self.reader, self.address = node, sock, reader, address
        self.last_seen = time.monotonic()
        self.lost = False
        self.lock = threading.Lock()

    def send(self, message):
        try:
            with self.lock:
                self.sock.sendall(encode(message))
        except OSError:
            pass  # a dead connection shows up as a lost node

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def _address(address):
    return f"{address[0]}:{address[1]}"


class _Link:
    """What both sides share: the identity, heartbeats, and the messages of authenticated peers as events."""

    def __init__(self, spec, identity, job_secret, timeout, say):
        self.spec, self.identity, self.secret, self.timeout, self.say = spec, identity, job_secret, timeout, say
        self.peers = {}  # node rank -> _Peer
        self.events = queue.Queue()  # (node, message); message None: that node is lost
        self._closing = False
        self._lock = threading.Lock()
        threading.Thread(target=self._beat, daemon=True).start()

    def _add(self, peer):
        with self._lock:
            self.peers[peer.node] = peer
        threading.Thread(target=self._listen, args=(peer,), daemon=True).start()

    def _listen(self, peer):
        why = "its launcher's connection closed"
        try:
            while True:
                message = receive(peer.reader)
                if message is None:
                    break
                peer.last_seen = time.monotonic()
                if "heartbeat" not in message:
                    self.events.put((peer.node, message))
        except (Refused, OSError, ValueError) as exc:
            why = f"its connection failed ({exc})"
        self._lose(peer, why)

    def _lose(self, peer, why):
        with self._lock:
            if peer.lost or self._closing:
                return
            peer.lost = True
        self.events.put((peer.node, {"lost": f"lost node {peer.node}: {why}"}))

    def _beat(self):
        while not self._closing:
            for peer in list(self.peers.values()):
                peer.send({"heartbeat": self.spec.node_rank})
                if time.monotonic() - peer.last_seen > LOST_AFTER:
                    self._lose(peer, f"no heartbeat for {LOST_AFTER:g} s")
            time.sleep(HEARTBEAT_SECONDS)

    def _broadcast(self, message):
        for peer in list(self.peers.values()):
            peer.send(message)

    def _environment(self, plan):
        return {"attempt": plan["attempt"], "run_id": secret.run_token(self.secret, plan["nonce"]),
                "port": plan["port"]}

    def close(self):
        self._closing = True
        for peer in list(self.peers.values()):
            peer.close()


class Coordinator(_Link):
    """Node 0: admits the other nodes, hands out each attempt's plan, collects results, decides restart or end."""

    def __init__(self, spec, identity, job_secret, timeout, say):
        super().__init__(spec, identity, job_secret, timeout, say)
        self.server = socket.create_server((spec.master_addr, spec.master_port), backlog=256)
        self._pending = 0
        self._refusals = set()
        self._conflict = None
        self._formed = False
        self._claimed = {}  # node rank -> address of the connection that claimed it
        self.results, self.lost, self.leaving = {}, {}, set()
        self.attempt = None
        threading.Thread(target=self._serve, daemon=True).start()

    # -- admitting nodes, refusing strangers -------------------------------------------------------------------------
    def _serve(self):
        while True:
            try:
                sock, address = self.server.accept()
            except OSError:
                return  # closed at the end of the job
            with self._lock:
                crowded = self._pending >= MAX_PENDING
                self._pending += not crowded
            if crowded:
                self._refuse(address, f"more than {MAX_PENDING} connections were waiting for their handshake")
                sock.close()
                continue
            threading.Thread(target=self._greet, args=(sock, address), daemon=True).start()

    def _greet(self, sock, address):
        try:
            self._handshake(sock, address)
        except Refused as exc:
            self._refuse(address, str(exc))
            sock.close()
        except (OSError, ValueError) as exc:
            self._refuse(address, f"the connection failed ({exc or type(exc).__name__})")
            sock.close()
        finally:
            with self._lock:
                self._pending -= 1

    def _refuse(self, address, reason):
        key = (address[0], reason)
        if key not in self._refusals:  # once per address and reason: a flood does not flood the log
            self._refusals.add(key)
            self.say(f"refused a connection from {_address(address)}: {reason}")

    def _handshake(self, sock, address):
        sock.settimeout(HANDSHAKE_SECONDS)
        reader = sock.makefile("rb")
        mine = secret.nonce()
        sock.sendall(encode({"distdl_node_port": 1, "nonce": mine}))
        try:
            hello = receive(reader)
        except TimeoutError:
            raise Refused(f"no handshake within {HANDSHAKE_SECONDS:g} s") from None
        if hello is None:
            raise Refused("it closed the connection before its handshake")
        node, theirs, proof = hello.get("node_rank"), hello.get("nonce"), hello.get("proof")
        if type(node) is not int or not isinstance(theirs, str) or not 16 <= len(theirs) <= 128:
            raise Refused("a handshake of the wrong shape")
        if not secret.verify(self.secret, proof, "node", mine, theirs, node):
            raise Refused("a wrong job secret (its proof does not match)")
        sock.sendall(encode({"proof": secret.proof(self.secret, "coordinator", mine, theirs)}))
        with self._lock:  # authenticated: from here on a disagreement is a genuine conflict, an error
            problem = self._problem(node, hello.get("identity"), address)
            if problem is None:
                sock.settimeout(None)
                self._claimed[node] = address
        if problem:
            sock.sendall(encode({"error": problem}))
            sock.close()
            self.say(f"refused node {node} at {_address(address)}: {problem}")
            self._conflict = self._conflict or (None if self._formed else problem)
            return
        sock.sendall(encode({"welcome": True}))
        self._add(_Peer(node, sock, reader, address))

    def _problem(self, node, identity, address):
        if not isinstance(identity, dict):
            return f"node {node} at {_address(address)} sent no identity: is it an older distdl-run?"
        for key, what in IDENTITY_FIELDS:
            if identity.get(key) != self.identity[key]:
                return (f"node {node} at {_address(address)} has {what} {identity.get(key)!r} but node 0 has "
                        f"{self.identity[key]!r}: every node must run the same distdl, script and options")
        if not 0 < node < self.spec.nnodes:
            return f"node {node} at {_address(address)}: a node rank out of range 1..{self.spec.nnodes - 1}"
        if node in self._claimed:
            return (f"node rank {node} is claimed twice: by {_address(self._claimed[node])} and by "
                    f"{_address(address)}")
        return None

    def join(self):
        deadline = time.monotonic() + self.timeout
        while len(self.peers) < self.spec.nnodes - 1:
            if self._conflict:
                raise NodeError(self._conflict)
            if time.monotonic() > deadline:
                missing = sorted(set(range(1, self.spec.nnodes)) - set(self.peers))
                raise NodeError(f"nodes {missing} did not join within {self.timeout:g} s")
            time.sleep(0.05)
        self._formed = True

    # -- one attempt -------------------------------------------------------------------------------------------------
    def plan(self, attempt):
        """A fresh port and nonce for ``attempt``, sent to every node; this node's share of it."""
        listener = reserve_port(self.spec.master_addr)
        plan = {"attempt": attempt, "nonce": secret.nonce(), "port": listener.getsockname()[1]}
        self.attempt, self.results[attempt] = attempt, {}
        self._broadcast({"plan": plan})
        return {**self._environment(plan), "listener": listener}

    def _drain(self, timeout=0.0):
        try:
            node, message = self.events.get(timeout=timeout)
        except queue.Empty:
            return False
        if "lost" in message:
            self.lost[node] = message["lost"]
        elif message.get("result") == self.attempt:
            self.results[self.attempt][node] = message
            if message.get("final"):
                self.leaving.add(node)
        return True

    def _peer_failure(self):
        if self.lost:
            return Failure(Kind.PEER_NODE_FAILED, detail=next(iter(self.lost.values())))
        for node, result in sorted(self.results.get(self.attempt, {}).items()):
            if not result.get("ok"):
                return Failure(Kind.PEER_NODE_FAILED, detail=f"node {node}: {str(result.get('why'))[:500]}")
        return None

    def problem(self):
        """While this node's workers run: why another node makes this attempt fail, or None."""
        while self._drain():
            pass
        failure = self._peer_failure()
        return failure.detail if failure else None

    def announce(self, attempt, failure):
        if failure is not None:
            self._broadcast({"stop": attempt})

    def settle(self, attempt, failure):
        """Wait until every node has ended this attempt (telling them to stop at the first failure); the outcome.

        Nodes whose workers still run are waited for as long as their launchers keep up the heartbeat; once they
        were told to stop, for STOP_SECONDS at most.
        """
        deadline = time.monotonic() + STOP_SECONDS if failure is not None else None
        while True:
            while self._drain():
                pass
            failure = failure or self._peer_failure()
            if failure is not None and deadline is None:
                self._broadcast({"stop": attempt})
                deadline = time.monotonic() + STOP_SECONDS
            waiting = [n for n in range(1, self.spec.nnodes) if n not in self.results[attempt] and n not in self.lost]
            if not waiting:
                return failure
            if deadline is not None and time.monotonic() > deadline:
                for node in waiting:
                    self.lost[node] = f"lost node {node}: it did not stop its workers within {STOP_SECONDS:g} s"
                return failure or self._peer_failure()
            self._drain(0.05)

    def decide(self, attempt, failure):
        """Whether to restart; when not, every node is told the end."""
        restart = (failure is not None and attempt < self.spec.max_restarts and not self.lost and not self.leaving
                   and failure.kind not in (Kind.INTERRUPTED, Kind.NODES_FAILED))
        if not restart:
            self._broadcast({"end": {"ok": failure is None, "why": failure.describe() if failure else ""}})
        return restart

    def succeeded(self):
        return True  # asked only once every node's result of the last attempt was a success

    def close(self):
        super().close()
        self.server.close()


class Member(_Link):
    """Node 1..N-1: joins node 0, and follows its plans until it says the job ended."""

    def __init__(self, spec, identity, job_secret, timeout, say):
        super().__init__(spec, identity, job_secret, timeout, say)
        self.attempt, self.stash, self.end = None, None, None

    def join(self):
        deadline = time.monotonic() + self.timeout
        where = f"{self.spec.master_addr}:{self.spec.master_port}"
        while True:
            try:
                self._handshake(socket.create_connection((self.spec.master_addr, self.spec.master_port), timeout=5))
                return
            except (OSError, Refused) as exc:
                if time.monotonic() > deadline:
                    raise NodeError(f"node 0 at {where} did not admit this node within {self.timeout:g} s "
                                    f"({exc or type(exc).__name__})") from None
                time.sleep(0.2)

    def _handshake(self, sock):
        reader = sock.makefile("rb")
        hello = receive(reader)
        if hello is None or not isinstance(hello.get("nonce"), str):
            sock.close()
            raise Refused("node 0 closed the connection before its handshake")
        theirs, mine, node = hello["nonce"], secret.nonce(), self.spec.node_rank
        sock.sendall(encode({"node_rank": node, "nonce": mine, "proof": secret.proof(self.secret, "node", theirs, mine,
                                                                                        node),
                             "identity": self.identity}))
        answer = receive(reader) or {}
        if not secret.verify(self.secret, answer.get("proof"), "coordinator", theirs, mine):
            sock.close()
            raise NodeError(f"the process at {self.spec.master_addr}:{self.spec.master_port} refused this node's proof "
                            "of the job secret or could not prove it holds the same one: every node needs the same "
                            "DISTDL_JOB_SECRET (or --secret-file)")
        verdict = receive(reader) or {"error": "node 0 closed the connection"}
        if "welcome" not in verdict:
            sock.close()
            raise NodeError(f"refused by node 0: {verdict.get('error')}")
        sock.settimeout(None)
        self._add(_Peer(0, sock, reader, (self.spec.master_addr, self.spec.master_port)))

    def _next(self, timeout=None):
        """The next message from node 0 (a lost node 0 as {"lost": why}); None after ``timeout`` s."""
        try:
            return self.events.get(timeout=timeout)[1]
        except queue.Empty:
            return None

    def plan(self, attempt):
        """Node 0's plan for ``attempt``; None when it says the job ended instead."""
        message = self.stash or self._until(("plan", "end", "lost"))
        self.stash = None
        if "plan" not in message or not isinstance(message["plan"], dict):
            self.end = message
            return None
        plan = message["plan"]
        self.attempt = plan.get("attempt")
        return self._environment(plan)

    def _until(self, kinds):
        while True:
            message = self._next()
            if any(kind in message for kind in kinds):
                return message

    def problem(self):
        while True:
            message = self._next(0)
            if message is None:
                return None
            if "lost" in message:
                self.end = message
                return message["lost"]
            if message.get("stop") == self.attempt:
                return "node 0 stopped this attempt: a worker on another node failed"
            if "end" in message:
                self.end = message
                return f"node 0 ended the job: {message['end'].get('why') if isinstance(message['end'], dict) else ''}"

    def announce(self, attempt, failure):
        leaving = failure is not None and failure.kind is Kind.INTERRUPTED
        for peer in list(self.peers.values()):
            peer.send({"result": attempt, "ok": failure is None, "why": failure.describe() if failure else "",
                       "final": leaving})

    def settle(self, attempt, failure):
        return failure

    def decide(self, attempt, failure):
        """Restart when node 0 sends the next plan; the end when it says so (or is lost)."""
        if self.end is not None or (failure is not None and failure.kind is Kind.INTERRUPTED):
            return False
        message = self._until(("plan", "end", "lost"))
        if "plan" in message:
            self.stash = message
            return True
        self.end = message
        return False

    def succeeded(self):
        end = (self.end or {}).get("end")
        return isinstance(end, dict) and end.get("ok") is True
