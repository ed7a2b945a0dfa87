"""A process that can reach a distdl job's ports but does not hold its run token, doing its worst.

python stranger.py proxy DIR TARGET_PORT CAPTURE   relay one connection to TARGET_PORT, record what its client
                                                    sent (a registration of a run of the job) in CAPTURE; the
                                                    port it listens at goes to DIR/proxy-port
python stranger.py rendezvous DIR PORT CAPTURE     attack rank 0's rendezvous while it waits for its ranks;
                                                    write DIR/rendezvous-attacked, hold 200 connections open
                                                    until DIR/rank-0.json appears (the job assembled)
python stranger.py inboxes DIR CAPTURE             attack every rank's inbox (DIR/rank-*.json); write
                                                    DIR/inboxes-attacked, hold 200 connections open until DIR/stop

Every attack is in a connection of its own; the stranger takes whatever comes back (nothing, mostly).
"""

import json
import os
import socket
import struct
import sys
import threading
import time
from pathlib import Path

import numpy as np
import zmq

from distdl.comm import rendezvous
from distdl.comm.signature import pack_header, signature

GIB = 1 << 30
STARTED = time.monotonic()


def log(what):
    """Each attack's start, with the seconds since the stranger began: a slow step shows in a failing test's output."""
    sys.stdout.write(f"stranger +{time.monotonic() - STARTED:.1f} s: {what}\n")  # one write: the threads' lines stay whole
    sys.stdout.flush()


def tcp(port, host="127.0.0.1"):
    connection = socket.create_connection((host, port), timeout=5)
    connection.settimeout(2)
    return connection


def send_raw(port, data, seconds=5):
    """Send ``data`` on a fresh TCP connection, then read what comes back until the peer closes or is silent
    (or ``seconds`` passed: a peer that kept talking would be no refusal either, but the stranger moves on)."""
    deadline = time.monotonic() + seconds
    try:
        with tcp(port) as connection:
            connection.sendall(data)
            while connection.recv(65536) and time.monotonic() < deadline:
                pass
    except OSError:
        pass  # reset, or timed out: both are refusals


def zmtp_greeting():
    """A ZMTP 3.0 greeting and READY of a NULL-mechanism DEALER: enough to be taken for a ZeroMQ peer."""
    greeting = b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" + b"\x00" * 31
    ready = b"\x05READY" + b"\x0bSocket-Type" + struct.pack(">I", 6) + b"DEALER"
    return greeting + b"\x04" + bytes([len(ready)]) + ready


def huge_frame(port):
    """Announce a 1 GiB frame and stream 16 MiB of it: a receiver that buffered it would grow."""
    try:
        with tcp(port) as connection:
            connection.sendall(zmtp_greeting() + b"\x02" + struct.pack(">Q", GIB))
            chunk = bytes(1 << 20)
            for _ in range(16):
                connection.sendall(chunk)
    except OSError:
        pass


def zmq_messages(endpoint, kind, messages, **options):
    """Send ``messages`` (lists of frames) over a ZeroMQ socket of ``kind`` with socket ``options``.

    A refused handshake can leave the socket with no pipe to send on, and a send then blocks forever
    (libzmq, seen here: PLAIN with a wrong password, about one time in two): each send waits a second at most.
    """
    context = zmq.Context.instance()
    sock = context.socket(kind)
    sock.setsockopt(zmq.LINGER, 500)
    sock.setsockopt(zmq.SNDTIMEO, 1000)
    for name, value in options.items():
        setattr(sock, name, value)
    sock.connect(endpoint)
    try:
        for frames in messages:
            sock.send_multipart(frames)
    except zmq.Again:
        log(f"{endpoint} takes no more messages (refused)")
    if kind == zmq.DEALER and sock.poll(1000):
        sock.recv_multipart()
    sock.close()


def recorded_messages(data):
    """The message frames in recorded ZMTP 3 bytes: after the 64-byte greeting, commands skipped."""
    frames, i = [], 64
    while i < len(data):
        flags = data[i]
        size, start = (struct.unpack(">Q", data[i + 1:i + 9])[0], i + 9) if flags & 2 else (data[i + 1], i + 2)
        if not flags & 4:
            frames.append(data[start:start + size])
        i = start + size
    return frames


def hold_connections(ports, count, seconds=20):
    """Up to ``count`` idle connections spread over ``ports``, as many as open within ``seconds``."""
    held, deadline = [], time.monotonic() + seconds
    for i in range(count):
        if time.monotonic() > deadline:
            break
        try:
            held.append(tcp(ports[i % len(ports)]))
        except OSError:
            pass
    log(f"holding {len(held)} idle connections to ports {ports}")
    return held


def wait_for(path, seconds=120):
    deadline = time.monotonic() + seconds
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def common_attacks(port, capture):
    rng = np.random.default_rng(0)
    log(f"garbage to port {port}")
    send_raw(port, rng.bytes(4096))
    send_raw(port, b"abc")
    send_raw(port, zmtp_greeting() + b"\x00\x03abc")
    log(f"a huge frame to port {port}")
    huge_frame(port)
    if capture.exists():
        log(f"a recorded run to port {port}")
        send_raw(port, capture.read_bytes())  # a run of this same job, recorded on the wire
        zmq_messages(f"tcp://127.0.0.1:{port}", zmq.DEALER, [[m] for m in recorded_messages(capture.read_bytes())])


def attack_rendezvous(directory, port, capture):
    held = hold_connections([port], 200)
    common_attacks(port, capture)
    endpoint = f"tcp://127.0.0.1:{port}"
    for payload in (b"5", b'"hello"', b"[1, 2, 3]", json.dumps({"type": "register", "x": "y" * (1 << 20)}).encode(),
                    json.dumps({"rank": 1, "size": 2, "token": "guess", "peer": {}}).encode()):
        zmq_messages(endpoint, zmq.DEALER, [[payload]])
    zmq_messages(endpoint, zmq.DEALER, [[b"abc"]])
    me = {"host": socket.gethostname(), "netns": None, "tcp": "tcp://127.0.0.1:9", "ipc": None, "key": "x" * 40}
    try:
        rendezvous.register(1, 2, "not-the-token", endpoint, me, timeout=2)
    except Exception as exc:  # the refusal: what a stranger gets
        print(f"stranger: refused as expected: {type(exc).__name__}", flush=True)
    (directory / "rendezvous-attacked").touch()
    wait_for(directory / "rank-0.json")
    for connection in held:
        connection.close()


def attack_inboxes(directory, capture):
    endpoints = [json.loads(path.read_text())["tcp"] for path in sorted(directory.glob("rank-*.json"))]
    ports = [int(endpoint.rsplit(":", 1)[1]) for endpoint in endpoints]
    held = hold_connections(ports, 200)
    forged = []
    for seq in range(1, 60):  # plausible sequence numbers; a count that disagrees with the payload
        call = signature(seq, "allreduce", "sum", np.zeros(1000, np.int64))
        forged.append([pack_header(call, 1, 0), np.ones(1, np.int64).tobytes()])
    public, secret = zmq.curve_keypair()

    def attack(endpoint, port):
        common_attacks(port, capture)
        log(f"forged frames to {endpoint}")
        zmq_messages(endpoint, zmq.PUSH, forged)
        zmq_messages(endpoint, zmq.PUSH, forged, plain_username=b"1", plain_password=b"guess")
        zmq_messages(endpoint, zmq.PUSH, forged, curve_serverkey=public, curve_publickey=public,
                     curve_secretkey=secret)

    attackers = [threading.Thread(target=attack, args=pair) for pair in zip(endpoints, ports)]  # all ranks at once
    for thread in attackers:
        thread.start()
    for thread in attackers:
        thread.join()
    log("inboxes attacked")
    (directory / "inboxes-attacked").touch()
    wait_for(directory / "stop")
    for connection in held:
        connection.close()


def proxy(directory, target_port, capture):
    """Relay one connection, as a man in the middle that records the client's bytes."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    (directory / "proxy-port").write_text(str(listener.getsockname()[1]))
    client, _ = listener.accept()
    server = socket.create_connection(("127.0.0.1", target_port))
    recorded = bytearray()

    def relay(source, sink, record):
        try:
            while data := source.recv(65536):
                if record:
                    recorded.extend(data)
                sink.sendall(data)
        except OSError:
            pass
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    threads = [threading.Thread(target=relay, args=(client, server, True)),
               threading.Thread(target=relay, args=(server, client, False))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    capture.write_bytes(bytes(recorded))


def main():
    mode, directory = sys.argv[1], Path(sys.argv[2])
    if mode == "proxy":
        proxy(directory, int(sys.argv[3]), Path(sys.argv[4]))
    elif mode == "rendezvous":
        attack_rendezvous(directory, int(sys.argv[3]), Path(sys.argv[4]))
    else:
        attack_inboxes(directory, Path(sys.argv[3]))
    os._exit(0)  # whatever ZeroMQ still holds for the job's ports (they never answer): not the stranger's concern


if __name__ == "__main__":
    main()
