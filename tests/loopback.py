"""Capture what crosses the loopback interface on one TCP port (as root, with an AF_PACKET socket)."""

import socket
import struct
import threading

ETH_P_ALL = 0x0003


def available():
    try:
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL)).close()
        return True
    except (AttributeError, PermissionError, OSError):
        return False


class Capture:
    """Every TCP payload to or from ``port`` on ``lo`` while the capture runs, in ``self.data``."""

    def __init__(self, port):
        self.port, self.data, self._running = port, bytearray(), True
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.bind(("lo", 0))
        self.sock.settimeout(0.2)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while self._running:
            try:
                frame, (_, _, kind, *_) = self.sock.recvfrom(1 << 17)
            except socket.timeout:
                continue
            if kind == socket.PACKET_OUTGOING:  # each loopback packet is seen twice: keep the incoming copy
                continue
            ip = frame[14:]
            if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != socket.IPPROTO_TCP:
                continue
            tcp = ip[(ip[0] & 0x0F) * 4:]
            source, destination = struct.unpack("!HH", tcp[:4])
            if self.port in (source, destination):
                self.data += tcp[(tcp[12] >> 4) * 4:]

    def stop(self):
        self._running = False
        self.thread.join()
        self.sock.close()
        return bytes(self.data)
