"""FID's Frechet distance and feature statistics, pinned where mutation testing found them loose (docs/mutation.md).

Expected values are closed forms worked out here (diagonal covariances: tr sqrt(S1 S2) = sum sqrt(a_i b_i)),
never values returned by the functions under test.
"""
from __future__ import annotations

import numpy as np
import pytest

from trainables.metrics import fid


def test_covariances_are_read_in_float64() -> None:
    # 2^24 + 1 is exact in float64 and not in float32: a trace summed in float32 loses the 1
    s = np.diag([2.0**24, 1.0]).astype(np.float32)
    z = np.zeros((2, 2), np.float32)
    m = np.zeros(2, np.float32)
    assert fid.frechet_distance(m, s, m, z) == 2.0**24 + 1  # |0|^2 + tr(s) + 0 - 2 tr sqrt(s 0)
    assert fid.frechet_distance(m, z, m, s) == 2.0**24 + 1


def test_stats_are_float64_whatever_the_features_dtype() -> None:
    f = np.array([[2.0**24], [1.0], [1.0]], np.float32)
    mu, sigma = fid.stats(f)
    assert mu.dtype == np.float64 and sigma.dtype == np.float64
    assert mu[0] == (2.0**24 + 2) / 3  # float32 summation would give 2^24 / 3


def test_stats_of_two_samples_and_refusals() -> None:
    mu, sigma = fid.stats([[0.0, 1.0], [2.0, 5.0]])  # the fewest samples a covariance takes
    assert mu.tolist() == [1.0, 3.0]
    assert sigma.tolist() == [[2.0, 4.0], [4.0, 8.0]]  # unbiased (N - 1), features in columns
    with pytest.raises(ValueError, match=r"^features must be \(N >= 2, dims\), got shape \(5,\)$"):
        fid.stats(np.zeros(5))
    with pytest.raises(ValueError, match=r"^features must be \(N >= 2, dims\), got shape \(1, 3\)$"):
        fid.stats(np.zeros((1, 3)))


def test_shape_and_finiteness_refusals_name_what_is_wrong() -> None:
    m3, s3 = np.zeros(3), np.eye(3)
    with pytest.raises(ValueError, match=r"^mean vectors differ in length: \(3,\) vs \(2,\)$"):
        fid.frechet_distance(m3, s3, np.zeros(2), s3)
    # covariances of the same shape, but not that of the means
    with pytest.raises(ValueError, match=r"^covariances \(2, 2\), \(2, 2\) do not match means of length 3$"):
        fid.frechet_distance(m3, np.eye(2), m3, np.eye(2))
    with pytest.raises(ValueError, match=r"^covariances \(3, 3\), \(2, 2\) do not match means of length 3$"):
        fid.frechet_distance(m3, s3, m3, np.eye(2))
    bad = {"mu1": 0, "sigma1": 1, "mu2": 2, "sigma2": 3}
    for name, i in bad.items():
        args = [m3.copy(), s3.copy(), m3.copy(), s3.copy()]
        args[i] = args[i].copy()
        args[i].flat[0] = np.nan if i % 2 else np.inf
        with pytest.raises(ValueError, match=rf"^{name} has non-finite entries$"):
            fid.frechet_distance(*args)


def diag_trace_sqrt(s1: np.ndarray, s2: np.ndarray) -> float:
    """tr sqrt(S1 S2) of two diagonal covariances."""
    return float(np.sum(np.sqrt(np.diag(s1) * np.diag(s2))))


@pytest.mark.parametrize("first", ["raise", "nan", "inf"])
def test_a_failed_trace_term_is_retried_with_eps_on_both_diagonals(monkeypatch, first) -> None:
    calls = []

    def trace(s1, s2):
        calls.append((s1.copy(), s2.copy()))
        if len(calls) == 1:
            if first == "raise":
                raise np.linalg.LinAlgError("eigh did not converge")
            return float(first)
        return diag_trace_sqrt(s1, s2)

    monkeypatch.setattr(fid, "_trace_sqrt_product", trace)
    a, b = np.array([1.0, 4.0, 0.0]), np.array([9.0, 1.0, 2.0])
    mu1, mu2 = np.array([1.0, 2.0, 3.0]), np.array([0.0, 2.0, 5.0])
    d = fid.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    assert len(calls) == 2
    np.testing.assert_array_equal(calls[1][0], np.diag(a + 1e-6))  # pytorch-fid's eps = 1e-6, added to both
    np.testing.assert_array_equal(calls[1][1], np.diag(b + 1e-6))
    expected = 5.0 + a.sum() + b.sum() - 2 * np.sum(np.sqrt((a + 1e-6) * (b + 1e-6)))
    assert d == pytest.approx(expected, rel=1e-12)


def test_the_retry_offset_is_eps(monkeypatch) -> None:
    calls = []

    def trace(s1, s2):
        calls.append(s1.copy())
        return float("nan") if len(calls) == 1 else diag_trace_sqrt(s1, s2)

    monkeypatch.setattr(fid, "_trace_sqrt_product", trace)
    fid.frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(2), eps=0.25)
    np.testing.assert_array_equal(calls[1], np.eye(2) * 1.25)


def test_a_finite_trace_term_is_not_retried(monkeypatch) -> None:
    calls = []

    def trace(s1, s2):
        calls.append(1)
        return diag_trace_sqrt(s1, s2)

    monkeypatch.setattr(fid, "_trace_sqrt_product", trace)
    assert fid.frechet_distance([0.0], [[4.0]], [1.0], [[1.0]]) == 1.0 + 4.0 + 1.0 - 2 * 2.0
    assert calls == [1]
