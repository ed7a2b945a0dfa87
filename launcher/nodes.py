"""The launchers of a multi-node job keep in touch: node 0 coordinates, every other node connects to it.

Node 0 listens at --master-addr:--master-port. Each node sends its node rank,
worker count, distdl version and the SHA-256 of the script; node 0 checks that
they agree and answers with the job's run token and the port of the workers'
rendezvous. Then every launcher sends a heartbeat each second. A node whose
workers fail tells node 0, which tells the others; a node that goes silent for
LOST_AFTER seconds, or whose connection drops before it said it was done, is
named as lost. Either way every node stops its workers within seconds.
"""

import json
import socket
import threading
import time

HEARTBEAT_SECONDS = 1.0
LOST_AFTER = 5.0


class NodeError(RuntimeError):
    pass


class _Peer:
    def __init__(self, node, sock):
        self.node, self.sock = node, sock
        self.reader = sock.makefile("r")
        self.last_seen = time.monotonic()
        self.done = False
        self.lock = threading.Lock()

    def send(self, message):
        with self.lock:
            self.sock.sendall((json.dumps(message) + "\n").encode())


class NodeLink:
    def __init__(self, spec, identity, timeout):
        self.spec, self.identity, self.timeout = spec, identity, timeout
        self.peers = []
        self._failure = None
        self._closing = False

    # -- forming the job ---------------------------------------------------------------------------------------------
    def establish(self, plan=None):
        """Node 0: wait for every node, check them, send ``plan``. Other nodes: register, return the plan."""
        if self.spec.node_rank == 0:
            self._accept_all(plan)
            return plan
        return self._register()

    def _accept_all(self, plan):
        server = socket.create_server((self.spec.master_addr, self.spec.master_port))
        server.settimeout(1.0)
        deadline = time.monotonic() + self.timeout
        try:
            while len(self.peers) < self.spec.nnodes - 1:
                if time.monotonic() > deadline:
                    joined = sorted(p.node for p in self.peers)
                    missing = sorted(set(range(1, self.spec.nnodes)) - set(joined))
                    raise NodeError(f"nodes {missing} did not join within {self.timeout:g} s")
                try:
                    sock, _ = server.accept()
                except socket.timeout:
                    continue
                hello = json.loads(sock.makefile("r").readline() or "{}")
                problem = self._problem(hello)
                peer = _Peer(hello.get("node_rank"), sock)
                if problem:
                    peer.send({"error": problem})
                    raise NodeError(problem)
                self.peers.append(peer)
        finally:
            server.close()
        for peer in self.peers:
            peer.send({"plan": plan})
        self._start_threads()

    def _problem(self, hello):
        mine = self.identity
        for key, what in (("version", "distdl version"), ("script", "script (SHA-256)"), ("nproc", "worker count"),
                          ("nnodes", "number of nodes")):
            if hello.get(key) != mine[key]:
                return (f"node {hello.get('node_rank')} has {what} {hello.get(key)!r} but node 0 has {mine[key]!r}: "
                        "every node must run the same distdl, script and options")
        if not 0 < hello.get("node_rank", -1) < self.spec.nnodes or hello["node_rank"] in [p.node for p in self.peers]:
            return f"node rank {hello.get('node_rank')} is out of range or taken twice"
        return None

    def _register(self):
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                sock = socket.create_connection((self.spec.master_addr, self.spec.master_port), timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise NodeError(f"node 0 at {self.spec.master_addr}:{self.spec.master_port} did not answer "
                                    f"within {self.timeout:g} s") from None
                time.sleep(0.2)
        sock.settimeout(None)
        peer = _Peer(0, sock)
        peer.send({**self.identity, "node_rank": self.spec.node_rank})
        answer = json.loads(peer.reader.readline() or "{}")
        if "error" in answer or "plan" not in answer:
            raise NodeError(f"refused by node 0: {answer.get('error', 'the connection closed')}")
        self.peers.append(peer)
        self._start_threads()
        return answer["plan"]

    # -- keeping in touch --------------------------------------------------------------------------------------------
    def _start_threads(self):
        for peer in self.peers:
            threading.Thread(target=self._listen, args=(peer,), daemon=True).start()
        threading.Thread(target=self._beat, daemon=True).start()

    def _beat(self):
        while not self._closing:
            for peer in self.peers:
                try:
                    peer.send({"heartbeat": self.spec.node_rank})
                except OSError:
                    pass
            time.sleep(HEARTBEAT_SECONDS)

    def _listen(self, peer):
        for line in iter(peer.reader.readline, ""):
            peer.last_seen = time.monotonic()
            message = json.loads(line)
            if "failed" in message:
                self._failure = self._failure or message["failed"]
                if self.spec.node_rank == 0:  # pass it on to the other nodes
                    self._tell_others(message, peer)
            elif message.get("done"):
                peer.done = True
        if not peer.done and not self._closing and self._failure is None:
            self._failure = f"lost node {peer.node}: its launcher's connection closed"

    def _tell_others(self, message, source):
        for other in self.peers:
            if other is not source:
                try:
                    other.send(message)
                except OSError:
                    pass

    def failure(self):
        """Why this node must stop because of another, or None."""
        if self._failure is None:
            for peer in self.peers:
                if not peer.done and time.monotonic() - peer.last_seen > LOST_AFTER:
                    self._failure = f"lost node {peer.node}: no heartbeat for {LOST_AFTER:g} s"
        return self._failure

    def announce_failure(self, text):
        self._tell_others({"failed": f"node {self.spec.node_rank}: {text}"}, None)

    def close(self, succeeded):
        self._closing = True
        for peer in self.peers:
            try:
                if succeeded:
                    peer.send({"done": True})
                peer.sock.close()
            except OSError:
                pass
