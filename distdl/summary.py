"""A model's summary as Keras prints it: each top-level layer, its output shape, its parameter count, the totals.

Output shapes need an input: the layers are run once on an example (in eval mode,
without gradients) and each layer's output is recorded; the batch dimension is shown
as ``None``, as Keras shows it (where it leads: an LSTM's state (layers, batch, hidden) is shown whole).
"""

from distdl.autograd import no_grad
from distdl.autograd.tensor import Tensor
from distdl.nn.container import Sequential


def summary(model, example=None):
    """The summary's text; output shapes only when ``example`` (an input batch) is given."""
    layers = list(model.named_children()) or [(type(model).__name__, model)]
    shapes = _output_shapes(model, layers, example) if example is not None else {}
    rows = [(f"{name} ({type(layer).__name__})", shapes.get(name, "?" if example is not None else ""),
             f"{layer.num_parameters():,}") for name, layer in layers]
    header = ("Layer (type)", "Output Shape", "Param #")
    widths = [max(len(row[i]) for row in rows + [header]) + 2 for i in range(3)]
    line = lambda row: "".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()  # noqa: E731
    total, trainable = model.num_parameters(), model.num_parameters(trainable_only=True)
    rule = "=" * sum(widths)
    return "\n".join([f'Model: "{type(model).__name__}"', rule, line(header), rule, *map(line, rows), rule,
                      f"Total params: {total:,}", f"Trainable params: {trainable:,}",
                      f"Non-trainable params: {total - trainable:,}"])


def _output_shapes(model, layers, example):
    """Each layer's output shape on ``example``: a Sequential's layers in turn, any other model's by watching them."""
    shapes, was_training = {}, model.training
    model.eval()
    try:
        with no_grad():
            if isinstance(model, Sequential):
                value = example
                for name, layer in layers:
                    value = layer(value)
                    shapes[name] = _shape(value, len(example))
            else:
                for name, layer in layers:
                    layer.forward = _recording(layer, name, shapes, len(example))
                model(example)
    finally:
        for _, layer in layers:
            layer.__dict__.pop("forward", None)
        model.train(was_training)
    return shapes


def _recording(layer, name, shapes, batch):
    forward = type(layer).forward.__get__(layer)

    def record(*args, **kwargs):
        out = forward(*args, **kwargs)
        shapes[name] = _shape(out, batch)
        return out

    return record


def _shape(value, batch):
    if isinstance(value, Tensor) or hasattr(value, "shape"):
        shape = tuple(value.shape)
        return str((None, *shape[1:]) if shape[:1] == (batch,) else shape).replace(",)", ")")
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_shape(v, batch) for v in value) + "]"
    return type(value).__name__
