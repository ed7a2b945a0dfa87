"""Train a small MLP on two interleaved spirals with distdl.nn, SGD with momentum and a cosine schedule.

Runs in one process on a generated, seeded dataset, so it works offline:

    python examples/spirals.py --epochs 100
"""

import argparse

import distdl as dl
from distdl import metrics, nn, optim
from distdl.data import DataLoader, TensorDataset, make_spirals, random_split


def evaluate(model, loader):
    """Accuracy over every sample of ``loader``."""
    model.eval()
    accuracy = metrics.Accuracy()
    with dl.no_grad():
        for x, y in loader:
            accuracy.update(y, model(dl.tensor(x)))
    model.train()
    return accuracy.compute()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    dl.seed(args.seed)
    train_set, test_set = random_split(TensorDataset(*make_spirals(1000, noise=0.02, seed=args.seed)), [0.8, 0.2],
                                       seed=args.seed)
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True, seed=args.seed)
    train_eval, test_eval = DataLoader(train_set, batch_size=500), DataLoader(test_set, batch_size=500)
    model = nn.Sequential(nn.Linear(2, args.hidden), nn.ReLU(), nn.Linear(args.hidden, args.hidden), nn.ReLU(),
                          nn.Linear(args.hidden, 2))
    optimizer = optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    schedule = optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    loss_fn = nn.CrossEntropyLoss()

    for epoch in range(1, args.epochs + 1):
        mean_loss = metrics.Mean()
        for x, y in train_loader:
            optimizer.zero_grad()
            loss = loss_fn(model(dl.tensor(x)), y)
            loss.backward()
            optimizer.step()
            mean_loss.update(loss, weight=len(y))
        schedule.step()
        if epoch == 1 or epoch % max(args.epochs // 10, 1) == 0 or epoch == args.epochs:
            print(f"epoch {epoch:4d}  loss {mean_loss.compute():.4f}  "
                  f"train acc {evaluate(model, train_eval):.3f}  test acc {evaluate(model, test_eval):.3f}")
    print(f"final test accuracy: {evaluate(model, test_eval):.3f}")


if __name__ == "__main__":
    main()
