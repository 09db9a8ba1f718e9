"""exp, log, power and tanh that give the same bits on every machine, for the corpus synthesisers.

numpy picks its float64 ``exp``, ``log``, ``power`` and ``tanh`` loops at run time by CPU: on a
machine with AVX-512 they come from SIMD code (SVML) whose last bit differs from the libm path of an
AVX2 machine (checked with ``NPY_DISABLE_CPU_FEATURES``). A last-bit difference in a frequency sweep
grows through the phase sum into audible-sample differences, so the same seed wrote other bytes on
another machine. These versions use only operations IEEE 754 rounds exactly (+, -, *, /, rint,
frexp, ldexp), one ufunc call at a time, so the rounding is the same everywhere. They are about as
accurate as libm (a few ulp), which is far below anything audible.
"""

from __future__ import annotations

import math

import numpy as np

_LN2_HI = 6.93147180369123816490e-01  # ln 2 split in two (fdlibm): k * _LN2_HI is exact for |k| < 2**20
_LN2_LO = 1.90821492927058770002e-10
_INV_LN2 = 1.44269504088896338700e00
_LN10 = 2.30258509299404568402e00
_SQRT_HALF = 0.70710678118654752440
_EXP_TERMS = tuple(1.0 / math.factorial(n) for n in range(13, 0, -1))  # 1/13! ... 1/1! (Horner order)
_LOG_TERMS = tuple(1.0 / (2 * j + 1) for j in range(11, -1, -1))  # 1/23 ... 1/1


def exp(x: np.ndarray | float) -> np.ndarray:
    """e**x: x = k ln 2 + r with |r| <= ln(2)/2, a degree-13 Taylor polynomial for e**r, times 2**k."""
    x = np.clip(np.asarray(x, dtype=np.float64), -760.0, 709.0)  # below -745: 0
    k = np.rint(x * _INV_LN2)
    r = (x - k * _LN2_HI) - k * _LN2_LO
    p = np.full_like(r, _EXP_TERMS[0])
    for coefficient in _EXP_TERMS[1:]:
        p = p * r + coefficient
    p = p * r + 1.0
    return np.ldexp(p, k.astype(np.int32))


def log(x: np.ndarray | float) -> np.ndarray:
    """Natural log of x > 0: x = m 2**e with m in [sqrt(1/2), sqrt(2)), log m = 2 atanh((m-1)/(m+1))."""
    x = np.asarray(x, dtype=np.float64)
    if np.any(x <= 0) or not np.all(np.isfinite(x)):
        raise ValueError("portable.log: needs finite values > 0")
    m, e = np.frexp(x)
    low = m < _SQRT_HALF
    m = np.where(low, m * 2.0, m)
    e = (e - low).astype(np.float64)
    s = (m - 1.0) / (m + 1.0)
    s2 = s * s
    p = np.full_like(s, _LOG_TERMS[0])
    for coefficient in _LOG_TERMS[1:]:
        p = p * s2 + coefficient
    return e * _LN2_HI + (e * _LN2_LO + 2.0 * s * p)


def power(base: np.ndarray | float, exponent: np.ndarray | float) -> np.ndarray:
    """base**exponent for base > 0."""
    return exp(np.asarray(exponent, dtype=np.float64) * log(base))


def int_power(x: np.ndarray | float, n: int) -> np.ndarray:
    """x**n for a whole n >= 1, by repeated squaring (numpy's ``**`` calls pow for n > 2)."""
    if n < 1:
        raise ValueError(f"portable.int_power: n must be >= 1, got {n}")
    x = np.asarray(x, dtype=np.float64)
    result = None
    while n:
        if n & 1:
            result = x if result is None else result * x
        n >>= 1
        if n:
            x = x * x
    return result


def tanh(x: np.ndarray | float) -> np.ndarray:
    """tanh x = (1 - e**(-2|x|)) / (1 + e**(-2|x|)), with the sign of x."""
    x = np.asarray(x, dtype=np.float64)
    q = exp(-2.0 * np.abs(x))
    return np.copysign((1.0 - q) / (1.0 + q), x)


def db_to_gain(db: float) -> float:
    """10**(db/20) as a Python float."""
    return float(exp(db * (_LN10 / 20.0)))
