"""The job secret that every node's launcher holds: nodes prove it to each other, and run tokens derive from it.

The secret never crosses the network: a node proves it holds it by an HMAC of
fresh nonces from both sides (compared with ``hmac.compare_digest``), and each
attempt's run token (DISTDL_RUN_ID) is ``HMAC(secret, attempt nonce)``, computed
on every node from the nonce that node 0 sends.
"""

import hashlib
import hmac
import json
import os
import secrets

VARIABLE = "DISTDL_JOB_SECRET"
MIN_LENGTH = 16


class SecretError(ValueError):
    pass


def job_secret(nnodes, secret_file=None):
    """The secret from --secret-file or $DISTDL_JOB_SECRET; a fresh random one for a single node."""
    if secret_file:
        try:
            with open(secret_file, "rb") as f:
                value = f.read(4096).strip()
        except OSError as exc:
            raise SecretError(f"cannot read the job secret file {secret_file}: {exc}") from None
        where = secret_file
    elif os.environ.get(VARIABLE):
        value, where = os.environ[VARIABLE].encode(), f"${VARIABLE}"
    elif nnodes == 1:
        return secrets.token_bytes(32)
    else:
        raise SecretError(f"a multi-node job needs the same secret on every node: set {VARIABLE} (for example to the "
                          "output of `python -c 'import secrets; print(secrets.token_hex(32))'`) or pass --secret-file")
    if len(value) < MIN_LENGTH:
        raise SecretError(f"the job secret from {where} is {len(value)} bytes; use at least {MIN_LENGTH}")
    return value


def nonce():
    return secrets.token_hex(16)


def proof(secret, role, *parts):
    """HMAC-SHA256 of ``role`` and ``parts``: the role keeps a node's proof from being replayed as node 0's.

    The fields are a JSON list, so no choice of a peer's nonce makes two different lists one message
    (joined with a separator, ("a|b", "c") and ("a", "b|c") were the same)."""
    return hmac.new(secret, json.dumps([role, *map(str, parts)]).encode(), hashlib.sha256).hexdigest()


def verify(secret, given, role, *parts):
    return isinstance(given, str) and hmac.compare_digest(given.encode(), proof(secret, role, *parts).encode())


def run_token(secret, attempt_nonce):
    """DISTDL_RUN_ID of one attempt: the same on every node, never sent."""
    return proof(secret, "run-token", attempt_nonce)[:32]
