"""Train a small MLP on two interleaved spirals, with the functional API and plain SGD.

Runs in one process on a generated, seeded dataset, so it works offline:

    python examples/spirals.py --epochs 100

It is the README's first command until the layers, data pipeline and launcher
land; then the data-parallel examples take its place.
"""

import argparse

import numpy as np

import distdl as dl
from distdl import functional as F


def make_spirals(n_per_class, noise, rng):
    """Two spirals in the plane, one per class; a problem no linear model separates."""
    t = np.sqrt(rng.uniform(0.05, 1, n_per_class)) * 3 * np.pi
    arm = np.stack([t * np.cos(t), t * np.sin(t)], axis=1) / (3 * np.pi)
    x = np.concatenate([arm, -arm]) + rng.normal(0, noise, (2 * n_per_class, 2))
    y = np.concatenate([np.zeros(n_per_class, np.int64), np.ones(n_per_class, np.int64)])
    return x.astype(np.float32), y


def init_layer(fan_in, fan_out, rng):
    """PyTorch's default Linear initialisation: uniform in +-1/sqrt(fan_in)."""
    bound = 1 / np.sqrt(fan_in)
    weight = rng.uniform(-bound, bound, (fan_out, fan_in)).astype(np.float32)
    bias = rng.uniform(-bound, bound, fan_out).astype(np.float32)
    return dl.tensor(weight, requires_grad=True), dl.tensor(bias, requires_grad=True)


def forward(params, x):
    h = x
    for weight, bias in params[:-1]:
        h = F.relu(F.linear(h, weight, bias))
    return F.linear(h, *params[-1])


def accuracy(params, x, y):
    with dl.no_grad():
        return float((forward(params, dl.tensor(x)).numpy().argmax(axis=1) == y).mean())


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
    params = [init_layer(2, args.hidden, rng), init_layer(args.hidden, args.hidden, rng), init_layer(args.hidden, 2, rng)]
    flat = [p for layer in params for p in layer]
    velocity = [np.zeros_like(p.data) for p in flat]

    for epoch in range(1, args.epochs + 1):
        shuffled = rng.permutation(train)
        total = 0.0
        for start in range(0, len(shuffled), args.batch_size):
            batch = shuffled[start:start + args.batch_size]
            loss = F.cross_entropy(forward(params, dl.tensor(x[batch])), y[batch])
            loss.backward()
            for p, v in zip(flat, velocity):  # SGD with momentum, in place
                v *= args.momentum
                v += p.grad
                p.data -= args.lr * v
                p.grad = None
            total += loss.item() * len(batch)
        if epoch == 1 or epoch % max(args.epochs // 10, 1) == 0 or epoch == args.epochs:
            print(f"epoch {epoch:4d}  loss {total / len(train):.4f}  "
                  f"train acc {accuracy(params, x[train], y[train]):.3f}  test acc {accuracy(params, x[test], y[test]):.3f}")
    print(f"final test accuracy: {accuracy(params, x[test], y[test]):.3f}")


if __name__ == "__main__":
    main()
