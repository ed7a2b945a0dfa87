"""Each rank evaluates its exact shard (DistributedSampler(pad=False)); metrics reduced across ranks must equal
the metrics over the whole set, computed here in one piece. Class 4 occurs only in rank 0's shard."""

import numpy as np

import distdl as dl
from distdl import metrics as M
from distdl.data import DataLoader, DistributedSampler, TensorDataset


def main():
    comm = dl.init()
    rng = np.random.default_rng(0)
    n = 301
    y = rng.integers(0, 4, n)
    y[::comm.size * 7] = 4  # positions that are multiples of the world size all land on rank 0
    scores = rng.random((n, 5))
    dataset = TensorDataset(scores, y)
    names = {"accuracy": {}, "top2_accuracy": {}, "f1": {"average": "macro"}, "precision": {"average": "weighted"},
             "log_loss": {}, "confusion_matrix": {}, "auc": {}}

    def fresh():
        return {name: M.get(name, **options) for name, options in names.items()}

    def update(metrics, batch_scores, batch_y):
        for name, metric in metrics.items():
            if name == "auc":
                metric.update(batch_y % 2, batch_scores[:, 0])
            elif name == "log_loss":
                metric.update(batch_y, batch_scores / batch_scores.sum(axis=1, keepdims=True))
            else:
                metric.update(batch_y, batch_scores)

    sharded = fresh()
    sampler = DistributedSampler(dataset, shuffle=False, pad=False)
    for batch_scores, batch_y in DataLoader(dataset, batch_size=16, sampler=sampler):
        update(sharded, batch_scores, batch_y)
    whole = fresh()
    update(whole, scores, y)
    for name in names:
        got, want = sharded[name].compute(comm), whole[name].compute()
        np.testing.assert_allclose(got, want, rtol=1e-12, err_msg=name)
    dl.shutdown()
    print(f"rank {comm.rank}: metrics over shards ok")


if __name__ == "__main__":
    main()
