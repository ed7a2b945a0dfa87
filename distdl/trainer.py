"""Trainer: fit, evaluate and predict in a few lines, distributed without trying.

In a world of more than one process the Trainer wraps the model in
DistributedDataParallel and the data in a DistributedSampler by itself.
``batch_size`` is per worker: the global batch is ``batch_size x world_size``.
Gradients are averaged over the ranks, so a step on the global batch follows the
gradient of the mean loss over it; when you add workers at a fixed per-worker batch,
the usual rule is to scale the learning rate with the global batch (linearly, with
a few epochs of warmup for large factors).

Losses and metrics are reduced over the ranks, so the figures rank 0 prints are
those of the whole data. Evaluation shards the data exactly (no sample twice).

Keras habits work: ``fit(x, y, batch_size, epochs, validation_split=0.1)`` with arrays,
``loss="sparse_categorical_crossentropy"`` and ``optimizer="adam"`` by name (``distdl.named``),
``summary()``; float inputs are cast to the model's dtype, as Keras's ``fit`` does.

Resume on another world size keeps the run's curve: the data continue at the samples
seen, ``scheduler_per="sample"`` counts the schedule in samples (the same function of
them at any world size) and ``lr_scaling="linear"`` re-applies the linear scaling rule
for the new size; the Trainer says so in a line.

A non-finite loss stops the run on its rank before backward, naming the rank and the
step (Keras's TerminateOnNaN), unless ``nonfinite="skip"``: then that step is skipped
on every rank (DistributedDataParallel's policy) and the epoch line counts it.

On a GPU (``device="cuda"``) the model, the batches and the metrics' inputs live there, and a
step makes no host read of its own: the loss, the queued input checks and the metrics' inputs
are read once, after the step (so a non-finite loss stops the run after that step's update;
alone with ``nonfinite="skip"`` the loss is read before the update, which it decides).
"""

import logging
import math
import os
import sys
import time
from collections.abc import Mapping
from contextlib import nullcontext

import numpy as np

from distdl import backend
from distdl import device as devices
from distdl import metrics as metrics_module
from distdl.autograd import no_grad
from distdl.autograd.tensor import Tensor
from distdl.callbacks import Checkpoint, LearningRateScheduler
from distdl.comm import get_comm
from distdl.data import DataLoader, Dataset, DistributedSampler, Subset, TensorDataset
from distdl.functional import sigmoid, softmax
from distdl.named import loss_named, optimizer_named
from distdl.nn.loss import BCEWithLogitsLoss, CrossEntropyLoss
from distdl.parallel import DistributedDataParallel, NonFiniteLossError
from distdl.summary import summary
from distdl.timing import PhaseRecorder

log = logging.getLogger("distdl.trainer")


class History(Mapping):
    """Per-epoch figures, as Keras keeps them: ``history.history["val_accuracy"][-1]``; also a read-only mapping
    of those lists (``history["loss"]``, ``"val_loss" in history``, ``dict(history)``)."""

    def __init__(self, epoch=None, history=None):
        self.epoch = list(epoch or [])
        self.history = {k: list(v) for k, v in (history or {}).items()}

    def append(self, epoch, logs):
        self.epoch.append(epoch)
        for key, value in logs.items():
            self.history.setdefault(key, []).append(value)

    def __getitem__(self, key):
        return self.history[key]

    def __iter__(self):
        return iter(self.history)

    def __len__(self):
        return len(self.history)

    def __repr__(self):
        last = {k: round(v[-1], 4) for k, v in self.history.items() if v}
        return f"History({len(self.epoch)} epochs, last {last})"


def as_dataset(data):
    """A Dataset as given; a TensorDataset over a tuple of arrays (x, y) or over one array of inputs."""
    if isinstance(data, (tuple, list)):
        return TensorDataset(*data)
    if hasattr(data, "shape"):
        return TensorDataset(data)
    if isinstance(data, Dataset) or (hasattr(data, "__getitem__") and hasattr(data, "__len__")):
        return data
    raise TypeError(f"give a Dataset or a tuple of arrays (x, y), not {type(data).__name__}")


def training_dataset(x, y):
    """The (input, target) Dataset that ``fit(x, y)`` or ``fit(dataset)`` means; a clear error where targets lack."""
    if y is not None:
        if isinstance(x, (Dataset, tuple)):
            raise TypeError(f"fit(x, y): give x and y as arrays, or a Dataset of (input, target) pairs as x alone; "
                            f"got {type(x).__name__} and {type(y).__name__}")
        x, y = np.asarray(x), np.asarray(y)
        if len(x) != len(y):
            raise ValueError(f"fit(x, y): x holds {len(x)} samples but y {len(y)}; give one target per sample")
        return TensorDataset(x, y)
    dataset = as_dataset(x)
    if len(dataset) and not (isinstance(dataset[0], (tuple, list)) and len(dataset[0]) == 2):
        raise ValueError("fit: the data hold inputs without targets; pass the targets too: fit(x, y, ...), "
                         "fit((x, y), ...), or a Dataset whose items are (input, target) pairs")
    return dataset


def split_off(dataset, fraction):
    """(train, validation): the last ``fraction`` of the samples held out before shuffling, as Keras does."""
    if not 0 < fraction < 1:
        raise ValueError(f"validation_split must lie in (0, 1), got {fraction}")
    cut = int(len(dataset) * (1 - fraction))
    if not 0 < cut < len(dataset):
        raise ValueError(f"validation_split={fraction} leaves no sample on one side of {len(dataset)}")
    return Subset(dataset, range(cut)), Subset(dataset, range(cut, len(dataset)))


class Trainer:
    """``Trainer(model, optimizer, loss=nn.CrossEntropyLoss(), metrics=["accuracy"], scheduler=None)``.

    Args:
        optimizer: an optimizer, or a name ("adam", "sgd", ...: ``distdl.named``).
        loss: a loss module, or a name ("sparse_categorical_crossentropy", "mse", ...).
        scheduler_per: what ``scheduler`` counts: "epoch", "batch" (steps), or "sample" (samples
            seen over all ranks: the curve that stays the same at any world size).
        lr_scaling: None, or "linear": every group's lr times the world size (the linear scaling
            rule), re-applied when a run resumes on another world size.
        bucket_cap_mb, nonfinite: go to DistributedDataParallel ("error" or "skip").
        device: where to train: "cpu", "cuda", "cuda:N" (the model is moved there) or "sim"; None
            (default) trains where the model's parameters are.
    """

    def __init__(self, model, optimizer, loss, metrics=(), scheduler=None, comm=None, bucket_cap_mb=25,
                 nonfinite="error", scheduler_per="epoch", lr_scaling=None, device=None):
        if lr_scaling not in (None, "linear"):
            raise ValueError(f"lr_scaling must be None or 'linear', got {lr_scaling!r}")
        self.comm = comm if comm is not None else get_comm()
        self.model = model
        self.device = _placed(model, device)  # before DistributedDataParallel, which makes its buckets there
        self.ddp = (DistributedDataParallel(model, self.comm, bucket_cap_mb, nonfinite=nonfinite)
                    if self.comm.size > 1 else None)
        self.nonfinite = nonfinite
        self.skipped_steps = 0  # in the last epoch, for non-finite losses or gradients
        self.optimizer = optimizer_named(optimizer, model.parameters())
        self.loss, self.scheduler = loss_named(loss), scheduler
        self.schedule = LearningRateScheduler(scheduler, per=scheduler_per) if scheduler is not None else None
        self.lr_scaling = lr_scaling
        self._reference_lrs = [group.get("initial_lr", group["lr"]) for group in self.optimizer.param_groups]
        if lr_scaling:
            self._scale_lr()
        if lr_scaling and self.comm.size > 1:
            self._say(f"lr scaled linearly with the world size: {self._reference_lrs[0]:.4g} x {self.comm.size} "
                      f"= {self._reference_lrs[0] * self.comm.size:.4g}")
        self._cast_said = False
        self._example = None
        self.metric_names = list(metrics)
        self._fresh_metrics()  # an unknown metric name fails here, not after the first epoch
        self.history = History()
        self.global_step = 0
        self.stop_training = False
        self.phases = self.ddp.phases if self.ddp is not None else PhaseRecorder(self.comm)  # one recorder a step
        self.timer = self.phases.timer
        self.loader = self.sampler = None
        self._start_epoch = 0
        self._epoch_metrics = None

    # -- helpers ---------------------------------------------------------------------------------------------------
    @property
    def network(self):
        """What the forward pass calls: the DDP wrapper when distributed, else the model."""
        return self.ddp if self.ddp is not None else self.model

    def _forward(self, x):
        """The training forward; alone, the Trainer tells its recorder where it runs (DistributedDataParallel does)."""
        if self.ddp is not None:
            return self.ddp(x)
        self.phases.forward_begins()
        return self.model(x)

    @property
    def samples_seen(self):
        """Training samples seen over all ranks since the first epoch (an epoch counts the dataset's size)."""
        sampler = self.sampler
        if sampler is None:
            return 0
        return sampler.epoch * sampler.dataset_size + min(sampler.position * sampler.num_replicas,
                                                          sampler.dataset_size)

    def _say(self, line):
        if self.comm.rank == 0:
            print(line, flush=True)

    def _scale_lr(self):
        """Each group's base lr = its reference x the world size; the schedule, if any, recomputes the lr from it."""
        bases = [reference * self.comm.size for reference in self._reference_lrs]
        for group, base in zip(self.optimizer.param_groups, bases):
            group["initial_lr"] = group["lr"] = base
        if self.scheduler is not None:
            self.scheduler.base_lrs = bases
            self.scheduler.step_to(self.scheduler.last_epoch)

    def _as_model_dtype(self, array):
        """Float inputs or targets in the model's float dtype (the layers refuse mixed dtypes; Keras's fit casts)."""
        array = np.asarray(array) if not hasattr(array, "dtype") else array
        if self.device.kind == "cuda":
            array = backend.to_device(array, repr(self.device))  # arrays given by hand (summary's example)
        dtype = next((p.dtype for p in self.model.parameters() if p.dtype.kind == "f"), None)
        if dtype is None or array.dtype.kind != "f" or array.dtype == dtype:
            return array
        if not self._cast_said:
            log.info("distdl: %s data cast to the model's %s", array.dtype, np.dtype(dtype))
            self._cast_said = True
        return array.astype(dtype)

    def _fresh_metrics(self):
        return {"loss": metrics_module.Mean(), **{n if isinstance(n, str) else n.name: metrics_module.get(n)
                                                  for n in self.metric_names}}

    def _target(self, y):
        y = self._as_model_dtype(y)
        return Tensor(y) if y.dtype.kind == "f" and not isinstance(self.loss, CrossEntropyLoss) else y

    def _scores(self, output):
        """What metrics see: probabilities where the loss took logits."""
        if isinstance(self.loss, CrossEntropyLoss):
            return softmax(output, axis=1)
        if isinstance(self.loss, BCEWithLogitsLoss):
            return sigmoid(output)
        return output

    def _update(self, metrics, output, y, value):
        """Add a batch to the metrics (``value``: its loss, read); on a device its arrays are read here, once."""
        metrics["loss"].update(value, weight=len(y))
        if len(metrics) > 1:
            scores, y = (backend.to_device(a, "cpu") for a in (self._scores(output).data, y))
            if isinstance(self.loss, CrossEntropyLoss) and np.ndim(y) == scores.ndim:
                y = np.asarray(y).argmax(axis=1)  # class probabilities (one-hot): metrics count the likeliest class
            for name, metric in metrics.items():
                if name != "loss":
                    metric.update(y, scores)

    def _reduced(self, metrics):
        return {name: float(metric.compute(self.comm)) for name, metric in metrics.items()}

    # -- fit -------------------------------------------------------------------------------------------------------
    def fit(self, x, y=None, batch_size=None, epochs=1, verbose=True, callbacks=(), validation_split=0.0,
            validation_data=None, shuffle=True, seed=0, transform=None, validation_transform=None, prefetch=2,
            pad=True):
        """Train for ``epochs`` (resuming from a checkpoint when a Checkpoint callback finds one); returns History.

        ``x`` and ``y`` are arrays, or ``x`` is a Dataset of (input, target) pairs or a tuple
        of arrays; Keras's order of arguments. ``validation_split`` holds out the last fraction of
        the samples; ``validation_data`` is a Dataset or a tuple (x, y). ``batch_size`` (per
        worker) is 32 unless given.
        ``transform`` is the training batches' transform (augmentation); ``validation_transform``
        the validation batches' (deterministic: scaling, normalisation). ``pad=False``: no
        sample is repeated to even out the shards; a rank out of batches answers the others'
        steps (``DistributedDataParallel.join``), so collective callbacks such as step
        checkpoints need ``pad=True``.
        """
        batch_size = 32 if batch_size is None else batch_size
        dataset = training_dataset(x, y)
        if validation_split:
            if validation_data is not None:
                raise ValueError("fit: give validation_split or validation_data, not both")
            dataset, validation_data = split_off(dataset, validation_split)
        self._example = np.asarray(dataset[0][0])[None] if len(dataset) else None
        self.sampler = DistributedSampler(dataset, num_replicas=self.comm.size, rank=self.comm.rank,
                                          shuffle=shuffle, seed=seed, pad=pad)
        self.loader = DataLoader(dataset, batch_size=batch_size, sampler=self.sampler, transform=transform,
                                 prefetch=prefetch, device=self._loader_device)
        callbacks = list(callbacks)
        if self.schedule is not None:  # first: a checkpoint at the end of an epoch sees the stepped schedule
            callbacks.insert(0, self.schedule)
        if _checkpoint_dir() and not any(isinstance(c, Checkpoint) for c in callbacks):
            callbacks.append(Checkpoint())  # resume automatically after distdl-run restarts the job
        self.stop_training = False
        for callback in callbacks:
            callback.on_train_begin(self)
        for epoch in range(self._start_epoch, epochs):
            self.sampler.set_epoch(epoch)
            for callback in callbacks:
                callback.on_epoch_begin(self, epoch)
            start, began = time.perf_counter(), time.time()
            logs, samples = self._train_epoch(epoch, epochs, callbacks, verbose)
            seconds = time.perf_counter() - start
            if validation_data is not None:
                figures = self.evaluate(validation_data, batch_size=batch_size, transform=validation_transform)
                logs.update({f"val_{k}": v for k, v in figures.items()})
            self.history.append(epoch, logs)
            for callback in callbacks:
                callback.on_epoch_end(self, epoch, logs)
            logs["lr"] = self.optimizer.param_groups[0]["lr"]
            self._report_epoch(epoch, epochs, logs, samples / seconds if seconds else 0.0, seconds, verbose)
            self.timer.mark(f"epoch {epoch + 1}", began, time.time(), logs)
            if self.stop_training:
                break
        self._start_epoch = 0
        for callback in callbacks:
            callback.on_train_end(self)
        self.timer.write_timeline(self.comm)
        return self.history

    def _train_epoch(self, epoch, epochs, callbacks, verbose):
        self.model.train()
        if self._epoch_metrics is None:
            self._epoch_metrics = self._fresh_metrics()
        metrics = self._epoch_metrics
        self.phases.reset()
        bar = _progress_bar(len(self.loader) - self.sampler.position // self.loader.batch_size,
                            f"epoch {epoch + 1}/{epochs}", verbose and self.comm.rank == 0)
        self.skipped_steps = 0
        uneven = self.ddp is not None and not self.sampler.pad
        with self.ddp.join() if uneven else nullcontext():
            self._train_steps(metrics, callbacks, bar)
        if bar is not None:
            bar.close()
        self._epoch_metrics = None
        samples = self.comm.allreduce(np.array([metrics["loss"].stats["weight"]], np.float64), "sum")[0]
        return self._reduced(metrics), float(samples)

    def _train_steps(self, metrics, callbacks, bar):
        # the host reads the loss at once; a device after the step, unless alone with "skip", where it decides the update
        read_first = not self.device.is_async or (self.ddp is None and self.nonfinite == "skip")
        # DistributedDataParallel's collectives (the buffers' broadcast, the step check) read on the host by design
        no_wait = self.device.forbid_syncs if self.ddp is None else nullcontext
        for batch, (x, y) in enumerate(self.loader):
            arrived = time.time()
            with no_wait():
                output = self._forward(Tensor(self._as_model_dtype(x)))
                loss = self.loss(output, self._target(y))
            if read_first:
                value = loss.item()
                self._check_loss(value, self.global_step + 1, batch, "stopped before backward")
                if self.ddp is None and not math.isfinite(value):  # alone, "skip" needs no gradient check
                    self.skipped_steps += 1
                    self.global_step += 1
                    continue
            with no_wait():
                started = time.time()
                loss.backward()
                if self.ddp is None:  # DistributedDataParallel tells its recorder itself
                    self.phases.backward_ended(started)
                self.optimizer.step()  # after a skipped step the gradients are None: nothing moves
                self.optimizer.zero_grad()
            self.global_step += 1
            if not read_first:
                value = loss.item()  # the step's read: the queued input checks first, then the loss
                self._check_loss(value, self.global_step, batch,
                                 f"stopped after that step (on {self.device} the loss is read once a step, after it)")
            if self.ddp is not None and self.ddp.step_skipped:
                self.skipped_steps += 1
            else:
                with no_grad():
                    self._update(metrics, output, y, value)
            if bar is not None:
                bar.update(1)
                rate = len(y) * self.comm.size / max(time.time() - arrived, 1e-9)
                bar.set_postfix(loss=f"{value:.4f}", samples_per_s=f"{rate:.0f}")
            for callback in callbacks:
                callback.on_batch_end(self, self.global_step, {"loss": value})

    def _check_loss(self, value, step, batch, when):
        """A non-finite loss stops the run here, unless such steps are skipped."""
        if not math.isfinite(value) and self.nonfinite != "skip":
            raise NonFiniteLossError(
                f"rank {self.comm.rank}: the loss is {value} at step {step} (batch {batch + 1} of "
                f"this epoch on this rank); {when}. Look at this rank's batch and the learning rate, or pass "
                "Trainer(..., nonfinite='skip') to skip such steps on every rank")

    @property
    def _loader_device(self):
        """What the loaders hand batches to: the training device when it is one (host batches stay as they are)."""
        return self.device if self.device.is_async else None

    def _report_epoch(self, epoch, epochs, logs, rate, seconds, verbose):
        summary = self.timer.summary(self.comm)
        if not verbose or self.comm.rank != 0:
            return
        figures = "  ".join(f"{k} {v:.4g}" for k, v in logs.items() if k != "lr")
        skipped = f"  skipped {self.skipped_steps} non-finite step{'s' * (self.skipped_steps != 1)}" \
            if self.skipped_steps else ""
        print(f"epoch {epoch + 1}/{epochs}  {figures}  lr {logs['lr']:.3g}  {rate:,.0f} samples/s  {seconds:.2f} s"
              f"{skipped}", flush=True)
        if summary:
            print(f"  uneven ranks: {summary}", flush=True)

    # -- evaluate and predict ----------------------------------------------------------------------------------------
    def _exact_loader(self, data, batch_size, transform):
        dataset = as_dataset(data)
        sampler = DistributedSampler(dataset, num_replicas=self.comm.size, rank=self.comm.rank, shuffle=False,
                                     pad=False)
        return dataset, DataLoader(dataset, batch_size=batch_size, sampler=sampler, transform=transform,
                                   device=self._loader_device)

    def evaluate(self, x, y=None, batch_size=256, transform=None):
        """Loss and metrics over every sample exactly once, reduced over the ranks.

        As ``fit``: arrays ``x`` and ``y`` (Keras's order), or ``x`` a Dataset of (input, target) pairs or a
        tuple (x, y).
        """
        began = time.time()
        _, loader = self._exact_loader(training_dataset(x, y), batch_size, transform)
        metrics = self._fresh_metrics()
        self.model.eval()
        with no_grad():
            for x, y in loader:
                output = self.model(Tensor(self._as_model_dtype(x)))
                self._update(metrics, output, y, self.loss(output, self._target(y)).item())
        self.model.train()
        figures = self._reduced(metrics)
        self.timer.mark("evaluate", began, time.time(), figures)
        return figures

    def predict(self, data, batch_size=256, transform=None):
        """The model's outputs for every sample of ``data`` (inputs only, or (x, y)), in order, on every rank."""
        dataset, loader = self._exact_loader(data, batch_size, transform)
        self.model.eval()
        parts = []
        with no_grad():
            for batch in loader:
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                parts.append(np.asarray(self.model(Tensor(self._as_model_dtype(x))).numpy()))
        self.model.train()
        mine = np.concatenate(parts) if parts else np.zeros((0,), np.float32)
        if self.comm.size == 1:
            return mine
        return _interleave(self.comm, mine, len(dataset))

    def summary(self, x=None, print_fn=print):
        """The model's layers, output shapes (on ``x``, else on a sample of the last fit's data), parameter counts.

        Printed as Keras prints it, on rank 0.
        """
        if self.comm.rank != 0:
            return
        example = self._example if x is None else np.asarray(x)
        print_fn(summary(self.model, None if example is None else Tensor(self._as_model_dtype(example))))

    # -- checkpoints ---------------------------------------------------------------------------------------------------
    def checkpoint_objects(self):
        return {"model": self.model, "optimizer": self.optimizer, "scheduler": self.scheduler,
                "sampler": self.loader}

    def checkpoint_state(self, epoch_done):
        """What a checkpoint holds besides the objects; collective (every rank's running metrics are gathered)."""
        metrics = self._epoch_metrics or {}
        running = self.comm.allgather_json({name: {k: np.asarray(v).tolist() for k, v in m.stats.items()}
                                            for name, m in metrics.items()})
        return {**self.checkpoint_objects(), "epoch": self.history.epoch[-1] if epoch_done else self.sampler.epoch,
                "epoch_done": epoch_done, "global_step": self.global_step, "samples_seen": self.samples_seen,
                "history": {"epoch": self.history.epoch, "history": self.history.history},
                "epoch_metrics": running}

    def restore(self, state):
        """Continue from a checkpoint: the next epoch, or the rest of an interrupted one with its running metrics."""
        self.history = History(state["history"]["epoch"], state["history"]["history"])
        self.global_step = state["global_step"]
        if state["epoch_done"]:
            self._start_epoch, self._epoch_metrics = state["epoch"] + 1, None
        else:  # the interrupted epoch's running metrics, every saved rank's merged into rank 0's
            self._start_epoch = state["epoch"]
            self._epoch_metrics = self._fresh_metrics()
            for saved in state["epoch_metrics"] if self.comm.rank == 0 else []:
                for name, stats in saved.items():
                    part = self._fresh_metrics()[name]
                    part.stats = {k: np.asarray(v, np.float64) for k, v in stats.items()}
                    self._epoch_metrics[name].merge(part)
        self._say(f"resumed from step {self.global_step} (epoch {state['epoch'] + 1}"
                  f"{'' if state['epoch_done'] else ', part way'})")
        if state["world_size"] != self.comm.size:
            self._say_world_change(state["world_size"], state.get("samples_seen", self.samples_seen))

    def _say_world_change(self, saved_size, samples_seen):
        """One line: the world size changed, and what follows for the data, the lr and the schedule."""
        words = [f"the world size changed from {saved_size} to {self.comm.size}: the data continue at sample "
                 f"{samples_seen}"]
        if self.lr_scaling:
            self._scale_lr()
            words.append(f"lr rescaled linearly to {self._reference_lrs[0]:.4g} x {self.comm.size}")
        if self.schedule is not None and self.schedule.per == "batch":
            words.append("the schedule counts steps, which now hold another number of samples: "
                         "count it in samples (scheduler_per='sample') to keep its curve")
        self._say("; ".join(words))


def _placed(model, device):
    """The Device to train on: ``device`` (the model moved to a GPU named), else where the model's parameters are."""
    if device is None:
        first = next(iter(model.parameters()), None)
        return devices.of(first.data) if first is not None else devices.current()
    target = devices.get(device)  # without CuPy, "cuda" says what to install
    if target.kind == "cuda":
        model.to(repr(target))
    if target.kind == "sim" and devices.current() is not target:  # its arrays are NumPy's: only the binding tells
        raise ValueError("Trainer(device='sim'): bind the process to the simulated device first "
                         "(dl.init(device='sim') or DISTDL_DEVICE=sim)")
    return target


def _interleave(comm, mine, total):
    """Every rank's rows of an unpadded strided shard (rank r holds rows r, r+W, ...), back in dataset order."""
    out = np.empty((total,) + mine.shape[1:], mine.dtype)
    for rank, rows in enumerate(comm.allgather_ragged(mine)):
        out[rank::comm.size] = rows
    return out


def _checkpoint_dir():
    return os.environ.get("DISTDL_CHECKPOINT_DIR")


def _progress_bar(total, description, wanted):
    """A tqdm bar on an interactive terminal, also through distdl-run's live console; None elsewhere (a line per
    epoch is printed instead)."""
    if not wanted or not (sys.stdout.isatty() or os.environ.get("DISTDL_LIVE_OUTPUT") == "1"):
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="step", leave=False, dynamic_ncols=True)
