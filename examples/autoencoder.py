"""A dense autoencoder: 784-256-256 encoder, 256-784 sigmoid decoder, binary cross-entropy, Adam; reports the
reconstruction error (mean squared) on held-out images.

MNIST from --data-dir, else the embedded digits enlarged to 28x28:

    distdl-run -n 2 examples/autoencoder.py
"""

import distdl as dl
from common import arguments, report
from distdl import nn, optim
from distdl.data import TensorDataset, load_digits, load_mnist

args, comm = arguments(__doc__, epochs=10, batch_size=64, lr=1e-3)
if args.data_dir:
    (train_x, _), (test_x, _) = (load_mnist(args.data_dir, split) for split in ("train", "test"))
    train_x, test_x = (x.reshape(len(x), -1).astype("float32") / 255 for x in (train_x, test_x))
else:
    images, _ = load_digits(flatten=True, size=28)
    train_x, test_x = images[:1500], images[1500:]
model = nn.Sequential(
    nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),  # encoder
    nn.Linear(256, 784), nn.Sigmoid(),  # decoder
)
trainer = dl.Trainer(model, optim.Adam(model.parameters(), lr=args.lr), loss=nn.BCELoss(), metrics=["mse"])
trainer.fit(TensorDataset(train_x, train_x), epochs=args.epochs, batch_size=args.batch_size,
            validation_data=TensorDataset(test_x, test_x), seed=args.seed)
figures = trainer.evaluate(TensorDataset(test_x, test_x))
report(f"final reconstruction error: mse {figures['mse']:.5f}, bce {figures['loss']:.4f} on {len(test_x)} "
       f"held-out images ({comm.size} workers)")
dl.shutdown()
