"""The error function, vectorised, to float64 precision (NumPy has none; SciPy is not a dependency)."""

import math

from distdl.backend import xp_of

_SERIES_LIMIT = 2.5  # below: Taylor series (40 terms); above: continued fraction for erfc
_SERIES_TERMS = 40
_FRACTION_DEPTH = 60


def erf(x):
    xp = xp_of(x)
    work = x.astype(xp.float64)
    a = xp.abs(work)
    out = xp.empty_like(work)
    small = a < _SERIES_LIMIT
    s = a[small]
    if s.size:
        x2 = s * s
        term, total = s.copy(), s.copy()
        for n in range(1, _SERIES_TERMS):
            term *= -x2 / n
            total += term / (2 * n + 1)
        out[small] = total * (2 / math.sqrt(math.pi))
    large = ~small
    z = a[large]
    if z.size:
        # erfc(z) = exp(-z^2)/sqrt(pi) / (z + (1/2)/(z + 1/(z + (3/2)/(z + ...)))), from the tail
        frac = z.copy()
        for k in range(_FRACTION_DEPTH, 0, -1):
            frac = z + (k / 2) / frac
        out[large] = 1 - xp.exp(-z * z) / (math.sqrt(math.pi) * frac)
    return (xp.sign(work) * out).astype(x.dtype, copy=False)
