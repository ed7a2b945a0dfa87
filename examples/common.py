"""What every example shares: its command-line options, and printing from rank 0 only."""

import argparse

import distdl as dl


def arguments(doc, epochs, batch_size, lr, data_dir=True, extra=None):
    """--epochs, --batch-size (per worker), --lr, --backend, --data-dir, --seed; then ``dl.init`` and ``dl.seed``."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--batch-size", type=int, default=batch_size, help="per worker")
    parser.add_argument("--lr", type=float, default=lr)
    parser.add_argument("--backend", default="auto", choices=["auto", "mpi", "zmq", "local"])
    if data_dir:
        parser.add_argument("--data-dir", help="a directory with the real dataset's files (else a built-in set)")
    parser.add_argument("--seed", type=int, default=0)
    for flags, options in (extra or {}).items():
        parser.add_argument(flags, **options)
    args = parser.parse_args()
    comm = dl.init(args.backend)
    dl.seed(args.seed)
    return args, comm


def report(text):
    """Print on rank 0 only: every figure printed is already reduced over the ranks."""
    if dl.rank() == 0:
        print(text, flush=True)
