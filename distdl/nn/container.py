"""Containers: Sequential runs its modules in order; ModuleList holds modules for a custom forward."""

from distdl.nn.activation import ReLU
from distdl.nn.conv import MaxPool2d
from distdl.nn.module import Module


class ModuleList(Module):
    """A list of modules, registered under the names "0", "1", ..."""

    def __init__(self, modules=None):
        super().__init__()
        for module in modules or ():
            self.append(module)

    def append(self, module):
        setattr(self, str(len(self._modules)), module)
        return self

    def extend(self, modules):
        for module in modules:
            self.append(module)
        return self

    def __getitem__(self, index):
        modules = list(self._modules.values())
        if isinstance(index, slice):
            return type(self)(modules[index])
        return modules[index]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())


class Sequential(ModuleList):
    """Feed the input through each module in turn."""

    def __init__(self, *modules):
        super().__init__(modules)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return Sequential(*list(self._modules.values())[index])
        return super().__getitem__(index)

    def forward(self, input):
        """Each module in turn, except that a ReLU followed by a MaxPool2d runs pool first.

        Max and ReLU commute (both are monotonic), with the same values and gradients, and
        pooling first leaves ReLU a quarter of the pixels and the pool fewer ties to break.
        """
        held = None  # a ReLU waiting to see whether a MaxPool2d follows it
        for module in self._modules.values():
            if held is not None:
                if type(module) is MaxPool2d:
                    input, held = held(module(input)), None
                    continue
                input, held = held(input), None
            if type(module) is ReLU:
                held = module
            else:
                input = module(input)
        return input if held is None else held(input)
