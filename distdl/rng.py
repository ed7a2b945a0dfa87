"""Counter-based random numbers: SplitMix64 evaluated on an array of counters, on NumPy or CuPy alike.

Value ``k`` of the stream of seed ``s`` is SplitMix64's ``k``-th output for ``s``
(Steele, Lea and Flood, 2014): a hash of ``s + (k + 1) * GAMMA``, computed
elementwise on uint64 arrays with wrapping arithmetic. So a draw is one vectorised
hash of a range of counters, with three consequences that a stateful generator
lacks: NumPy and CuPy produce the same bits for the same (seed, counter); the whole
state is two integers, saved as JSON in a checkpoint, so a resumed run draws exactly
what the uninterrupted one would have; and a draw only reserves its range of counters
under a lock, so threads never corrupt the stream.

Draws of 32-bit words take both halves of each output, low half first (the
little-endian order of x86, ARM and GPUs alike).
"""

import math
import secrets
import threading

import numpy as np

NAME = "splitmix64"
MASK = (1 << 64) - 1
GAMMA = 0x9E3779B97F4A7C15
_M1, _M2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def mix_int(z):
    """One SplitMix64 step from state ``z`` (a Python int): the output after adding GAMMA."""
    z = (z + GAMMA) & MASK
    z = ((z ^ (z >> 30)) * _M1) & MASK
    z = ((z ^ (z >> 27)) * _M2) & MASK
    return z ^ (z >> 31)


def mix_array(z):
    """``mix_int`` on every element of the uint64 array ``z`` of NumPy or CuPy, in place (the caller owns ``z``)."""
    z += np.uint64(GAMMA)
    z ^= z >> np.uint64(30)
    z *= np.uint64(_M1)
    z ^= z >> np.uint64(27)
    z *= np.uint64(_M2)
    z ^= z >> np.uint64(31)
    return z


def outputs(seed, start, count, xp=np):
    """SplitMix64's outputs ``start`` to ``start + count - 1`` for ``seed``, as a uint64 array of ``xp``."""
    z = xp.arange(count, dtype=xp.uint64)
    z *= np.uint64(GAMMA)
    z += np.uint64((seed + start * GAMMA) & MASK)
    return mix_array(z)


def check_state(state):
    """Raise ValueError saying what is wrong unless ``state`` is a state that ``Generator.state()`` returns."""
    if not isinstance(state, dict) or set(state) != {"generator", "seed", "counter"}:
        raise ValueError(f"an RNG state is {{'generator', 'seed', 'counter'}}, got {state!r:.200}")
    if state["generator"] != NAME:
        raise ValueError(f"an RNG state of generator {state['generator']!r:.100}; distdl's is {NAME!r}")
    for name in ("seed", "counter"):
        value = state[name]
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MASK:
            raise ValueError(f"an RNG state's {name} must be a whole number in [0, 2**64), got {value!r:.100}")


class Generator:
    """A stream of random numbers whose position is (seed, counter); ``xp`` picks where the numbers are made."""

    def __init__(self, seed=None):
        self.seed = secrets.randbits(64) if seed is None else int(seed) & MASK
        self.counter = 0
        self._lock = threading.Lock()

    def state(self):
        """The position as plain JSON data: the draws after ``set_state`` of it repeat the draws after this call."""
        with self._lock:
            return {"generator": NAME, "seed": self.seed, "counter": self.counter}

    def set_state(self, state):
        check_state(state)
        with self._lock:
            self.seed, self.counter = state["seed"], state["counter"]

    def bits(self, count, xp=np):
        """The next ``count`` 64-bit outputs."""
        with self._lock:
            start = self.counter
            self.counter = (start + count) & MASK
        return outputs(self.seed, start, count, xp)

    def words(self, count, xp=np):
        """The next ``count`` 32-bit words (two per output; an odd count leaves the last high half unused)."""
        return self.bits((count + 1) // 2, xp).view(xp.uint32)[:count]

    def uniform(self, shape, dtype=np.float64, xp=np):
        """Uniform [0, 1): float32 from 24 bits of a word, float64 from 53 bits of an output."""
        count, dtype = math.prod(shape), np.dtype(dtype)
        if dtype == np.float32:
            values = (self.words(count, xp) >> np.uint32(8)).astype(np.float32) * np.float32(2.0 ** -24)
        elif dtype == np.float64:
            values = (self.bits(count, xp) >> np.uint64(11)).astype(np.float64) * 2.0 ** -53
        else:  # a cast from float64 could round up to 1.0 (float16) or promise bits it lacks
            raise ValueError(f"uniform draws float32 or float64, not {dtype}: draw one of them and cast")
        return values.reshape(shape)

    def normal(self, shape, dtype=np.float64, xp=np, scale=1.0):
        """Standard normal samples times ``scale`` (Box-Muller in float64 on pairs of uniforms)."""
        count = math.prod(shape)
        pairs = (count + 1) // 2
        u = (self.bits(2 * pairs, xp) >> np.uint64(11)).astype(np.float64) * 2.0 ** -53
        radius = xp.sqrt(-2.0 * xp.log1p(-u[:pairs])) * scale  # 1 - u lies in (0, 1]: the log is finite
        angle = (2 * math.pi) * u[pairs:]
        values = xp.concatenate([radius * xp.cos(angle), radius * xp.sin(angle)])[:count]
        return values.astype(dtype, copy=False).reshape(shape)

    def keep(self, shape, p, xp=np):
        """A boolean array, True where ``uniform(shape, float32)`` would be >= ``p`` (dropout's kept entries).

        Compared on the integer words, without making the floats: the float32 uniform
        of a word ``w`` is ``(w >> 8) * 2**-24``, which is >= p exactly when ``w >= ceil(p * 2**24) << 8``.
        """
        words = self.words(math.prod(shape), xp)
        threshold = math.ceil(p * 2 ** 24)
        if threshold >= 2 ** 24:  # p above the largest uniform: nothing is kept (the words were still drawn)
            return xp.zeros(shape, dtype=bool)
        return (words >= np.uint32(threshold << 8)).reshape(shape)
