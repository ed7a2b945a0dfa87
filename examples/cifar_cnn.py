"""The Keras CIFAR-10 CNN: Conv 32 3x3 ReLU, MaxPool, Dropout .25, Conv 64 3x3 ReLU, MaxPool, Dropout .25,
Flatten, Dense 128 ReLU, Dropout .5, Dense 10 (softmax, inside the cross-entropy), Adam, with random crop and
flip augmentation.

CIFAR-10 from --data-dir (the binary version's data_batch_*.bin and test_batch.bin),
else a generated CIFAR-shaped set (class templates plus noise, see make_images):

    distdl-run -n 2 examples/cifar_cnn.py [--data-dir ~/data/cifar-10-batches-bin]
"""

import distdl as dl
from common import arguments, report
from distdl import nn, optim
from distdl.data import TensorDataset, load_cifar10, make_images, random_split
from distdl.data import transforms as T

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)

args, comm = arguments(__doc__, epochs=3, batch_size=64, lr=1e-3,
                       extra={"--samples": {"type": int, "default": 2000, "help": "size of the generated set"}})
if args.data_dir:
    train, test = (TensorDataset(*load_cifar10(args.data_dir, split)) for split in ("train", "test"))
    scale = [T.ToFloat(), T.Normalize(MEAN, STD)]
else:
    train, test = random_split(TensorDataset(*make_images(args.samples, seed=args.seed)), [0.8, 0.2], seed=0)
    scale = []
model = nn.Sequential(
    nn.Conv2d(3, 32, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.25),
    nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.25),
    nn.Flatten(), nn.Linear(64 * 6 * 6, 128), nn.ReLU(), nn.Dropout(0.5), nn.Linear(128, 10),
)
trainer = dl.Trainer(model, optim.Adam(model.parameters(), lr=args.lr), loss=nn.CrossEntropyLoss(),
                     metrics=["accuracy"])
augment = T.Compose(scale + [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()])
evaluation = T.Compose(scale) if scale else None
trainer.fit(train, epochs=args.epochs, batch_size=args.batch_size, validation_data=test, transform=augment,
            validation_transform=evaluation, seed=args.seed)
test_figures = trainer.evaluate(test, transform=evaluation)
report(f"final test accuracy: {test_figures['accuracy']:.4f} ({comm.size} workers)")
dl.shutdown()
