"""Property tests of shared/bankmath.py against the paper's definitions (CONTRACT.md section 2)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from shared import bankmath
from shared.errors import DimensionMismatch, InvalidInput, NonFiniteValue, ZeroVector

PROPS = settings(max_examples=40, deadline=None)


def svd_factors(M: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """mu, B, S, C exactly as the contract defines them, from numpy's SVD (float64)."""
    mu = M.mean(axis=0)
    U, S, Vt = np.linalg.svd(M - mu, full_matrices=False)
    root = np.sqrt(S[:r])
    return mu, Vt[:r].T * root, S[:r], U[:, :r] * root


@st.composite
def banks(draw, normalized: bool = True):
    """A random bank M (N x d) with unit rows, and a rank r <= min(N - 1, d)."""
    n = draw(st.integers(3, 40))
    d = draw(st.integers(2, 24))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    M = rng.standard_normal((n, d)) * rng.uniform(0.1, 3.0, size=d)
    if normalized:
        M /= np.linalg.norm(M, axis=1, keepdims=True)
    r = draw(st.integers(1, min(n - 1, d)))
    return M, r


@PROPS
@given(banks())
def test_reconstruction_is_the_best_rank_r_approximation(bank):
    M, r = bank
    mu, B, S, C = svd_factors(M, r)
    recon = bankmath.reconstruct(C, B, mu).astype(np.float64)
    # Eckart-Young: the error of the best rank-r approximation of M - mu is the discarded energy.
    all_S = np.linalg.svd(M - mu, compute_uv=False)
    best_err = math.sqrt(float(np.sum(all_S[r:] ** 2)))
    assert np.linalg.norm(recon - M) == pytest.approx(best_err, abs=1e-4 * max(1.0, np.linalg.norm(M)))
    # ...and no other rank-r affine approximation through mu does better: compare with a random one.
    rng = np.random.default_rng(r)
    Q, _ = np.linalg.qr(rng.standard_normal((M.shape[1], r)))
    other = (M - mu) @ Q @ Q.T + mu
    assert np.linalg.norm(recon - M) <= np.linalg.norm(other - M) + 1e-4


@PROPS
@given(banks())
def test_basis_gram_is_diag_S(bank):
    M, r = bank
    _, B, S, _ = svd_factors(M, r)
    np.testing.assert_allclose(B.T @ B, np.diag(S), atol=1e-9 * max(1.0, S[0]))


@PROPS
@given(banks())
def test_snippets_are_unit_rows_of_the_reconstruction(bank):
    M, r = bank
    mu, B, _, C = svd_factors(M, r)
    s = bankmath.snippets_from_coefficients(C, B, mu)
    assert s.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(s, axis=1), 1.0, atol=1e-5)
    recon = C @ B.T + mu
    np.testing.assert_allclose(s, recon / np.linalg.norm(recon, axis=1, keepdims=True), atol=1e-4)


@PROPS
@given(banks(), st.data())
def test_a_snippet_has_the_same_bits_in_any_batch(bank, data):
    # Regression: a batched float32 matmul rounded row i differently depending on the batch size, so
    # the same id gave different snippets (and so different generated images) when batched with others.
    M, r = bank
    mu, B, S, C = (x.astype(np.float32) for x in svd_factors(M, r))
    ids = data.draw(st.lists(st.integers(0, C.shape[0] - 1), min_size=1, max_size=20))
    batch = bankmath.snippets_from_coefficients(C[ids], B, mu)
    for row, i in zip(batch, ids, strict=True):
        np.testing.assert_array_equal(row, bankmath.snippets_from_coefficients(C[[i]], B, mu)[0])


def test_a_snippet_has_the_same_bits_in_a_large_batch():
    rng = np.random.default_rng(0)
    d, r = 128, 32
    B, mu = rng.standard_normal((d, r)).astype(np.float32), rng.standard_normal(d).astype(np.float32)
    C = rng.standard_normal((257, r)).astype(np.float32)
    batch = bankmath.snippets_from_coefficients(C, B, mu)
    for i in (0, 1, 100, 256):
        np.testing.assert_array_equal(batch[i], bankmath.snippets_from_coefficients(C[[i]], B, mu)[0])


@PROPS
@given(banks(normalized=False), st.data())
def test_projecting_a_rows_reconstruction_returns_its_coefficients(bank, data):
    M, r = bank
    mu, B, S, C = svd_factors(M, r)
    i = data.draw(st.integers(0, M.shape[0] - 1))
    recon = C[i] @ B.T + mu
    proj = bankmath.project(recon, mu, B, S, normalized=False)
    np.testing.assert_allclose(proj.coefficients[0], C[i], atol=1e-6 * max(1.0, float(np.abs(C).max())))
    assert proj.residual[0] == pytest.approx(0.0, abs=1e-6)


@PROPS
@given(banks(), st.data())
def test_projection_is_orthogonal_and_normalises_first(bank, data):
    M, r = bank
    mu, B, S, _ = svd_factors(M, r)
    d = M.shape[1]
    f = np.asarray(data.draw(st.lists(st.floats(-5, 5), min_size=d, max_size=d)), dtype=np.float64)
    if np.linalg.norm(f) < 1e-3:
        f[0] = 1.0
    scale = data.draw(st.floats(0.1, 50.0))
    proj = bankmath.project(f * scale, mu, B, S, normalized=True)
    g = f / np.linalg.norm(f)
    same = bankmath.project(g, mu, B, S, normalized=False)
    np.testing.assert_allclose(proj.coefficients, same.coefficients, atol=1e-9)
    # The leftover (g - mu) - c B^T is orthogonal to every basis vector: c B^T + mu is the orthogonal
    # projection.
    leftover = (g - mu) - proj.coefficients[0] @ B.T
    np.testing.assert_allclose(leftover @ B, 0.0, atol=1e-8)
    expected = np.linalg.norm(leftover) / np.linalg.norm(g - mu)
    assert proj.residual[0] == pytest.approx(expected, abs=1e-9)
    assert 0.0 <= proj.residual[0] <= 1.0 + 1e-9


@PROPS
@given(banks(), st.data())
def test_search_rows_preserve_reconstruction_distances(bank, data):
    M, r = bank
    mu, B, S, C = svd_factors(M, r)
    i = data.draw(st.integers(0, M.shape[0] - 1))
    j = data.draw(st.integers(0, M.shape[0] - 1))
    rows = bankmath.search_rows(C, S).astype(np.float64)
    recon = C @ B.T + mu
    assert np.linalg.norm(rows[i] - rows[j]) == pytest.approx(np.linalg.norm(recon[i] - recon[j]), abs=1e-5)


coefficient = st.lists(st.floats(-10, 10), min_size=4, max_size=4).map(np.array)


def direct_slerp(u: np.ndarray, v: np.ndarray, alpha: float) -> np.ndarray:
    """Textbook slerp of unit vectors (Shoemake 1985), weight alpha on u."""
    theta = np.arccos(np.clip(u @ v, -1.0, 1.0))
    return (np.sin(alpha * theta) * u + np.sin((1 - alpha) * theta) * v) / np.sin(theta)


@PROPS
@given(banks(), st.sampled_from(["linear", "slerp"]), st.data())
def test_interpolation_endpoints(bank, method, data):
    M, r = bank
    mu, B, S, C = svd_factors(M, r)
    i, j = (data.draw(st.integers(0, M.shape[0] - 1)) for _ in range(2))
    # Bit-exact: "alpha = 1 gives snippet i" for slerp too (a projection alone is off by round-off).
    for alpha, want in ((1.0, C[i]), (0.0, C[j])):
        np.testing.assert_array_equal(bankmath.interpolate(C[i], C[j], alpha, method, mu=mu, B=B, S=S), want)


@PROPS
@given(coefficient, coefficient, st.floats(0.0, 1.0))
def test_linear_interpolation_is_eq_11(c_i, c_j, alpha):
    np.testing.assert_allclose(
        bankmath.interpolate(c_i, c_j, alpha), alpha * c_i + (1 - alpha) * c_j, atol=1e-9
    )


@PROPS
@given(banks(), st.floats(0.01, 0.99), st.data())
def test_slerp_is_the_eq_10_projection_of_the_slerp_of_unit_snippets(bank, alpha, data):
    M, r = bank
    mu, B, S, C = svd_factors(M, r)
    i, j = (data.draw(st.integers(0, M.shape[0] - 1)) for _ in range(2))
    s_i, s_j = (v / np.linalg.norm(v) for v in (C[i] @ B.T + mu, C[j] @ B.T + mu))
    cos = float(s_i @ s_j)
    if abs(cos) > 0.999:  # (anti)parallel snippets: no unique arc
        return
    want_s = direct_slerp(s_i, s_j, alpha)
    # The projection as least squares onto the basis, independently of bankmath.project.
    want_c = np.linalg.lstsq(B, want_s - mu, rcond=None)[0]
    got = bankmath.interpolate(C[i], C[j], alpha, "slerp", mu=mu, B=B, S=S)
    np.testing.assert_allclose(got, want_c, atol=1e-5 * max(1.0, float(np.abs(want_c).max())))


def test_slerp_in_a_full_rank_bank_gives_the_slerp_snippet():
    # With r = d nothing is lost by the projection, so the stored snippet is the spherical midpoint.
    rng = np.random.default_rng(3)
    M = rng.standard_normal((30, 6))
    M /= np.linalg.norm(M, axis=1, keepdims=True)
    mu, B, S, C = svd_factors(M, 6)
    c = bankmath.interpolate(C[0], C[1], 0.3, "slerp", mu=mu, B=B, S=S)
    snippet = bankmath.snippets_from_coefficients(c, B, mu)[0]
    np.testing.assert_allclose(snippet, direct_slerp(M[0], M[1], 0.3), atol=1e-6)
    # ...which coefficient-space slerp does not give: S distorts angles between coefficient vectors.
    linear = bankmath.snippets_from_coefficients(0.3 * C[0] + 0.7 * C[1], B, mu)[0]
    assert np.linalg.norm(linear - direct_slerp(M[0], M[1], 0.3)) > 1e-3


def test_slerp_halfway_between_orthogonal_unit_vectors():
    out = bankmath.slerp(np.array([1.0, 0.0]), np.array([0.0, 1.0]), 0.5)
    np.testing.assert_allclose(out, [math.sqrt(0.5), math.sqrt(0.5)], atol=1e-12)


def test_slerp_of_opposite_snippets_is_refused():
    with pytest.raises(InvalidInput, match="opposite"):
        bankmath.slerp(np.array([1.0, 0.0]), np.array([-1.0, 0.0]), 0.5)


def test_slerp_without_the_bank_factors_is_refused():
    with pytest.raises(InvalidInput, match="mu, B and S"):
        bankmath.interpolate(np.ones(2), np.zeros(2), 0.5, "slerp")


def test_cdf_indices_are_uniform_over_the_pool():
    rng = np.random.default_rng(7)
    n, draws = 10, 4000
    idx = np.array([bankmath.cdf_index(rng.standard_normal((4, 8, 8)), n) for _ in range(draws)])
    counts = np.bincount(idx, minlength=n)
    assert counts.shape == (n,)
    p_value = stats.chisquare(counts).pvalue
    assert p_value > 1e-3, (counts, p_value)


def test_cdf_index_is_not_uniform_for_shifted_noise():
    # The test above can fail: noise that is not N(0, 1) piles up at one end.
    rng = np.random.default_rng(8)
    idx = np.array([bankmath.cdf_index(rng.standard_normal((4, 8, 8)) + 0.2, 10) for _ in range(400)])
    assert stats.chisquare(np.bincount(idx, minlength=10)).pvalue < 1e-6


@PROPS
@given(st.integers(0, 2**32 - 1), st.integers(1, 10_000))
def test_cdf_index_is_deterministic_and_in_range(seed, n):
    z = np.random.default_rng(seed).standard_normal((3, 4, 4)).astype(np.float32)
    first = bankmath.cdf_index(z, n)
    assert 0 <= first < n
    assert bankmath.cdf_index(z.copy(), n) == first
    zeta = float(z.astype(np.float64).sum() / math.sqrt(z.size))
    assert first == min(math.floor(0.5 * math.erfc(-zeta / math.sqrt(2)) * n), n - 1)


def test_cdf_index_extremes_stay_in_the_pool():
    assert bankmath.cdf_index(np.full(16, 100.0), 7) == 6
    assert bankmath.cdf_index(np.full(16, -100.0), 7) == 0


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda: bankmath.as_vectors([1.0, 2.0], 3), DimensionMismatch),
        (lambda: bankmath.as_vectors(np.zeros((2, 2, 3)), 3), DimensionMismatch),
        (lambda: bankmath.as_vectors([1.0, float("nan"), 0.0], 3), NonFiniteValue),
        (lambda: bankmath.as_vectors([1.0, float("inf"), 0.0], 3), NonFiniteValue),
        (lambda: bankmath.normalize(np.zeros(3)), ZeroVector),
        (lambda: bankmath.project(np.zeros(3), np.zeros(3), np.eye(3, 2), np.ones(2)), ZeroVector),
        (lambda: bankmath.project(np.ones(4), np.zeros(3), np.eye(3, 2), np.ones(2)), DimensionMismatch),
        (lambda: bankmath.interpolate(np.ones(2), np.ones(2), 1.5), InvalidInput),
        (lambda: bankmath.interpolate(np.ones(2), np.ones(2), -0.1), InvalidInput),
        (lambda: bankmath.interpolate(np.ones(2), np.ones(2), float("nan")), InvalidInput),
        (lambda: bankmath.interpolate(np.ones(2), np.ones(3), 0.5), DimensionMismatch),
        (lambda: bankmath.interpolate(np.ones(2), np.ones(2), 0.5, "cubic"), InvalidInput),
        (lambda: bankmath.cdf_index(np.zeros(4), 0), InvalidInput),
        (lambda: bankmath.cdf_index(np.zeros(0), 5), InvalidInput),
        (lambda: bankmath.cdf_index(np.array([0.0, float("nan")]), 5), NonFiniteValue),
    ],
)
def test_bad_inputs_raise_typed_errors(call, error):
    with pytest.raises(error) as info:
        call()
    assert info.value.message  # every error says what was wrong


def test_normalize_survives_huge_finite_vectors():
    from shared.bankmath import normalize

    out = normalize(np.array([[1e308, 1e308, 0.0]]))
    assert np.all(np.isfinite(out))
    assert np.isclose(np.linalg.norm(out), 1.0)


def test_cdf_index_rejects_overflowing_noise():
    from shared.bankmath import cdf_index
    from shared.errors import NonFiniteValue

    with pytest.raises(NonFiniteValue):
        cdf_index(np.full(4, 1e308), 10)
