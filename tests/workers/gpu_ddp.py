"""DDP on this worker's device equals one process on NumPy with the whole batch: python gpu_ddp.py KIND OUT_DIR.

Run under ``distdl-run -n N`` by scripts/gpu_check.py. KIND is the device kind dl.init() must have bound
(``cuda``, or ``sim`` where DISTDL_DEVICE=sim). Each rank trains a float64 replica, its tensors on that device,
on its slice of every global batch through DistributedDataParallel (several buckets; its BatchNorm a
SyncBatchNorm, whose statistics are reduced over the ranks), and, on NumPy, one model (plain BatchNorm)
on the whole batches; parameters and running statistics must end equal (1e-10), the replicas identical.
Rank r writes OUT_DIR/rank{r}.json: its device, the allreduce path DDP said it took, the largest difference.
"""

import hashlib
import json
import logging
import re
import sys
from pathlib import Path

import numpy as np

import distdl as dl
from distdl import backend, device, nn, optim

STEPS, BATCH = 6, 4
SAID = re.compile(r"gradient allreduce .*: ([\w-]+)$")


class PathSaid(logging.Handler):
    """The allreduce path DDP says once at start (its log line), kept for the report."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.method = None

    @classmethod
    def listening(cls):
        """A handler attached to distdl's logger at info level."""
        said = cls()
        logger = logging.getLogger("distdl")
        logger.addHandler(said)
        logger.setLevel(logging.INFO)
        return said

    def emit(self, record):
        found = SAID.search(record.getMessage())
        if found:
            self.method = found.group(1)


def build():
    dl.seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 16), nn.Tanh(), nn.Linear(16, 3)).double()


def train(model, optimizer, x, y, place):
    optimizer.zero_grad()
    nn.CrossEntropyLoss()(model(dl.tensor(x, device=place)), backend.as_array(y, device=place)).backward()
    optimizer.step()


def main():
    kind, out_dir = sys.argv[1], Path(sys.argv[2])
    said = PathSaid.listening()
    comm = dl.init()
    bound = device.current()
    if bound.kind != kind:
        raise SystemExit(f"rank {comm.rank}: dl.init() bound {bound}, not a {kind} device")
    place = "cuda" if kind == "cuda" else None  # the simulated device computes on NumPy arrays
    reference = build()
    model = nn.SyncBatchNorm.convert_sync_batchnorm(build())
    if place:
        model.to(place)
    ddp = dl.DistributedDataParallel(model, bucket_cap_mb=0.002)  # a few KB: several buckets
    ddp_opt = optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
    ref_opt = optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    rng = np.random.default_rng(123)
    x = rng.standard_normal((STEPS, comm.size * BATCH, 2, 8, 8))
    y = rng.integers(0, 3, (STEPS, comm.size * BATCH))
    mine = slice(comm.rank * BATCH, (comm.rank + 1) * BATCH)
    for step in range(STEPS):
        train(ddp, ddp_opt, x[step, mine], y[step, mine], place)
        train(reference, ref_opt, x[step], y[step], None)
    got = {name: backend.to_device(value, "cpu") for name, value in model.state_dict().items()}
    worst = max(float(np.abs(got[name] - value).max() / max(np.abs(value).max(), 1.0))
                for name, value in reference.state_dict().items())
    digests = comm.allgather_json(hashlib.sha256(b"".join(np.ascontiguousarray(v).tobytes() for v in got.values()))
                                  .hexdigest())
    result = {"rank": comm.rank, "device": repr(bound), "method": said.method, "worst": worst,
              "buckets": len(ddp.buckets), "replicas_identical": len(set(digests)) == 1}
    (out_dir / f"rank{comm.rank}.json").write_text(json.dumps(result))
    dl.shutdown()
    assert result["replicas_identical"], "the replicas differ"
    assert worst < 1e-10, f"rank {comm.rank}: DDP on {bound} is {worst:.3g} away from one process on NumPy"


if __name__ == "__main__":
    main()
