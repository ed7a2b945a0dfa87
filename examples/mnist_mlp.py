"""The Keras MNIST MLP with dl.Trainer: Flatten, Dense 128 ReLU, Dropout 0.2, Dense 10, Adam.

MNIST from --data-dir (train/t10k IDX files, plain or .gz), else the embedded digits
enlarged to 28x28, so that it runs offline:

    distdl-run -n 2 examples/mnist_mlp.py [--data-dir ~/data/mnist]
"""

import distdl as dl
from common import arguments, report
from distdl import nn, optim
from distdl.data import TensorDataset, load_digits, load_mnist, random_split

args, comm = arguments(__doc__, epochs=10, batch_size=64, lr=1e-3)
if args.data_dir:
    train, test = ((load_mnist(args.data_dir, split)) for split in ("train", "test"))
    train, test = (TensorDataset(x[:, None].astype("float32") / 255, y) for x, y in (train, test))
else:
    train, test = random_split(TensorDataset(*load_digits(size=28)), [0.8, 0.2], seed=0)
model = nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Dropout(0.2), nn.Linear(128, 10))
trainer = dl.Trainer(model, optim.Adam(model.parameters(), lr=args.lr), loss=nn.CrossEntropyLoss(),
                     metrics=["accuracy"])
trainer.fit(train, epochs=args.epochs, batch_size=args.batch_size, validation_data=test, seed=args.seed)
report(f"final test accuracy: {trainer.evaluate(test)['accuracy']:.4f} ({comm.size} workers)")
dl.shutdown()
