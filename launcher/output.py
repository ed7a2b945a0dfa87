"""Workers' output: each line tagged with its rank on the launcher's stdout, kept in a per-rank log file.

The log file keeps the streams that ``logged(rank)`` names (torchrun's --tee): both, one, or none.

On a terminal (``live``) rank 0's carriage-return redraws (a tqdm bar) are passed
through untagged as they come; the other lines are printed above the bar, which is
then drawn again. mpiexec's own "BAD TERMINATION" banner is kept from the console:
distdl-run reports the failure itself, naming the rank.
"""

import codecs
import collections
import os
import re
import sys
import threading

TAIL_LINES = 20
RANK_FILE = re.compile(r"^rank-(\d+)\.(out|err)$")  # mpiexec -outfile-pattern/-errfile-pattern DIR/rank-%r.*
MPIEXEC_BANNER = re.compile(r"^\s*$|^=+$|^=   |^YOUR APPLICATION TERMINATED WITH THE EXIT STRING|"
                            r"^This typically refers to a problem with your application|^Please see the FAQ page")
MPI_STREAMS = {"out": "stdout", "err": "stderr"}
CLEAR_LINE = "\r\x1b[K"
CHUNK = 65536


class Output:
    """Routes lines to the terminal (tagged or not) and to ``log_dir/rank-<r>.log``; keeps each rank's last lines.

    ``shown``: the ranks whose lines reach the console (None: all); ``live``: show rank 0's redraws as they come;
    ``logged(rank)``: the streams ("stdout", "stderr") its log file keeps (None: both, for every rank). A line
    comes with its stream, or with None from a pipe that carries both.
    """

    def __init__(self, tag, log_dir=None, attempt=0, shown=None, live=False, logged=None):
        self.tag, self.log_dir, self.attempt, self.shown, self.live = tag, log_dir, attempt, shown, live
        self.logged = logged
        self.tails = collections.defaultdict(lambda: collections.deque(maxlen=TAIL_LINES))
        self.console = collections.defaultdict(lambda: collections.deque(maxlen=TAIL_LINES))  # the last shown
        self._logs = {}
        self._bar = None  # rank 0's progress line on the terminal now, without its carriage return
        self._lock = threading.Lock()

    def line(self, rank, text, stream=None):
        with self._lock:
            text = text.rstrip("\n")
            self.tails[rank].append(text)
            if self._on_console(rank, text):
                self._above_bar(f"[{rank if not isinstance(rank, int) else f'rank {rank}'}] {text}\n" if self.tag
                                else text + "\n")
            self._log(rank, text, stream)

    def redraw(self, rank, text):
        """A progress line of ``rank`` (its text after the last carriage return), drawn in place."""
        with self._lock:
            self._bar = text
            sys.stdout.write(CLEAR_LINE + text)
            sys.stdout.flush()

    def end_bar(self, rank, text, stream=None):
        """The progress line ended with a newline: keep its last state (or nothing, if it cleared itself)."""
        with self._lock:
            self._bar = None
            sys.stdout.write(CLEAR_LINE + (text + "\n" if text.strip() else ""))
            sys.stdout.flush()
            if text.strip():
                self.tails[rank].append(text)
                self._log(rank, text, stream)

    def showed(self, rank, text):
        """Whether ``text`` is among ``rank``'s last lines on the console."""
        return text in self.console[rank]

    def _on_console(self, rank, text):
        if rank == "mpiexec" and MPIEXEC_BANNER.match(text):
            return False
        if self.shown is not None and isinstance(rank, int) and rank not in self.shown:
            return False
        self.console[rank].append(text)
        return True

    def _above_bar(self, text):
        if self._bar is not None:
            text = CLEAR_LINE + text + self._bar
        sys.stdout.write(text)
        sys.stdout.flush()

    def _keeps(self, rank, stream):
        if self.logged is None or not isinstance(rank, int):  # mpiexec's own lines: always
            return True
        streams = self.logged(rank)
        return stream in streams if stream is not None else bool(streams)

    def _log(self, rank, text, stream):
        if self.log_dir is None or not self._keeps(rank, stream):
            return
        if rank not in self._logs:
            suffix = f".restart-{self.attempt}" if self.attempt else ""
            self._logs[rank] = open(f"{self.log_dir}/rank-{rank}{suffix}.log", "a")
        self._logs[rank].write(text + "\n")
        self._logs[rank].flush()

    def feeder(self, rank, stream=None):
        """A function taking ``rank``'s output of ``stream`` in pieces of any size (None: the end), routing whole
        lines."""
        live = self.live and rank == 0 and (self.shown is None or 0 in self.shown)
        pending = [""]

        def feed(text):
            if text is None:
                if pending[0]:
                    self._whole(rank, pending[0], live, stream)
                pending[0] = ""
                return
            *lines, pending[0] = (pending[0] + text).split("\n")
            for line in lines:
                self._whole(rank, line, live, stream)
            if live and "\r" in pending[0]:
                self.redraw(rank, pending[0].rsplit("\r", 1)[1])

        return feed

    def _whole(self, rank, line, live, stream):
        if live and "\r" in line:
            self.end_bar(rank, line.rsplit("\r", 1)[1], stream)
        else:
            self.line(rank, line.rsplit("\r", 1)[-1] if "\r" in line else line, stream)

    def pump(self, pipe, rank, stream=None):
        """Read ``pipe`` to its end in a thread, as ``rank``'s output of ``stream`` (None: both on one pipe)."""
        def run():
            feed, decoder = self.feeder(rank, stream), codecs.getincrementaldecoder("utf-8")(errors="replace")
            while True:
                chunk = os.read(pipe.fileno(), CHUNK)
                if not chunk:
                    break
                feed(decoder.decode(chunk))
            feed(decoder.decode(b"", final=True))
            feed(None)
            pipe.close()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    def follow(self, directory, finished):
        """Follow mpiexec's per-rank output files in ``directory`` until ``finished`` is set."""
        def run():
            offsets, feeds = {}, {}
            while True:
                done = finished.is_set()
                for name in sorted(os.listdir(directory)):
                    match = RANK_FILE.match(name)
                    if not match:
                        continue
                    if name not in feeds:
                        feeds[name] = self.feeder(int(match.group(1)), MPI_STREAMS[match.group(2)])
                    with open(os.path.join(directory, name), errors="replace", newline="") as f:
                        f.seek(offsets.get(name, 0))
                        text = f.read()
                        offsets[name] = f.tell()
                    if text:
                        feeds[name](text)
                if done:
                    for feed in feeds.values():
                        feed(None)
                    return
                finished.wait(0.05)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    def close(self):
        for log in self._logs.values():
            log.close()
