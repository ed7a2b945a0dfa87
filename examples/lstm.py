"""Three stacked LSTM layers of 50 units and a sigmoid output, binary cross-entropy, Adam, on a generated
recall task that needs memory: a marker flags one step in the first half of each sequence, and the label says
whether the value at that step was positive (make_sequences).

    distdl-run -n 2 examples/lstm.py
"""

import distdl as dl
from common import arguments, report
from distdl import nn, optim
from distdl.data import TensorDataset, make_sequences, random_split

args, comm = arguments(__doc__, epochs=12, batch_size=32, lr=0.01, data_dir=False,
                       extra={"--samples": {"type": int, "default": 2000},
                              "--seq-len": {"type": int, "default": 10}})


class Recall(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(2, 50, num_layers=3, batch_first=True)
        self.head = nn.Sequential(nn.Linear(50, 1), nn.Sigmoid())

    def forward(self, x):
        return self.head(self.lstm(x)[0][:, -1])


train, test = random_split(TensorDataset(*make_sequences(args.samples, args.seq_len, seed=args.seed)), [0.8, 0.2],
                           seed=0)
model = Recall()
trainer = dl.Trainer(model, optim.Adam(model.parameters(), lr=args.lr), loss=nn.BCELoss(), metrics=["accuracy"])
trainer.fit(train, epochs=args.epochs, batch_size=args.batch_size, validation_data=test, seed=args.seed)
report(f"final test accuracy: {trainer.evaluate(test)['accuracy']:.4f} (chance 0.5; {comm.size} workers)")
dl.shutdown()
