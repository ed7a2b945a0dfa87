"""Losses and optimizers by the names Keras and torch users write: ``loss="mse"``, ``optimizer="adam"``.

A Keras user writes ``model.compile(loss="sparse_categorical_crossentropy", optimizer="adam")``;
the Trainer takes the same strings. The cross-entropy names take logits, as torch's
``CrossEntropyLoss`` does (Keras's ``from_logits=True``): end the model without a Softmax.
``"binary_crossentropy"`` takes probabilities (a Sigmoid at the end), as Keras's default.
Optimizers by name get Keras's default learning rate (0.01 for SGD, 0.001 for the others).
"""

from distdl import nn, optim

LOSSES = {
    "sparse_categorical_crossentropy": nn.CrossEntropyLoss, "categorical_crossentropy": nn.CrossEntropyLoss,
    "cross_entropy": nn.CrossEntropyLoss, "crossentropyloss": nn.CrossEntropyLoss,
    "binary_crossentropy": nn.BCELoss, "bce": nn.BCELoss, "bceloss": nn.BCELoss,
    "binary_crossentropy_with_logits": nn.BCEWithLogitsLoss, "bce_with_logits": nn.BCEWithLogitsLoss,
    "bcewithlogitsloss": nn.BCEWithLogitsLoss,
    "mse": nn.MSELoss, "mean_squared_error": nn.MSELoss, "mse_loss": nn.MSELoss, "mseloss": nn.MSELoss,
    "mae": nn.L1Loss, "mean_absolute_error": nn.L1Loss, "l1": nn.L1Loss, "l1_loss": nn.L1Loss, "l1loss": nn.L1Loss,
    "nll": nn.NLLLoss, "nll_loss": nn.NLLLoss, "nllloss": nn.NLLLoss,
}

OPTIMIZERS = {"sgd": (optim.SGD, 0.01), "adam": (optim.Adam, 1e-3), "adamw": (optim.AdamW, 1e-3),
              "rmsprop": (optim.RMSprop, 1e-3), "adagrad": (optim.Adagrad, 1e-3)}


def loss_named(loss):
    """The loss module for a name (any case); a module or callable as given."""
    if not isinstance(loss, str):
        return loss
    try:
        return LOSSES[loss.lower()]()
    except KeyError:
        raise ValueError(f"unknown loss {loss!r}; valid names: {', '.join(sorted(LOSSES))}, "
                         "or pass a loss module such as nn.CrossEntropyLoss()") from None


def optimizer_named(optimizer, parameters):
    """The optimizer for a name (any case) over ``parameters``, with Keras's default lr; an optimizer as given."""
    if not isinstance(optimizer, str):
        return optimizer
    try:
        cls, lr = OPTIMIZERS[optimizer.lower()]
    except KeyError:
        raise ValueError(f"unknown optimizer {optimizer!r}; valid names: {', '.join(sorted(OPTIMIZERS))}, "
                         "or pass an optimizer such as optim.Adam(model.parameters(), lr=1e-3)") from None
    return cls(parameters, lr=lr)
