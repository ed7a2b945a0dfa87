"""Trainer scenarios on real workers: python trainer_job.py SCENARIO [options].

exact    after training, evaluate() and predict() over 3 ranks equal one-process figures on the whole data
resume   train 3 epochs with step checkpoints; with --crash-at K rank 1 raises at global step K on the first attempt;
         rank 0 prints the history as JSON
uneven   rank 1's data loading is slow; the epoch summary must name it (run with DISTDL_TIMELINE set); 2 epochs
         with validation, for the trace's epoch and evaluation marks
nanloss  --policy error|skip: a NaN in rank 1's third batch; rank 1 reports it before backward, or the step is
         skipped on every rank and counted in the epoch line
padless  fit(pad=False): rank 0 has 4 batches, rank 1 three; join() lets it finish with identical replicas
reshape  --steps-log PREFIX: a cosine schedule in samples, the lr scaled linearly, checkpoints every 2 steps; with
         --crash-at K the last rank raises at global step K; every rank writes, per step, the samples seen, the lr,
         the world size, its PID and the (global position, sample id) pairs it trained on to PREFIX.RANK as JSON lines;
         --per batch counts the schedule in steps instead
"""

import argparse
import hashlib
import json
import os
import time

import numpy as np

import distdl as dl
from distdl import metrics, nn, optim
from distdl.callbacks import Checkpoint
from distdl.data import TensorDataset

parser = argparse.ArgumentParser()
parser.add_argument("scenario")
parser.add_argument("--crash-at", type=int)
parser.add_argument("--policy", default="error")
parser.add_argument("--steps-log")
parser.add_argument("--per", default="sample")
args = parser.parse_args()

comm = dl.init()
rng = np.random.default_rng(0)
x = rng.standard_normal((203, 6)).astype(np.float32)
y = (x[:, 0] + x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 1)
train, val = TensorDataset(x[:150], y[:150]), TensorDataset(x[150:], y[150:])
dl.seed(0)
model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 3))
optimizer = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
scheduler = optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)


class CrashAt(dl.callbacks.Callback):
    def on_batch_end(self, trainer, step, logs):
        if step == args.crash_at and comm.rank == 1 and os.environ.get("DISTDL_RESTART_COUNT") == "0":
            raise RuntimeError(f"crash at step {step}")


trainer = dl.Trainer(model, optimizer, loss=nn.CrossEntropyLoss(), metrics=["accuracy", "f1"],
                     scheduler=scheduler, nonfinite=args.policy)
if args.scenario == "exact":
    trainer.fit(train, epochs=2, batch_size=16, validation_data=val, verbose=False)
    figures = trainer.evaluate(val, batch_size=7)
    predictions = trainer.predict(val, batch_size=7)
    model.eval()
    with dl.no_grad():
        outputs = model(dl.tensor(x[150:])).numpy()
    np.testing.assert_allclose(predictions, outputs, rtol=1e-6)
    whole = {"loss": nn.CrossEntropyLoss()(dl.tensor(outputs), y[150:]).item(),
             "accuracy": metrics.accuracy(y[150:], outputs), "f1": metrics.f1_score(y[150:], outputs.argmax(1),
                                                                                     "macro")}
    for name, value in whole.items():
        assert abs(figures[name] - value) < 1e-6, (name, figures[name], value)
    print(f"rank {comm.rank}: exact ok")
elif args.scenario == "uneven":
    def slow_on_rank_1(batch, keys):
        if comm.rank == 1:
            time.sleep(0.01)
        return batch

    trainer.fit(train, epochs=2, batch_size=16, transform=slow_on_rank_1, prefetch=0, validation_data=val)
elif args.scenario == "nanloss":
    bad = x[:150].copy()
    bad[2 * (8 * 2 + 3) + 1, 0] = np.nan  # unshuffled, rank 1 holds samples 1, 3, 5, ...: its 3rd batch of 8
    before = [p.data.copy() for p in model.parameters()]
    trainer.fit((bad, y[:150]), epochs=1, batch_size=8, shuffle=False)
    assert trainer.skipped_steps == 1
    digests = comm.allgather_json(hashlib.sha256(b"".join(p.data.tobytes() for p in model.parameters())).hexdigest())
    assert len(set(digests)) == 1, "replicas differ"
    assert all(np.isfinite(p.data).all() for p in model.parameters())
    print(f"rank {comm.rank}: nanloss ok", flush=True)
elif args.scenario == "padless":
    trainer.fit(TensorDataset(x[:151], y[:151]), epochs=2, batch_size=25, pad=False, verbose=False)
    assert len(trainer.loader) == 4 - comm.rank
    digests = comm.allgather_json(hashlib.sha256(b"".join(p.data.tobytes() for p in model.parameters())).hexdigest())
    assert len(set(digests)) == 1, "replicas differ"
    print(f"rank {comm.rank}: padless ok", flush=True)
elif args.scenario == "reshape":
    class Recording(nn.Module):
        """A linear model on the features after column 0, which holds each sample's id."""

        def __init__(self):
            super().__init__()
            self.linear, self.ids = nn.Linear(5, 3), None

        def forward(self, x):
            self.ids = x.data[:, 0].astype(int).tolist()
            return self.linear(x[:, 1:])

    class Log(dl.callbacks.Callback):
        def on_batch_end(self, trainer, step, logs):
            sampler, size = trainer.sampler, comm.size
            if step == args.crash_at and comm.rank == size - 1:
                raise RuntimeError(f"crash at step {step}")
            first = sampler.epoch * sampler.dataset_size + (sampler.position - len(recording.ids)) * size + comm.rank
            with open(f"{args.steps_log}.{comm.rank}", "a") as f:
                f.write(json.dumps({"samples": trainer.samples_seen, "lr": trainer.optimizer.param_groups[0]["lr"],
                                    "world": size, "pid": os.getpid(), "positions": list(range(first, first + size * len(recording.ids),
                                                                         size)), "ids": recording.ids}) + "\n")

    n = 96
    ids = np.arange(n, dtype=np.float32)[:, None]
    data = TensorDataset(np.concatenate([ids, x[:n, :5]], axis=1), y[:n])
    recording = Recording()
    sgd = optim.SGD(recording.parameters(), lr=0.05)
    cosine = optim.lr_scheduler.CosineAnnealingLR(sgd, T_max=2 * n if args.per == "sample" else 2 * n // 8)
    trainer = dl.Trainer(recording, sgd, loss="sparse_categorical_crossentropy", scheduler=cosine,
                         scheduler_per=args.per, lr_scaling="linear")
    trainer.fit(data, batch_size=8, epochs=2, verbose=False,
                callbacks=[Checkpoint(every_steps=2, every_epochs=None), Log()])
else:
    history = trainer.fit(train, epochs=3, batch_size=8, validation_data=val, verbose=False,
                          callbacks=[Checkpoint(every_steps=4, every_epochs=None), CrashAt()])
    if comm.rank == 0:
        print("history " + json.dumps(history.history), flush=True)
dl.shutdown()
