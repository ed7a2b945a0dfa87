"""Train a small MLP on two interleaved spirals with distdl.nn, SGD with momentum and a cosine schedule.

Runs in one process on a generated, seeded dataset, so it works offline:

    python examples/spirals.py --epochs 100

It is the README's first command until the layers, data pipeline and launcher
land; then the data-parallel examples take its place.
"""

import argparse

import numpy as np

import distdl as dl
from distdl import nn, optim


def make_spirals(n_per_class, noise, rng):
    """Two spirals in the plane, one per class; a problem no linear model separates."""
    t = np.sqrt(rng.uniform(0.05, 1, n_per_class)) * 3 * np.pi
    arm = np.stack([t * np.cos(t), t * np.sin(t)], axis=1) / (3 * np.pi)
    x = np.concatenate([arm, -arm]) + rng.normal(0, noise, (2 * n_per_class, 2))
    y = np.concatenate([np.zeros(n_per_class, np.int64), np.ones(n_per_class, np.int64)])
    return x.astype(np.float32), y


def accuracy(model, x, y):
    model.eval()
    with dl.no_grad():
        correct = (model(dl.tensor(x)).numpy().argmax(axis=1) == y).mean()
    model.train()
    return float(correct)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    dl.seed(args.seed)
    x, y = make_spirals(500, 0.02, rng)
    order = rng.permutation(len(x))
    train, test = order[:800], order[800:]
    model = nn.Sequential(nn.Linear(2, args.hidden), nn.ReLU(), nn.Linear(args.hidden, args.hidden), nn.ReLU(),
                          nn.Linear(args.hidden, 2))
    optimizer = optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    schedule = optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    loss_fn = nn.CrossEntropyLoss()

    for epoch in range(1, args.epochs + 1):
        shuffled = rng.permutation(train)
        total = 0.0
        for start in range(0, len(shuffled), args.batch_size):
            batch = shuffled[start:start + args.batch_size]
            optimizer.zero_grad()
            loss = loss_fn(model(dl.tensor(x[batch])), y[batch])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        schedule.step()
        if epoch == 1 or epoch % max(args.epochs // 10, 1) == 0 or epoch == args.epochs:
            print(f"epoch {epoch:4d}  loss {total / len(train):.4f}  "
                  f"train acc {accuracy(model, x[train], y[train]):.3f}  test acc {accuracy(model, x[test], y[test]):.3f}")
    print(f"final test accuracy: {accuracy(model, x[test], y[test]):.3f}")


if __name__ == "__main__":
    main()
