"""An emulated cluster on this machine: one network namespace per node, links shaped with tc tbf.

    python scripts/cluster.py --nodes 4 --link 1gbit -- distdl-run -n 2 train.py --epochs 1

Each node is a namespace with its own hostname (a UTS namespace too, so the ranks of
one node see one host), an ``eth0`` with its own address and a veth link to a bridge
that lives in a namespace of its own, the switch. Both directions of each link are
shaped to --link with a token bucket (tbf); the kernel has no netem, so links add
no latency beyond the veth's own (tens of microseconds): what latency costs is not
emulated. The machine's own network namespace is never touched: no device, address
or route is added to it, and a namespace has no route beyond the cluster's subnet,
so the processes of a node can reach only the addresses this run made.

After ``--`` comes the command run on every node. For ``distdl-run`` (or
``python -m launcher``) the node's --nnodes, --node-rank, --master-addr (node 0's
address) and --master-port are filled in, and a fresh job secret is given in
$DISTDL_JOB_SECRET unless one is set; the ranks' ZeroMQ receives do not spin before they
block (DISTDL_ZMQ_SPIN_US=0 unless set: every node's ranks share this machine's cores,
which a node's own rank count does not show). Any other command runs as is, with
CLUSTER_NODE_RANK, CLUSTER_NODES and CLUSTER_MASTER_ADDR set. Each line comes back
prefixed with ``[node i]``; the exit code is the first non-zero one (0 when every
node succeeded). Everything is torn down at the end, after a failure, Ctrl-C or
SIGTERM too: the processes of every namespace are killed and the namespaces deleted.
Namespaces left by a run that was SIGKILLed are removed by the next run.
"""

import argparse
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time

PREFIX = "distdl-cluster"  # namespaces: distdl-cluster-<pid>-<suffix>-<node0|node1|...|switch>
NAME = re.compile(rf"^{PREFIX}-(\d+)-([0-9a-f]+)-(\w+)$")
MASTER_PORT = 29500  # free in node 0's fresh namespace
RATE = re.compile(r"^(\d+(?:\.\d+)?)([kmg]?)bit$")
GRACE_S = 10.0


class ClusterError(RuntimeError):
    """The cluster cannot be built here, or was asked for wrongly."""


def rate_bytes_per_s(link):
    """Bytes/s of a tc rate such as ``1gbit`` or ``100mbit``; None for ``none`` (unshaped)."""
    if link == "none":
        return None
    match = RATE.match(link)
    if not match:
        raise ClusterError(f"--link {link!r} is not a rate: give it as tc does, e.g. 1gbit, 100mbit, 500kbit, or none")
    value = float(match.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[match.group(2)] / 8
    if value < 1e4:
        raise ClusterError(f"--link {link} is below 80kbit: the token bucket would not pass a full packet in time")
    return value


def check_can_build():
    """Raise ClusterError saying what is missing where namespaces cannot be made."""
    missing = [tool for tool in ("ip", "tc", "unshare") if not shutil.which(tool)]
    if missing:
        raise ClusterError(f"cannot build an emulated cluster: {', '.join(missing)} not found (install iproute2 "
                           "and util-linux)")
    if os.geteuid() != 0:
        raise ClusterError("cannot build an emulated cluster: network namespaces need root (run it as root, or in a "
                           "container with CAP_SYS_ADMIN and CAP_NET_ADMIN)")
    probe = f"{PREFIX}-{os.getpid()}-probe-switch"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode:
        raise ClusterError(f"cannot build an emulated cluster: `ip netns add` failed: {made.stderr.strip()}")
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)


def sh(*command):
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise ClusterError(f"`{' '.join(command)}` failed: {result.stderr.strip()}")
    return result.stdout


def namespaces():
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in listing.splitlines() if line.strip()]


def alive(pid):
    return os.path.exists(f"/proc/{pid}")


def remove_namespace(name):
    """Kill every process inside the namespace, then delete it (its devices go with it)."""
    for _ in range(50):
        pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    subprocess.run(["ip", "netns", "del", name], capture_output=True)


def clean_stale():
    """Remove the namespaces of cluster runs whose process is gone (a run that was SIGKILLed)."""
    for name in namespaces():
        match = NAME.match(name)
        if match and not alive(int(match.group(1))):
            remove_namespace(name)


class Cluster:
    """K node namespaces on a private bridge, each link shaped to ``link``; a context manager that tears down.

    Args:
        nodes: how many nodes.
        link: a tc rate (``1gbit``) for each direction of every node's link, or ``none``.
    """

    def __init__(self, nodes, link="1gbit"):
        if not 1 <= nodes <= 200:
            raise ClusterError(f"--nodes {nodes}: give 1 to 200 nodes")
        self.nodes, self.link, self.rate = nodes, link, rate_bytes_per_s(link)
        # the token bucket: 1 ms of tokens, at least a GSO packet; it passes at once after a pause (scaling.py models
        # that). Smaller ones measured at 1gbit: below a 64 KiB GSO packet tbf cuts packets up (16 KiB: 76 MB/s,
        # not 119); 32 KiB with the nodes' GSO packets cut to 16 KiB keeps 119 MB/s, but allreduces on 4 nodes ran up
        # to twice as slow (4 ranks: 64 KiB 3.2 against 1.6 ms, 4 MiB 73 against 57), with twice the system time
        # (four times the packets) on the cores the ranks share
        self.burst = max(int(self.rate / 1000), 64 * 1024 + 1514) if self.rate else 0
        self.suffix = secrets.token_hex(3)
        self.subnet = f"198.18.{secrets.randbelow(256)}"  # RFC 2544's benchmarking range, inside the run's namespaces
        self.names = [f"{PREFIX}-{os.getpid()}-{self.suffix}-node{i}" for i in range(nodes)]
        self.switch = f"{PREFIX}-{os.getpid()}-{self.suffix}-switch"
        self.addresses = [f"{self.subnet}.{i + 1}" for i in range(nodes)]
        self.procs = []

    def __enter__(self):
        check_can_build()
        clean_stale()
        try:
            self._build()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(self, *exc):
        self.teardown()

    def made(self):
        """The namespaces of this run that exist now (none after teardown)."""
        return [name for name in namespaces() if name in self.names + [self.switch]]

    def _build(self):
        sh("ip", "netns", "add", self.switch)
        sh("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.switch, "link", "set", "br0", "up")
        for i, (name, address) in enumerate(zip(self.names, self.addresses)):
            sh("ip", "netns", "add", name)
            sh("ip", "-n", name, "link", "set", "lo", "up")
            sh("ip", "-n", self.switch, "link", "add", f"port{i}", "type", "veth", "peer", "name", "eth0", "netns", name)
            sh("ip", "-n", self.switch, "link", "set", f"port{i}", "master", "br0", "up")
            sh("ip", "-n", name, "addr", "add", f"{address}/24", "dev", "eth0")
            sh("ip", "-n", name, "link", "set", "eth0", "up")
            if self.rate:
                self._shape(name, "eth0")  # what the node sends
                self._shape(self.switch, f"port{i}")  # what it receives

    def _shape(self, namespace, device):
        sh("ip", "netns", "exec", namespace, "tc", "qdisc", "add", "dev", device, "root", "tbf", "rate", self.link,
           "burst", str(self.burst), "latency", "100ms")

    def popen(self, node, argv, env=None, **options):
        """Start ``argv`` inside node ``node``'s namespace, with hostname ``node<i>``, in its own session."""
        wrapped = ["ip", "netns", "exec", self.names[node], "unshare", "--uts", "sh", "-c",
                   'hostname "$0" && exec "$@"', f"node{node}", *argv]
        proc = subprocess.Popen(wrapped, env=env, start_new_session=True, **options)
        self.procs.append(proc)
        return proc

    def node_command(self, node, argv, nodes, port=MASTER_PORT):
        """``argv`` for node ``node`` of ``nodes``: distdl-run gets --nnodes, --node-rank, --master-addr, --master-port."""
        at = launcher_end(argv)
        if at is None:
            return list(argv)
        return [beside_python(argv[0]), *argv[1:at], "--nnodes", str(nodes), "--node-rank", str(node), "--master-addr",
                self.addresses[0], "--master-port", str(port), *argv[at:]]

    def start_job(self, argv, env=None, nodes=None, **options):
        """``argv`` (a distdl-run command line, or any command) on every node, or on the first ``nodes``.

        Returns the Popen of each node; ``options`` go to Popen (stdout=PIPE, text=True...).
        """
        nodes = self.nodes if nodes is None else nodes
        env = dict(os.environ if env is None else env, CLUSTER_NODES=str(nodes), CLUSTER_MASTER_ADDR=self.addresses[0])
        env.setdefault("DISTDL_JOB_SECRET", secrets.token_hex(32))
        env.setdefault("DISTDL_ZMQ_SPIN_US", "0")  # the nodes share this machine's cores: a spinning rank holds a peer up
        return [self.popen(i, self.node_command(i, argv, nodes), env=dict(env, CLUSTER_NODE_RANK=str(i)), **options)
                for i in range(nodes)]

    def teardown(self):
        """Stop every process of the run (SIGKILL after GRACE_S for those told to stop), delete every namespace."""
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.wait()
        for name in self.names + [self.switch]:
            remove_namespace(name)


def beside_python(program):
    """A bare ``distdl-run`` not on PATH is the one installed beside this Python (``.venv/bin/python`` run
    without the venv activated), so the nodes find the launcher the user's own environment has."""
    if os.sep in program or shutil.which(program):
        return program
    nearby = os.path.join(os.path.dirname(sys.executable), program)
    return nearby if os.access(nearby, os.X_OK) else program


def launcher_end(argv):
    """The index just after ``distdl-run`` / ``python -m launcher`` in ``argv``, or None for another command."""
    if argv and os.path.basename(argv[0]) == "distdl-run":
        return 1
    if len(argv) >= 3 and argv[1:3] == ["-m", "launcher"]:
        return 3
    return None


def relay(node, stream, out, lock):
    for line in iter(stream.readline, ""):
        with lock:
            out.write(f"[node {node}] {line}")
            out.flush()
    stream.close()


def run(cluster, argv, out=sys.stdout):
    """Run ``argv`` on every node, relay output tagged by node; the first non-zero exit code, else 0.

    After the first failure the other nodes get GRACE_S to end on their own (distdl-run ends
    its job on every node), then the teardown kills what is left.
    """
    procs = cluster.start_job(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lock = threading.Lock()
    relays = [threading.Thread(target=relay, args=(i, p.stdout, out, lock), daemon=True) for i, p in enumerate(procs)]
    for thread in relays:
        thread.start()
    first, failed_at = 0, None
    while any(p.returncode is None for p in procs):
        for p in procs:
            if p.returncode is None and p.poll() is not None and p.returncode and not first:
                first, failed_at = p.returncode, time.monotonic()
        if failed_at and time.monotonic() - failed_at > GRACE_S:
            with lock:
                out.write(f"[cluster] nodes still running {GRACE_S:g} s after the first failure: killed\n")
            break
        time.sleep(0.05)
    for p in procs:
        if p.returncode and not first:
            first = p.returncode
    cluster.teardown()
    for thread in relays:
        thread.join(timeout=5)
    return first


def stop_on_signal(cluster):
    """Ctrl-C or SIGTERM: forward it to every node's command, give them GRACE_S, then tear down."""

    def handler(signum, frame):
        for proc in cluster.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signum)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + GRACE_S
        while time.monotonic() < deadline and any(p.poll() is None for p in cluster.procs):
            time.sleep(0.05)
        cluster.teardown()
        print(f"[cluster] stopped by signal {signal.Signals(signum).name}; torn down", file=sys.stderr, flush=True)
        os._exit(128 + signum)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=2, help="how many nodes (namespaces)")
    parser.add_argument("--link", default="1gbit", help="each link's rate in each direction, as tc writes it, or none")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command for every node")
    args = parser.parse_args(argv)
    if args.command[:1] == ["--"]:
        args.command = args.command[1:]
    if not args.command:
        parser.error("give the command to run on every node after --, e.g. -- distdl-run -n 2 train.py")
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        with Cluster(args.nodes, args.link) as cluster:
            stop_on_signal(cluster)
            print(f"[cluster] {args.nodes} nodes at {', '.join(cluster.addresses)}, links {args.link}", flush=True)
            return run(cluster, args.command)
    except ClusterError as exc:
        print(f"cluster.py: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
