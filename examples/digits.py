"""A small CNN on the 8x8 handwritten digits shipped inside distdl, data-parallel: the README's first command.

    distdl-run -n 2 examples/digits.py        # 2 local workers (MPI if it works here, else ZeroMQ)
    python examples/digits.py                 # one process

Conv 16 - pool - conv 32 - pool - dense 64 - dense 10, Adam, random one-pixel shifts
as augmentation, through dl.Trainer: it wraps the model in DistributedDataParallel,
shards the data with a DistributedSampler, and reduces the metrics over the ranks.
"""

import distdl as dl
from common import arguments, report
from distdl import nn, optim
from distdl.data import TensorDataset, load_digits, random_split
from distdl.data import transforms as T

args, comm = arguments(__doc__, epochs=30, batch_size=32, lr=0.003, data_dir=False)
train, test = random_split(TensorDataset(*load_digits()), [0.8, 0.2], seed=0)
model = nn.Sequential(
    nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    nn.Flatten(), nn.Linear(32 * 2 * 2, 64), nn.ReLU(), nn.Linear(64, 10),
)
trainer = dl.Trainer(model, optim.Adam(model.parameters(), lr=args.lr), loss=nn.CrossEntropyLoss(),
                     metrics=["accuracy"])
trainer.fit(train, epochs=args.epochs, batch_size=args.batch_size, validation_data=test,
            transform=T.RandomCrop(8, padding=1), seed=args.seed)
report(f"final test accuracy: {trainer.evaluate(test)['accuracy']:.4f} "
       f"({comm.size} workers, {len(test)} test samples)")
dl.shutdown()
