"""Input pipeline: CIFAR-shaped batches with crop, flip and normalisation, and how much prefetch hides.

(a) Throughput of loading + augmenting batches of 128 uint8 3x32x32 images (ToFloat,
    RandomCrop(32, padding=4), RandomHorizontalFlip, Normalize): distdl's batch
    transforms against PyTorch's DataLoader (num_workers=0) applying the same
    augmentation per sample with torch ops, as torchvision's transforms do (when
    torch is installed; it is never a dependency).
(b) An epoch of loading plus a stand-in compute step (a GEMM taking about as long
    as loading a batch), without and with prefetch: with perfect overlap the epoch
    takes max(load, compute) instead of their sum.

    python scripts/bench_data.py [--threads 1] [--batches 60]
"""

import argparse
import os
import sys
import time

ARGS = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ARGS.add_argument("--threads", type=int, default=1, help="BLAS/OpenMP threads")
ARGS.add_argument("--batches", type=int, default=60, help="batches per timed epoch")
ARGS.add_argument("--batch-size", type=int, default=128)
ARGS = ARGS.parse_args()
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from distdl.data import DataLoader, TensorDataset  # noqa: E402
from distdl.data import transforms as T  # noqa: E402

try:
    import torch
except ImportError:
    torch = None

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


def dataset():
    rng = np.random.default_rng(0)
    n = ARGS.batches * ARGS.batch_size
    return rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, n)


def distdl_loader(images, labels, prefetch):
    augment = T.Compose([T.ToFloat(), T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.Normalize(MEAN, STD)])
    return DataLoader(TensorDataset(images, labels), batch_size=ARGS.batch_size, shuffle=True, transform=augment,
                      prefetch=prefetch)


def torch_loader(images, labels):
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)

    class Augmented(torch.utils.data.Dataset):
        def __len__(self):
            return len(images)

        def __getitem__(self, i):
            x = torch.nn.functional.pad(torch.from_numpy(images[i]).float() / 255, (4, 4, 4, 4))
            top, left = torch.randint(0, 9, (2,)).tolist()
            x = x[:, top:top + 32, left:left + 32]
            if torch.rand(()) < 0.5:
                x = x.flip(-1)
            return (x - mean) / std, int(labels[i])

    return torch.utils.data.DataLoader(Augmented(), batch_size=ARGS.batch_size, shuffle=True, num_workers=0)


def epoch_seconds(loader, compute=None):
    start = time.perf_counter()
    for _ in loader:
        if compute is not None:
            compute()
    return time.perf_counter() - start


def best(function, repeats=3):
    return min(function() for _ in range(repeats))


def main():
    images, labels = dataset()
    n = len(images)
    print(f"threads={ARGS.threads}  batches={ARGS.batches} of {ARGS.batch_size}  numpy {np.__version__}"
          + (f"  torch {torch.__version__}" if torch else "  (torch not installed)"))

    load = best(lambda: epoch_seconds(distdl_loader(images, labels, prefetch=0)))
    print("\n(a) loading + augmentation")
    print("| loader | images/s | ms per batch | ratio to torch |")
    print("|---|---|---|---|")
    reference = None
    if torch is not None:
        torch.set_num_threads(ARGS.threads)
        reference = best(lambda: epoch_seconds(torch_loader(images, labels)))
    ratio = f"{reference / load:.1f}x faster" if reference else "-"
    print(f"| distdl batch transforms | {n / load:,.0f} | {1e3 * load / ARGS.batches:.2f} | {ratio} |")
    if reference:
        print(f"| torch DataLoader, per-sample transforms | {n / reference:,.0f} | "
              f"{1e3 * reference / ARGS.batches:.2f} | 1.0x |")

    # A GEMM sized to take about as long as loading one batch stands in for a training step.
    a = np.random.default_rng(1).random((256, 256), dtype=np.float32)
    gemm = best(lambda: _timed(lambda: a @ a), repeats=20)
    reps = max(1, round(load / ARGS.batches / gemm))

    def compute():
        for _ in range(reps):
            a @ a

    compute_only = best(lambda: _timed(lambda: [compute() for _ in range(ARGS.batches)]))
    serial = best(lambda: epoch_seconds(distdl_loader(images, labels, prefetch=0), compute))
    overlapped = best(lambda: epoch_seconds(distdl_loader(images, labels, prefetch=2), compute))
    ideal = max(load, compute_only)
    print("\n(b) an epoch of loading + compute")
    print("| prefetch | epoch s | load s | compute s | ideal max(load, compute) s | epoch / ideal |")
    print("|---|---|---|---|---|---|")
    for name, seconds in (("0 (serial)", serial), ("2 (background thread)", overlapped)):
        print(f"| {name} | {seconds:.3f} | {load:.3f} | {compute_only:.3f} | {ideal:.3f} | {seconds / ideal:.2f} |")


def _timed(function):
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
