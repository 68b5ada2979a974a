"""The memory bank's equations, as the GMem paper writes them (CONTRACT.md section 2).

The bank ``M`` (N x d) of unit-norm snippets is kept factorised::

    mu = mean(M),   M - mu ~= U_r S_r V_r^T,   C = U_r S_r^(1/2),   B = V_r S_r^(1/2)

so that ``B^T B = diag(S)`` and snippet i is ``normalize(C[i] B^T + mu)``.

numpy only: the bank service imports this without torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from shared.errors import DimensionMismatch, InvalidInput, NonFiniteValue, ZeroVector

InterpolationMethod = Literal["linear", "slerp"]

# Below this norm a vector has no direction we can trust in float32.
_EPS = 1e-12
_SNIPPET_CHUNK = 4096


def check_finite(x: np.ndarray, what: str) -> None:
    """Raise NonFiniteValue when ``x`` holds NaN or infinite values."""
    if not np.all(np.isfinite(x)):
        raise NonFiniteValue(f"{what} contains NaN or infinite values; every entry must be a finite number")


def as_vectors(
    x: np.ndarray | list[float] | list[list[float]], dim: int, what: str = "feature"
) -> np.ndarray:
    """Validate a vector or a batch of vectors of width ``dim``; returns float64 [k, dim]."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise DimensionMismatch(
            f"{what} has shape {tuple(np.shape(x))}; expected length {dim} (the bank's feature_dim)"
        )
    check_finite(arr, what)
    return arr


def normalize(x: np.ndarray, what: str = "feature") -> np.ndarray:
    """L2-normalise the rows of ``x`` (``s = f / |f|``); a zero row raises ZeroVector."""
    x = np.asarray(x)
    # Divide by the largest entry first so huge but finite vectors do not overflow the norm.
    peak = np.max(np.abs(x), axis=-1, keepdims=True)
    if np.any(peak <= _EPS):
        raise ZeroVector(f"{what} has zero length and cannot be L2-normalised; send a non-zero vector")
    scaled = x / peak
    out: np.ndarray = scaled / np.linalg.norm(scaled, axis=-1, keepdims=True)
    return out


def reconstruct(C_rows: np.ndarray, B: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """Unnormalised reconstruction ``C[i] B^T + mu`` of coefficient rows (float64 [k, d]).

    Row by row on purpose: a batched matmul picks BLAS kernels (and so rounding) by
    batch size, which made snippet i differ in its last bits depending on which other
    ids were retrieved with it. One matrix-vector product per row gives every row the
    same bits in any batch, so a retrieval batched with others equals a single one.
    """
    # Inputs rounded to float32 first, as the bank stores them, so a coefficient vector gives the same
    # snippet whether it comes from /bank/project (float64) or back from storage (float32).
    C64 = np.asarray(C_rows, dtype=np.float32).astype(np.float64).reshape(-1, np.shape(B)[1])
    B64 = np.asarray(B, dtype=np.float32).astype(np.float64)
    out = np.empty((C64.shape[0], B64.shape[0]), dtype=np.float64)
    for i in range(C64.shape[0]):
        np.matmul(B64, C64[i], out=out[i])
    out += np.asarray(mu, dtype=np.float32)
    return out


def snippets_from_coefficients(C_rows: np.ndarray, B: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """Snippets ``normalize(C[i] B^T + mu)`` as float32 unit rows, identical for an id in any batch."""
    C_rows = np.asarray(C_rows).reshape(-1, np.shape(B)[1])
    out = np.empty((C_rows.shape[0], np.shape(B)[0]), dtype=np.float32)
    # In chunks so a whole bank (training) needs no N x d float64 temporary; rows are independent.
    for lo in range(0, C_rows.shape[0], _SNIPPET_CHUNK):
        part = reconstruct(C_rows[lo : lo + _SNIPPET_CHUNK], B, mu)
        out[lo : lo + _SNIPPET_CHUNK] = normalize(part, what="reconstructed snippet")
    return out


@dataclass(frozen=True)
class Projection:
    """Result of eq. 10: coefficients in the bank's basis and the relative residual."""

    coefficients: np.ndarray  # [k, r] float64
    residual: np.ndarray  # [k] float64, |(g - mu) - c B^T| / |g - mu|


def project(
    f: np.ndarray, mu: np.ndarray, B: np.ndarray, S: np.ndarray, normalized: bool = True
) -> Projection:
    """Eq. 10: ``g = f/|f|``, ``c = (g - mu) B / S``; ``c B^T + mu`` is the orthogonal projection of g.

    ``normalized=False`` (a bank of raw features) uses ``g = f``. Accepts one
    vector or a batch; the residual is 0 when g lies in the bank's affine subspace.
    """
    mu64 = np.asarray(mu, dtype=np.float64)
    B64 = np.asarray(B, dtype=np.float64)
    S64 = np.asarray(S, dtype=np.float64)
    g = as_vectors(f, B64.shape[0])
    if normalized:
        g = normalize(g)
    centred = g - mu64
    c = (centred @ B64) / S64
    err = np.linalg.norm(centred - c @ B64.T, axis=1)
    scale = np.linalg.norm(centred, axis=1)
    # A g equal to mu is trivially inside the subspace.
    residual = np.where(scale > _EPS, err / np.maximum(scale, _EPS), 0.0)
    return Projection(coefficients=c, residual=residual)


def _check_alpha(alpha: float) -> float:
    if not (isinstance(alpha, int | float) and math.isfinite(alpha) and 0.0 <= alpha <= 1.0):
        raise InvalidInput(f"alpha must be a number in [0, 1] (alpha = 1 gives snippet i); got {alpha!r}")
    return float(alpha)


def interpolate(
    c_i: np.ndarray,
    c_j: np.ndarray,
    alpha: float,
    method: InterpolationMethod = "linear",
    *,
    mu: np.ndarray | None = None,
    B: np.ndarray | None = None,
    S: np.ndarray | None = None,
    normalized: bool = True,
) -> np.ndarray:
    """Eq. 11: ``c = alpha * C[i] + (1 - alpha) * C[j]``; ``alpha = 1`` gives snippet i.

    ``slerp`` interpolates the unit snippets ``s_i``, ``s_j`` on the sphere instead
    (weight ``alpha`` on ``s_i``) and returns the eq. 10 projection of the result, so
    it needs the bank's ``mu``, ``B`` and ``S``. Interpolating the coefficients
    spherically would not do: S stretches the coefficient space, so angles there are
    not the angles between snippets. Both methods return the endpoints exactly.
    """
    alpha = _check_alpha(alpha)
    a = np.asarray(c_i, dtype=np.float64)
    b = np.asarray(c_j, dtype=np.float64)
    if a.shape != b.shape:
        raise DimensionMismatch(f"coefficient vectors differ in shape: {a.shape} vs {b.shape}")
    if method not in ("linear", "slerp"):
        raise InvalidInput(f"unknown interpolation method {method!r}; use 'linear' or 'slerp'")
    # The endpoints exactly, not up to round-off (a projection of s_i is not bit-equal to c_i),
    # since the contract promises that alpha = 1 gives snippet i.
    if alpha == 1.0:
        return a.copy()
    if alpha == 0.0:
        return b.copy()
    if method == "linear":
        return alpha * a + (1.0 - alpha) * b
    if mu is None or B is None or S is None:
        raise InvalidInput("slerp needs the bank's mu, B and S to turn coefficients into snippets and back")
    s_i, s_j = (normalize(reconstruct(c, B, mu), what="snippet")[0] for c in (a, b))
    coefficients: np.ndarray = project(slerp(s_i, s_j, alpha), mu, B, S, normalized).coefficients[0]
    return coefficients


def slerp(s_i: np.ndarray, s_j: np.ndarray, alpha: float) -> np.ndarray:
    """The unit vector a fraction ``1 - alpha`` of the way along the great circle from s_i to s_j."""
    alpha = _check_alpha(alpha)
    theta = math.acos(min(1.0, max(-1.0, float(s_i @ s_j))))
    if math.sin(theta) < 1e-6:
        if theta < 1.0:
            # (Nearly) the same direction: the arc has no length, the chord is as good.
            return normalize(alpha * s_i + (1.0 - alpha) * s_j, what="interpolated snippet")
        raise InvalidInput(
            "the two snippets point in opposite directions, so no unique great circle joins "
            "them; use method 'linear' or pick another pair"
        )
    mixed = (math.sin(alpha * theta) * s_i + math.sin((1.0 - alpha) * theta) * s_j) / math.sin(theta)
    return mixed / np.linalg.norm(mixed)


def std_normal_cdf(x: float) -> float:
    """Phi(x), the standard normal CDF, in float64."""
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def noise_statistic(z: np.ndarray) -> float:
    """``zeta = sum(z) / sqrt(numel(z))`` in float64: N(0, 1) when z has iid N(0, 1) entries."""
    z64 = np.asarray(z, dtype=np.float64)
    if z64.size == 0:
        raise InvalidInput("noise tensor z is empty")
    check_finite(z64, "noise tensor z")
    with np.errstate(over="ignore"):
        zeta = float(z64.sum() / math.sqrt(z64.size))
    if not math.isfinite(zeta):
        raise NonFiniteValue("noise tensor z sums to an infinite value; z must hold N(0, 1) draws")
    return zeta


def cdf_index(z: np.ndarray, n: int) -> int:
    """Paper sec. 4.3: ``index = min(floor(Phi(zeta) * n), n - 1)`` into a pool of n snippets.

    Because zeta ~ N(0, 1), ``Phi(zeta)`` is uniform on [0, 1] and so is the index:
    the noise alone decides which snippet the image is drawn from.
    """
    return index_of_statistic(noise_statistic(z), n)


def index_of_statistic(zeta: float, n: int) -> int:
    """``min(floor(Phi(zeta) * n), n - 1)``: ``cdf_index`` once ``zeta`` is known."""
    if n < 1:
        raise InvalidInput("cannot index an empty pool")
    u = std_normal_cdf(zeta)
    return min(int(math.floor(u * n)), n - 1)


def search_rows(C: np.ndarray, S: np.ndarray) -> np.ndarray:
    """Rows ``C * S^(1/2)``: Euclidean distances between them equal those between reconstructions.

    ``|C_i B^T - C_j B^T|^2 = (C_i - C_j) B^T B (C_i - C_j)^T = |(C_i - C_j) S^(1/2)|^2``.
    """
    return (np.asarray(C, dtype=np.float32) * np.sqrt(np.asarray(S, dtype=np.float32))).astype(np.float32)
