"""horovodrun's and mpirun's host lists (``-H a:2,b:2``, ``--hostfile``), in the form mpiexec's Hydra takes (-hosts).

distdl-run does not start processes on other hosts itself: for MPI across hosts it
hands the list to Hydra, the multi-host launcher that comes with mpiexec.
"""

import re

HOST = re.compile(r"^[A-Za-z0-9_.\-\[\]:]*[A-Za-z0-9_.\-\]]$")


class HostsError(ValueError):
    pass


def _entry(host, slots, where):
    if not host or not HOST.match(host) or host.startswith("-"):
        raise HostsError(f"{where}: {host!r} is not a host name")
    try:
        count = int(slots)
    except ValueError:
        raise HostsError(f"{where}: slots {slots!r} of {host} is not a whole number") from None
    if count < 1:
        raise HostsError(f"{where}: {host} has {count} slots; give at least 1")
    return host, count


def parse_hosts(text):
    """``"a:2,b:2,c"`` (horovodrun -H, mpirun -H) as [(host, slots)]; a host without slots has one."""
    hosts = []
    for item in text.split(","):
        host, _, slots = item.strip().rpartition(":") if ":" in item else (item.strip(), "", "1")
        hosts.append(_entry(host, slots, f"-H {text}"))
    return hosts


def read_hostfile(path):
    """A hostfile as [(host, slots)]: horovod's and Open MPI's ``host slots=N``, Hydra's ``host:N``, or ``host``."""
    hosts = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            words = line.split("#", 1)[0].split()
            if not words:
                continue
            where = f"{path} line {number}"
            if len(words) == 1:
                host, _, slots = words[0].rpartition(":") if ":" in words[0] else (words[0], "", "1")
            elif len(words) == 2 and words[1].startswith("slots="):
                host, slots = words[0], words[1][len("slots="):]
            else:
                raise HostsError(f"{where}: {line.strip()!r} is neither 'host slots=N' nor 'host:N'")
            hosts.append(_entry(host, slots, where))
    if not hosts:
        raise HostsError(f"{path} names no host")
    return hosts


def hydra_hosts(hosts):
    """The -hosts argument of mpiexec (Hydra): ``a:2,b:2``."""
    return ",".join(f"{host}:{slots}" for host, slots in hosts)
