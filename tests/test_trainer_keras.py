"""The Trainer as a Keras user writes it: fit(x, y) with arrays, validation_split, losses and optimizers by name,
summary(), float64 data cast to a float32 model; and a schedule counted in samples."""

import logging
import math

import numpy as np
import pytest

import distdl as dl
from distdl import nn, optim
from distdl.data import TensorDataset


def problem(n=120, dtype=np.float64):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 4)).astype(dtype)
    return x, (x[:, 0] + x[:, 1] > 0).astype(np.int64)


def trained(data_args, **fit):
    dl.seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    trainer = dl.Trainer(model, optim.SGD(model.parameters(), lr=0.1), loss=nn.CrossEntropyLoss())
    history = trainer.fit(*data_args, batch_size=16, epochs=2, shuffle=False, verbose=False, **fit)
    return trainer, history, [p.data.copy() for p in model.parameters()]


def test_fit_on_float64_arrays_equals_fit_on_the_dataset_cast_by_hand_and_says_so_once(caplog):
    x, y = problem()
    with caplog.at_level(logging.INFO, logger="distdl.trainer"):
        _, _, keras = trained((x, y), validation_data=(x[:20], y[:20]))
    _, _, by_hand = trained((TensorDataset(x.astype(np.float32), y),))
    for a, b in zip(keras, by_hand):
        np.testing.assert_array_equal(a, b)
    assert [r.getMessage() for r in caplog.records] == ["distdl: float64 data cast to the model's float32"]


def test_validation_split_holds_out_the_last_samples_before_shuffling():
    x, y = problem()
    trainer, history, split = trained((x, y), validation_split=0.25)
    _, _, first = trained((x[:90], y[:90]))
    for a, b in zip(split, first):
        np.testing.assert_array_equal(a, b)
    assert history["val_loss"][-1] == pytest.approx(trainer.evaluate((x[90:], y[90:]))["loss"])
    assert trainer.evaluate(x[90:], y[90:], batch_size=4) == pytest.approx(trainer.evaluate((x[90:], y[90:])))
    assert "val_loss" in history and dict(history) == history.history and list(history) == list(history.history)
    with pytest.raises(ValueError, match=r"validation_split must lie in \(0, 1\), got 1.5"):
        trainer.fit(x, y, validation_split=1.5)
    with pytest.raises(ValueError, match="give validation_split or validation_data, not both"):
        trainer.fit(x, y, validation_split=0.1, validation_data=(x, y))


def test_fit_without_targets_or_with_mismatched_ones_says_what_to_pass():
    x, y = problem()
    trainer, _, _ = trained((x, y))
    with pytest.raises(ValueError, match=r"inputs without targets; pass the targets too: fit\(x, y, \.\.\.\)"):
        trainer.fit(x, epochs=1)
    with pytest.raises(ValueError, match="x holds 120 samples but y 119"):
        trainer.fit(x, y[1:])
    with pytest.raises(TypeError, match=r"fit\(x, y\): give x and y as arrays"):
        trainer.fit(TensorDataset(x, y), y)


@pytest.mark.parametrize("name, reference, target", [
    ("sparse_categorical_crossentropy", nn.CrossEntropyLoss(), "index"),
    ("categorical_crossentropy", nn.CrossEntropyLoss(), "onehot"),
    ("CrossEntropyLoss", nn.CrossEntropyLoss(), "index"),
    ("binary_crossentropy", nn.BCELoss(), "probability"),
    ("bce_with_logits", nn.BCEWithLogitsLoss(), "probability"),
    ("mse", nn.MSELoss(), "value"), ("mean_squared_error", nn.MSELoss(), "value"),
    ("mae", nn.L1Loss(), "value"), ("nll_loss", nn.NLLLoss(), "index"),
])
def test_losses_by_keras_and_torch_names_compute_the_named_loss(name, reference, target):
    rng = np.random.default_rng(1)
    output = rng.uniform(0.05, 0.95, (6, 3)).astype(np.float32)
    targets = {"index": rng.integers(0, 3, 6), "onehot": np.eye(3, dtype=np.float32)[rng.integers(0, 3, 6)],
               "probability": rng.uniform(0, 1, (6, 3)).astype(np.float32),
               "value": rng.standard_normal((6, 3)).astype(np.float32)}[target]
    model = nn.Linear(3, 3)
    trainer = dl.Trainer(model, "sgd", loss=name)
    wrap = (lambda t: dl.tensor(t)) if target != "index" else (lambda t: t)
    assert trainer.loss(dl.tensor(output), wrap(targets)).item() == reference(dl.tensor(output), wrap(targets)).item()


def test_optimizers_by_name_take_keras_defaults_and_unknown_names_list_the_valid_ones():
    model = nn.Linear(3, 2)
    for name, cls, lr in [("adam", optim.Adam, 1e-3), ("SGD", optim.SGD, 0.01), ("rmsprop", optim.RMSprop, 1e-3),
                          ("adagrad", optim.Adagrad, 1e-3), ("adamw", optim.AdamW, 1e-3)]:
        trainer = dl.Trainer(model, name, loss="mse")
        assert type(trainer.optimizer) is cls and trainer.optimizer.param_groups[0]["lr"] == lr
        assert [p for g in trainer.optimizer.param_groups for p in g["params"]] == list(model.parameters())
    with pytest.raises(ValueError, match="unknown optimizer 'adum'; valid names: adagrad, adam, adamw, rmsprop, sgd"):
        dl.Trainer(model, "adum", loss="mse")
    with pytest.raises(ValueError, match="unknown loss 'mse_los'; valid names: .*mean_squared_error, mse, "):
        dl.Trainer(model, "adam", loss="mse_los")


class Tagger(nn.Module):
    """Not a Sequential: the summary watches its layers."""

    def __init__(self):
        super().__init__()
        self.embed, self.lstm, self.head = nn.Embedding(20, 6), nn.LSTM(6, 5, batch_first=True), nn.Linear(5, 3)

    def forward(self, x):
        out, _ = self.lstm(self.embed(x))
        return self.head(out)


def test_summary_lists_each_layer_with_its_output_shape_and_parameter_count():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(36, 10))
    model[4].bias.requires_grad_(False)
    trainer = dl.Trainer(model, "adam", loss="sparse_categorical_crossentropy")
    lines = []
    trainer.summary(np.zeros((2, 1, 8, 8)), print_fn=lines.append)
    rows = [line.split() for line in lines[0].splitlines()]
    assert rows[0] == ["Model:", '"Sequential"']
    assert rows[4:9] == [["0", "(Conv2d)", "(None,", "4,", "6,", "6)", "40"], ["1", "(ReLU)", "(None,", "4,", "6,",
                                                                              "6)", "0"],
                         ["2", "(MaxPool2d)", "(None,", "4,", "3,", "3)", "0"], ["3", "(Flatten)", "(None,", "36)", "0"],
                         ["4", "(Linear)", "(None,", "10)", "370"]]
    total = sum(p.data.size for p in model.parameters())
    assert rows[-3:] == [["Total", "params:", f"{total}"], ["Trainable", "params:", f"{total - 10}"],
                         ["Non-trainable", "params:", "10"]]
    tagger = Tagger()
    lines = []
    trainer = dl.Trainer(tagger, "adam", loss="sparse_categorical_crossentropy")
    trainer.summary(np.zeros((2, 7), np.int64), print_fn=lines.append)
    rows = [line.split("  ") for line in lines[0].splitlines()[4:7]]
    assert [[cell.strip() for cell in row if cell] for row in rows] == [
        ["embed (Embedding)", "(None, 7, 6)", "120"], ["lstm (LSTM)", "[(None, 7, 5), [(1, 2, 5), (1, 2, 5)]]", "260"],
        ["head (Linear)", "(None, 7, 3)", "18"]]
    assert "forward" not in tagger.lstm.__dict__  # the watch is gone


def test_summary_after_fit_uses_a_sample_of_its_data_and_before_fit_has_no_shapes():
    x, y = problem()
    trainer, _, _ = trained((x, y))
    lines = []
    trainer.summary(print_fn=lines.append)
    assert "2 (Linear)" in lines[0] and "(None, 2)" in lines[0]
    model = nn.Sequential(nn.Linear(4, 2))
    dl.Trainer(model, "sgd", loss="mse").summary(print_fn=lines.append)
    assert lines[1].splitlines()[4].split() == ["0", "(Linear)", "10"] and "None" not in lines[1]


def test_a_schedule_counted_in_samples_gives_the_lr_of_the_samples_seen():
    x, y = problem(n=100)
    model = nn.Linear(4, 2)
    sgd = optim.SGD(model.parameters(), lr=0.1)
    cosine = optim.lr_scheduler.CosineAnnealingLR(sgd, T_max=300)
    seen = []

    class Record(dl.callbacks.Callback):
        def on_batch_end(self, trainer, step, logs):
            seen.append((trainer.samples_seen, sgd.param_groups[0]["lr"]))

    trainer = dl.Trainer(model, sgd, loss="sparse_categorical_crossentropy", scheduler=cosine,
                         scheduler_per="sample")
    trainer.fit(x.astype(np.float32), y, batch_size=32, epochs=3, callbacks=[Record()], verbose=False)
    assert [s for s, _ in seen] == [32, 64, 96, 100, 132, 164, 196, 200, 232, 264, 296, 300]
    for samples, lr in seen:
        assert lr == pytest.approx(0.05 * (1 + math.cos(math.pi * samples / 300)), rel=1e-12)
    with pytest.raises(ValueError, match=r"per must be one of \('epoch', 'batch', 'sample'\), got 'step'"):
        dl.Trainer(model, sgd, loss="mse", scheduler=cosine, scheduler_per="step")


def test_one_hot_targets_under_categorical_crossentropy_train_and_score_as_class_indices():
    x, y = problem()
    runs = {}
    for loss, targets in [("sparse_categorical_crossentropy", y), ("categorical_crossentropy", np.eye(2)[y])]:
        dl.seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
        trainer = dl.Trainer(model, "sgd", loss=loss, metrics=["accuracy", "f1"])
        history = trainer.fit(x.tolist(), targets.tolist(), 16, 2, False, validation_split=0.2, shuffle=False)
        runs[loss] = history.history, [p.data for p in model.parameters()]
    (sparse, sparse_params), (onehot, onehot_params) = runs.values()
    assert sparse.keys() == onehot.keys() and all(np.allclose(sparse[k], onehot[k], rtol=1e-6) for k in sparse)
    for a, b in zip(sparse_params, onehot_params):
        np.testing.assert_allclose(a, b, rtol=1e-6)
