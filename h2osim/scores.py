"""Score transforms shared by the policies and the theory package.

The paper's Appendix D writes H2O's objective as f(S) = h(sum over S of accumulated
attention) with h non-decreasing and concave; the released code uses h = identity. The
``h2o-sqrt`` / ``h2o-log`` policies and :mod:`theory.functions` both read h from here.
"""

from __future__ import annotations

import numpy as np

CONCAVE = ("identity", "sqrt", "log")  # the h the project knows: z, sqrt(z + 1), log(z + 1)


def concave(name: str, z: np.ndarray) -> np.ndarray:
    """h(z) for h in CONCAVE: identity z, sqrt(z + 1), log(z + 1). Example: sqrt at 3 -> 2."""
    if name == "identity":
        return np.asarray(z, dtype=np.float64)
    if name == "sqrt":
        return np.sqrt(np.asarray(z, dtype=np.float64) + 1.0)
    if name == "log":
        return np.log1p(np.asarray(z, dtype=np.float64))
    raise ValueError(f"concave function must be one of {CONCAVE}, got {name!r}")


def concave_slope(name: str) -> float:
    """sup h' on z >= 0 (a Lipschitz constant): identity 1, sqrt(z+1) 1/2, log(z+1) 1."""
    if name not in CONCAVE:
        raise ValueError(f"concave function must be one of {CONCAVE}, got {name!r}")
    return {"identity": 1.0, "sqrt": 0.5, "log": 1.0}[name]
