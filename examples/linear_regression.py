"""Linear regression by SGD, data-parallel: recovers the known weights of a generated problem
(make_regression) and prints them beside the truth.

    distdl-run -n 2 examples/linear_regression.py
"""

import numpy as np

import distdl as dl
from common import arguments, report
from distdl import nn, optim
from distdl.data import TensorDataset, make_regression

args, comm = arguments(__doc__, epochs=10, batch_size=32, lr=0.05, data_dir=False,
                       extra={"--features": {"type": int, "default": 5}})
x, y, true_weight, true_bias = make_regression(2000, n_features=args.features, noise=0.1, seed=args.seed)
model = nn.Linear(args.features, 1)
trainer = dl.Trainer(model, optim.SGD(model.parameters(), lr=args.lr), loss=nn.MSELoss(), metrics=["r2"])
trainer.fit(TensorDataset(x, y), epochs=args.epochs, batch_size=args.batch_size, seed=args.seed)
report("weight  " + "  ".join(f"{w:7.3f}" for w in model.weight.data[0]) + f"   bias {model.bias.data[0]:7.3f}")
report("truth   " + "  ".join(f"{w:7.3f}" for w in true_weight) + f"   bias {true_bias:7.3f}")
error = max(np.abs(model.weight.data[0] - true_weight).max(), abs(model.bias.data[0] - true_bias))
report(f"largest error: {error:.4f}")
dl.shutdown()
