"""Matrix products as chains of fused multiply-adds, emulated exactly in element-wise numpy (no BLAS).

Why: numpy's ``@``/``dot`` go through OpenBLAS, which picks a kernel per CPU. The AVX2 and AVX-512
kernels (Haswell, SkylakeX, Cooperlake) sum a product with fused multiply-adds, the SSE3 one (Prescott)
without, so the last bits of a pose, and the bytes written from it, depended on the machine. The
synthetic writers' reference outputs (``manifests/``) were made on AVX2/AVX-512 machines; computing
every product here as the same FMA chain, in software, reproduces those bits on any CPU.

``fma(a, b, c)`` is ``a * b + c`` rounded once (round to nearest even), computed from error-free
transformations (Boldo and Melquiond, "Emulation of FMA and correctly rounded sums: proved algorithms
using rounding to odd", IEEE Trans. Computers 57(4), 2008):

    a * b = uh + ul exactly (Dekker's product), c + uh = th + tl exactly (Knuth's two-sum),
    fma = RN(th + RO(tl + ul)), RO = rounding to odd.

Valid while no product underflows or overflows (a * b is exactly 0 or |a * b| in [2**-960, 2**990]); ``fma`` checks.
The orders of the products (``matmul_fused``, ``matvec_fused``) are those of the OpenBLAS kernels above.
"""

from __future__ import annotations

import numpy as np

_SPLITTER = 134217729.0  # 2**27 + 1: Veltkamp's split of a double into two 26-bit halves
_TINY, _HUGE = 2.0**-960, 2.0**990


def _split(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(high, low) with high + low == x exactly, each with at most 26 significant bits."""
    scaled = _SPLITTER * x
    high = scaled - (scaled - x)
    return high, x - high


def two_product(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(RN(a * b), error) with RN(a * b) + error == a * b exactly (Dekker)."""
    product = a * b
    a_high, a_low = _split(a)
    b_high, b_low = _split(b)
    error = ((a_high * b_high - product) + a_high * b_low + a_low * b_high) + a_low * b_low
    return product, error


def two_sum(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(RN(a + b), error) with RN(a + b) + error == a + b exactly (Knuth)."""
    total = a + b
    b_virtual = total - a
    a_virtual = total - b_virtual
    return total, (a - a_virtual) + (b - b_virtual)


def _round_to_odd_sum(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a + b rounded to odd: exact if representable, else the neighbour of the two with an odd significand."""
    total, error = two_sum(a, b)
    even = (total.view(np.int64) & 1) == 0
    inexact = error != 0.0
    towards = np.where(error > 0.0, np.inf, -np.inf)
    return np.where(inexact & even, np.nextafter(total, towards), total)


def fma(a, b, c) -> np.ndarray:
    """RN(a * b + c) element-wise (arrays broadcast), bit-exact as a hardware fused multiply-add."""
    a, b, c = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (a, b, c)))
    product_high, product_low = two_product(a, b)
    magnitude = np.abs(product_high)
    exact_zero = (a == 0.0) | (b == 0.0)
    if not np.all(np.where(magnitude == 0.0, exact_zero, (magnitude >= _TINY) & (magnitude <= _HUGE))):
        raise ValueError("fma: a product outside [2**-960, 2**990] (underflow/overflow) cannot be emulated")
    sum_high, sum_low = two_sum(c, product_high)
    fused = sum_high + _round_to_odd_sum(sum_low, product_low)
    return np.where(magnitude == 0.0, c + product_high, fused)  # exact product 0: the signed zero of c + 0


def fma_chain(pairs: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """``acc = 0; acc = fma(a, b, acc)`` for each (a, b) in order; an exact zero comes out as +0.0."""
    if not pairs:
        raise ValueError("fma_chain: needs at least one product")
    acc = np.asarray(pairs[0][0], dtype=np.float64) * np.asarray(pairs[0][1], dtype=np.float64)
    for a, b in pairs[1:]:
        acc = fma(a, b, acc)
    return acc + 0.0  # -0.0 -> +0.0, as the BLAS kernels that accumulate onto a zeroed register


def matmul_fused(*matrices) -> np.ndarray:
    """A @ B @ ... (left to right) of 2-D arrays, each entry an FMA chain over k = 0, 1, ... (dgemm's order)."""
    if not matrices:
        raise ValueError("matmul_fused: needs at least one matrix")
    out = np.asarray(matrices[0], dtype=np.float64)
    for matrix in matrices[1:]:
        right = np.asarray(matrix, dtype=np.float64)
        if out.ndim != 2 or right.ndim != 2 or out.shape[1] != right.shape[0]:
            raise ValueError(f"matmul_fused: cannot multiply {out.shape} by {right.shape}")
        pairs = [(out[:, k, None], right[None, k, :]) for k in range(out.shape[1])]
        out = fma_chain(pairs)
    return out


def rotate_fused(rotation, vectors) -> np.ndarray:
    """(..., 3) ``vectors @ rotation.T``: rotation (3, 3) applied to each row, as dgemm sums it."""
    r = np.asarray(rotation, dtype=np.float64)
    v = np.asarray(vectors, dtype=np.float64)
    if r.shape != (3, 3) or v.shape[-1:] != (3,):
        raise ValueError(f"rotate_fused: rotation (3, 3) and vectors (..., 3) expected, got {r.shape}, {v.shape}")
    columns = [fma_chain([(v[..., k], r[i, k]) for k in range(3)]) for i in range(3)]
    return np.stack(columns, axis=-1)


def matvec_fused(matrix, vector) -> np.ndarray:
    """(3,) ``matrix @ vector`` for a (3, 3) matrix, in dgemv_t's order for three columns: k = 1, 0, 2."""
    m = np.asarray(matrix, dtype=np.float64)
    x = np.asarray(vector, dtype=np.float64)
    if m.shape != (3, 3) or x.shape != (3,):
        raise ValueError(f"matvec_fused: (3, 3) @ (3,) expected, got {m.shape} @ {x.shape}")
    return fma_chain([(m[:, k], x[k]) for k in (1, 0, 2)])


def norm_sequential(vector) -> float:
    """Euclidean norm of a short 1-D vector: sqrt of the squares summed left to right, unfused (ddot's order)."""
    total = 0.0
    for value in np.asarray(vector, dtype=np.float64).ravel().tolist():
        total += value * value
    return float(np.sqrt(total))


def transform_fused(target_from_source, points) -> np.ndarray:
    """(..., 3) points moved by a (4, 4) transform: ``rotate_fused`` plus the translation (one rounding)."""
    t = np.asarray(target_from_source, dtype=np.float64)
    return rotate_fused(t[:3, :3], points) + t[:3, 3]
