"""Workers' output: each line tagged with its rank on the launcher's stdout, kept whole in a per-rank log file."""

import collections
import os
import re
import sys
import threading

TAIL_LINES = 20
RANK_FILE = re.compile(r"^rank-(\d+)\.(out|err)$")  # mpiexec -outfile-pattern/-errfile-pattern DIR/rank-%r.*


class Output:
    """Routes lines to the terminal (tagged or not) and to ``log_dir/rank-<r>.log``; keeps each rank's last lines."""

    def __init__(self, tag, log_dir=None, attempt=0):
        self.tag, self.log_dir, self.attempt = tag, log_dir, attempt
        self.tails = collections.defaultdict(lambda: collections.deque(maxlen=TAIL_LINES))
        self._logs = {}
        self._lock = threading.Lock()

    def line(self, rank, text):
        with self._lock:
            self.tails[rank].append(text.rstrip("\n"))
            label = f"rank {rank}" if isinstance(rank, int) else rank
            sys.stdout.write(f"[{label}] {text}" if self.tag else text)
            if not text.endswith("\n"):
                sys.stdout.write("\n")
            sys.stdout.flush()
            if self.log_dir is not None:
                if rank not in self._logs:
                    suffix = f".restart-{self.attempt}" if self.attempt else ""
                    self._logs[rank] = open(f"{self.log_dir}/rank-{rank}{suffix}.log", "a")
                self._logs[rank].write(text if text.endswith("\n") else text + "\n")
                self._logs[rank].flush()

    def pump(self, stream, rank):
        """Read ``stream`` to its end in a thread, each line as ``rank``'s."""
        def run():
            for text in iter(stream.readline, ""):
                self.line(rank, text)
            stream.close()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    def follow(self, directory, finished):
        """Follow mpiexec's per-rank output files in ``directory`` until ``finished`` is set, whole lines only."""
        def run():
            offsets, partial = {}, {}
            while True:
                done = finished.is_set()
                for name in sorted(os.listdir(directory)):
                    match = RANK_FILE.match(name)
                    if not match:
                        continue
                    with open(os.path.join(directory, name), errors="replace") as f:
                        f.seek(offsets.get(name, 0))
                        text = partial.get(name, "") + f.read()
                        offsets[name] = f.tell()
                    *lines, partial[name] = text.split("\n")
                    for line in lines:
                        self.line(int(match.group(1)), line + "\n")
                    if done and partial[name]:
                        self.line(int(match.group(1)), partial.pop(name) + "\n")
                if done:
                    return
                finished.wait(0.05)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    def close(self):
        for log in self._logs.values():
            log.close()
