"""Lines of JSON between launchers: each message one JSON object on one line of at most 64 KiB."""

import json

MAX_LINE = 64 * 1024


class Refused(Exception):
    """What a connection sent is not a message of this protocol: the connection is closed, the job goes on."""


def receive(reader):
    """The next message from ``reader`` (a binary file of a socket); None when the connection closed."""
    line = reader.readline(MAX_LINE + 1)
    if not line:
        return None
    if len(line) > MAX_LINE or not line.endswith(b"\n"):
        raise Refused(f"a line longer than {MAX_LINE // 1024} KiB" if len(line) > MAX_LINE else "a cut-off line")
    try:
        message = json.loads(line)
    except (ValueError, RecursionError):
        raise Refused("a line that is not JSON") from None
    if not isinstance(message, dict):
        raise Refused(f"JSON of the wrong shape ({type(message).__name__}, not an object)")
    return message


def encode(message):
    return (json.dumps(message) + "\n").encode()
