"""A multi-layer perceptron trained data-parallel, in the plain training-loop style (no Trainer).

MLP 784-128-64-10 (ReLU, cross-entropy, SGD with momentum) on MNIST from --data-dir
(the IDX files, plain or .gz), or, by default, on the 8x8 digits shipped inside distdl
(64 inputs instead of 784), so that it runs offline:

    distdl-run -n 2 examples/mlp.py               # two local workers
    python examples/mlp.py                        # one process
    mpiexec -n 2 python examples/mlp.py           # plain MPI

Each worker trains on its shard (DistributedSampler); DistributedDataParallel averages
the gradients. The evaluation counts every test sample exactly once over all ranks.
With --checkpoint-dir (or distdl-run --checkpoint-dir) it saves every epoch and resumes
from the newest checkpoint.
"""

import argparse

import distdl as dl
from distdl import metrics, nn, optim
from distdl.data import DataLoader, DistributedSampler, TensorDataset, load_digits, load_mnist, random_split


def datasets(data_dir):
    if data_dir:
        train_x, train_y = load_mnist(data_dir, "train")
        test_x, test_y = load_mnist(data_dir, "test")
        flat = lambda x: x.reshape(len(x), -1).astype("float32") / 255  # noqa: E731
        return TensorDataset(flat(train_x), train_y), TensorDataset(flat(test_x), test_y)
    return random_split(TensorDataset(*load_digits(flatten=True)), [0.8, 0.2], seed=0)


def evaluate(ddp, dataset, comm):
    """Accuracy and loss over the whole test set: each rank its exact shard, the counts summed over the ranks."""
    ddp.eval()
    accuracy, loss = metrics.Accuracy(), metrics.Mean()
    sampler = DistributedSampler(dataset, shuffle=False, pad=False)
    with dl.no_grad():
        for x, y in DataLoader(dataset, batch_size=500, sampler=sampler):
            out = ddp.module(dl.tensor(x))
            accuracy.update(y, out)
            loss.update(nn.CrossEntropyLoss()(out, y), weight=len(y))
    ddp.train()
    return accuracy.compute(comm), loss.compute(comm)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32, help="per worker")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--data-dir", help="a directory with the MNIST IDX files")
    parser.add_argument("--checkpoint-dir", help="save every epoch here and resume from the newest")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    comm = dl.init(args.backend)
    dl.seed(args.seed)
    train_set, test_set = datasets(args.data_dir)
    features = train_set[0][0].shape[0]
    model = nn.Sequential(nn.Linear(features, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))
    ddp = dl.DistributedDataParallel(model)
    optimizer = optim.SGD(ddp.parameters(), lr=args.lr, momentum=0.9)
    sampler = DistributedSampler(train_set, shuffle=True, seed=args.seed)
    loader = DataLoader(train_set, batch_size=args.batch_size, sampler=sampler)
    manager = dl.CheckpointManager(args.checkpoint_dir) if args.checkpoint_dir or _launched_with_checkpoints() \
        else None
    start = 0
    if manager and manager.latest():
        state = manager.restore_latest(model=ddp, optimizer=optimizer, sampler=loader)
        start = state["epoch"] + 1
        _say(comm, f"resumed from {manager.latest()} (epoch {state['epoch']})")

    for epoch in range(start, args.epochs):
        sampler.set_epoch(epoch)
        for x, y in loader:
            optimizer.zero_grad()
            nn.CrossEntropyLoss()(ddp(dl.tensor(x)), y).backward()
            optimizer.step()
        accuracy, loss = evaluate(ddp, test_set, comm)
        _say(comm, f"epoch {epoch + 1:3d}  test loss {loss:.4f}  test accuracy {accuracy:.4f}")
        if manager:
            manager.save(epoch, model=ddp, optimizer=optimizer, sampler=loader, epoch=epoch)
    accuracy, _ = evaluate(ddp, test_set, comm)
    _say(comm, f"final test accuracy: {accuracy:.4f} ({comm.size} workers, {len(test_set)} test samples)")
    dl.shutdown()


def _launched_with_checkpoints():
    import os

    return bool(os.environ.get("DISTDL_CHECKPOINT_DIR"))


def _say(comm, text):
    if comm.rank == 0:
        print(text, flush=True)


if __name__ == "__main__":
    main()
