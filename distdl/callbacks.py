"""Trainer callbacks: checkpoints (with automatic resume), early stopping, lr schedules, history logs.

A callback overrides any of ``on_train_begin(trainer)``, ``on_epoch_begin(trainer,
epoch)``, ``on_batch_end(trainer, step, logs)``, ``on_epoch_end(trainer, epoch,
logs)`` and ``on_train_end(trainer)``. Every rank runs every callback with the same
logs (reduced over the ranks), so decisions such as early stopping agree; only rank 0
writes files.
"""

import csv
import json
import os

from distdl.checkpoint import CheckpointManager


class Callback:
    def on_train_begin(self, trainer):
        pass

    def on_epoch_begin(self, trainer, epoch):
        pass

    def on_batch_end(self, trainer, step, logs):
        pass

    def on_epoch_end(self, trainer, epoch, logs):
        pass

    def on_train_end(self, trainer):
        pass


class Checkpoint(Callback):
    """Save every ``every_epochs`` epochs and/or ``every_steps`` steps; resume from the newest at the start.

    ``directory`` defaults to DISTDL_CHECKPOINT_DIR, so a job restarted by
    ``distdl-run --max-restarts`` picks up where it stopped, history included. The
    Trainer adds one by itself when DISTDL_CHECKPOINT_DIR is set.
    """

    def __init__(self, directory=None, every_epochs=1, every_steps=None, keep=3, resume=True):
        self.directory, self.every_epochs, self.every_steps = directory, every_epochs, every_steps
        self.keep, self.resume = keep, resume
        self.manager = None

    def on_train_begin(self, trainer):
        self.manager = CheckpointManager(self.directory, keep=self.keep, comm=trainer.comm)
        if self.resume:
            state = self.manager.restore_latest(**trainer.checkpoint_objects())
            if state is not None:
                trainer.restore(state)

    def on_batch_end(self, trainer, step, logs):
        if self.every_steps and step % self.every_steps == 0:
            self.manager.save(step, **trainer.checkpoint_state(epoch_done=False))

    def on_epoch_end(self, trainer, epoch, logs):
        if self.every_epochs and (epoch + 1) % self.every_epochs == 0:
            self.manager.save(trainer.global_step, **trainer.checkpoint_state(epoch_done=True))

    def on_train_end(self, trainer):
        self.manager.close()  # the directory is free for another job once this fit is over


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs.

    ``mode`` "min" or "max"; "auto" minimises names with "loss" or "error" in them, maximises the rest.
    """

    def __init__(self, monitor="val_loss", patience=0, min_delta=0.0, mode="auto"):
        if mode == "auto":
            mode = "min" if ("loss" in monitor or "error" in monitor or monitor.endswith(("mse", "mae"))) else "max"
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min', 'max' or 'auto', got {mode!r}")
        self.monitor, self.patience, self.min_delta, self.mode = monitor, patience, min_delta, mode
        self.best, self.wait, self.stopped_epoch = None, 0, None

    def on_epoch_end(self, trainer, epoch, logs):
        if self.monitor not in logs:
            raise KeyError(f"EarlyStopping monitors {self.monitor!r} but the logs hold {sorted(logs)}")
        value = logs[self.monitor]
        better = self.best is None or (value < self.best - self.min_delta if self.mode == "min"
                                       else value > self.best + self.min_delta)
        if better:
            self.best, self.wait = value, 0
            return
        self.wait += 1
        if self.wait >= max(self.patience, 1):  # as Keras counts: patience epochs without improvement
            trainer.stop_training = True
            self.stopped_epoch = epoch


class LearningRateScheduler(Callback):
    """Step an ``optim.lr_scheduler`` after every epoch, every batch (``per="batch"``) or by samples.

    ``per="sample"``: the schedule counts the samples seen over all ranks (``T_max`` etc. in
    samples), so its curve is the same whatever the world size, across a resume on another
    one too; a schedule counted in batches (steps) would stretch when the global batch changes.
    """

    PER = ("epoch", "batch", "sample")

    def __init__(self, scheduler, per="epoch"):
        if per not in self.PER:
            raise ValueError(f"per must be one of {self.PER}, got {per!r}")
        self.scheduler, self.per = scheduler, per

    def on_batch_end(self, trainer, step, logs):
        if self.per == "batch":
            self.scheduler.step()
        elif self.per == "sample":
            self.scheduler.step_to(trainer.samples_seen)

    def on_epoch_end(self, trainer, epoch, logs):
        if self.per == "epoch":
            self.scheduler.step()


class HistoryLogger(Callback):
    """Write the history after every epoch on rank 0: CSV (one row per epoch) or JSON, by the file's suffix."""

    def __init__(self, path):
        self.path = os.fspath(path)

    def on_epoch_end(self, trainer, epoch, logs):
        if trainer.comm.rank != 0:
            return
        history = trainer.history.history
        if self.path.endswith(".json"):
            with open(self.path, "w") as f:
                json.dump({"epoch": trainer.history.epoch, **history}, f, indent=1)
            return
        with open(self.path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["epoch", *history])
            for row, epoch_number in enumerate(trainer.history.epoch):
                writer.writerow([epoch_number, *(values[row] for values in history.values())])
