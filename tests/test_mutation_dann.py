"""DANN's DEV risk and selection/test split, pinned where mutation testing found them loose (docs/mutation.md).

DEV (You et al., ICML 2019) is recomputed here with scikit-learn's LogisticRegression (the domain classifier the
docstring names: L2, C = 0.1, on features standardised over both domains) and numpy for the paper's weighted loss
and control variate, never with trainables.dann.dev_estimate itself.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from trainables.dann import SPLIT_SEED, dev_estimate, selection_and_test
from trainables.data import ImageSet
from trainables.errors import DataError


def dev_by_hand(fs, ft, fv, loss, c=0.1, clip=1e-6) -> float:
    x = np.concatenate([fs, ft])
    mu, sd = x.mean(0), np.maximum(x.std(0, ddof=1), 1e-8)
    clf = LogisticRegression(C=c, tol=1e-12, max_iter=100_000)
    clf.fit((x - mu) / sd, np.r_[np.zeros(len(fs)), np.ones(len(ft))])
    p = np.clip(clf.predict_proba((fv - mu) / sd)[:, 1], clip, 1 - clip)
    w = p / (1 - p) * len(fs) / len(ft)
    wl = w * loss
    var = w.var(ddof=1) if len(w) > 1 else 0.0
    cov = np.cov(wl, w, ddof=1)[0, 1] if len(w) > 1 else 0.0
    eta = -cov / var if var > 0 else 0.0
    return float(wl.mean() + eta * w.mean() - eta)


def domains(seed: int = 0, n_src: int = 60, n_tgt: int = 40):
    """Two overlapping domains with unequal sizes (the intercept matters), features on different scales and
    offsets (standardising per column matters), and spreads below 1."""
    rng = np.random.default_rng(seed)
    scale, offset = np.array([0.05, 0.3, 0.8]), np.array([3.0, -1.0, 0.5])
    fs = rng.normal(0, 1, (n_src, 3)) * scale + offset
    ft = rng.normal([0.8, -0.5, 0.3], 1, (n_tgt, 3)) * scale + offset
    return fs, ft, scale, offset


def test_dev_matches_logistic_regression_and_the_papers_control_variate() -> None:
    fs, ft, scale, offset = domains()
    rng = np.random.default_rng(1)
    fv = rng.normal(0.3, 1, (25, 3)) * scale + offset
    loss = rng.uniform(0.1, 3.0, 25) + 2.0 * (fv[:, 0] > offset[0])  # loss high where the target lies
    got = dev_estimate(fs, ft, fv, loss)
    expected = dev_by_hand(fs, ft, fv, loss)
    assert got == pytest.approx(expected, rel=1e-6)
    # the control variate is at work: not the plain weighted mean
    assert abs(expected - dev_by_hand(fs, ft, fv, loss, c=1.1)) > 1e-3
    assert got != pytest.approx(float(np.mean(loss)), rel=1e-3)


def test_dev_fits_a_harder_domain_classifier_to_convergence() -> None:
    # 20 correlated features on different scales, weak regularisation (C = 10): L-BFGS needs ~50 iterations here
    rng = np.random.default_rng(7)
    a = rng.normal(size=(20, 20)) * np.linspace(0.1, 3, 20)
    fs, ft = rng.normal(0, 1, (150, 20)) @ a, (rng.normal(0, 1, (100, 20)) + 0.5) @ a
    fv, loss = rng.normal(0.3, 1, (30, 20)) @ a, rng.uniform(0.1, 3, 30)
    assert dev_estimate(fs, ft, fv, loss, c=10.0) == pytest.approx(dev_by_hand(fs, ft, fv, loss, c=10.0), rel=1e-6)


def test_dev_with_c_given_and_torch_inputs() -> None:
    fs, ft, scale, offset = domains(seed=2)
    fv = np.random.default_rng(3).normal(0, 1, (9, 3)) * scale + offset
    loss = np.linspace(0.5, 2.5, 9)
    got = dev_estimate(*(torch.tensor(a, dtype=torch.float32) for a in (fs, ft, fv, loss)), c=2.0)
    f32 = [torch.tensor(a, dtype=torch.float32).double().numpy() for a in (fs, ft, fv, loss)]
    assert got == pytest.approx(dev_by_hand(*f32, c=2.0), rel=1e-6)


def test_dev_of_two_validation_samples_uses_the_unbiased_covariance() -> None:
    fs, ft, scale, offset = domains(seed=4)
    fv = np.array([[0.0, 0.0, 0.0], [1.0, -1.0, 1.0]]) * scale + offset
    loss = np.array([0.5, 4.0])
    assert dev_estimate(fs, ft, fv, loss) == pytest.approx(dev_by_hand(fs, ft, fv, loss), rel=1e-6)


def test_dev_of_one_validation_sample_is_its_weighted_loss() -> None:
    fs, ft, scale, offset = domains(seed=5)
    fv = np.array([[0.5, 0.5, 0.5]]) * scale + offset
    # one sample: no variance, eta = 0, DEV = w * loss (w from the fitted classifier)
    expected = dev_by_hand(fs, ft, fv, np.array([2.0]))
    assert dev_estimate(fs, ft, fv, [2.0]) == pytest.approx(expected, rel=1e-6)
    assert expected != pytest.approx(2.0 * 1.0 + 1.0 - 1.0, rel=1e-3)  # w is not 1 here


def test_dev_clips_the_domain_probability_to_one_in_a_million() -> None:
    fs, ft, scale, offset = domains(seed=6)
    # far on the source side (p -> 0) with a huge loss, far on the target side (p -> 1), one in between
    fv = np.array([[-400.0, 400.0, -400.0], [400.0, -400.0, 400.0], [0.0, 0.0, 0.0]]) * scale + offset
    loss = np.array([1e6, 1.0, 1.0])
    expected = dev_by_hand(fs, ft, fv, loss)
    assert dev_estimate(fs, ft, fv, loss) == pytest.approx(expected, rel=1e-6)
    assert expected != pytest.approx(dev_by_hand(fs, ft, fv, loss, clip=1e-9), rel=1e-3)  # the clip is visible


# --- the target's selection / test halves ---------------------------------------------------------------


def images(n: int) -> ImageSet:
    return ImageSet(torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 2, 2).clone(),
                    torch.arange(n) % 10, "fp", "usps-val")


def test_selection_and_test_of_two_images_is_one_each_named_by_half() -> None:
    sel, test = selection_and_test(images(2))
    assert len(sel) == 1 and len(test) == 1
    assert {int(sel.images[0, 0, 0, 0]), int(test.images[0, 0, 0, 0])} == {0, 1}
    assert (sel.name, test.name) == ("usps-val[select]", "usps-val[test]")
    assert (sel.fingerprint, test.fingerprint) == ("fp:select", "fp:test")  # the halves never share a cache entry


def test_selection_and_test_are_disjoint_sorted_halves_fixed_by_the_split_seed() -> None:
    sel, test = selection_and_test(images(9))
    a, b = sel.images[:, 0, 0, 0].tolist(), test.images[:, 0, 0, 0].tolist()
    assert len(a) == 4 and len(b) == 5 and sorted(a + b) == list(range(9)) and a == sorted(a) and b == sorted(b)
    assert sel.labels.tolist() == [i % 10 for i in a]
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(SPLIT_SEED)).tolist()
    assert a == sorted(perm[:4])  # the same halves for every trial and seed
    torch.manual_seed(123)
    assert selection_and_test(images(9))[0].images[:, 0, 0, 0].tolist() == a


def test_selection_and_test_refuses_fewer_than_two_images() -> None:
    with pytest.raises(DataError, match=r"^usps-val: 1 labelled target validation image\(s\); DANN needs at least 2 "
                                        r"\(one half ranks trials, the other is the reported test accuracy\)$"):
        selection_and_test(images(1))


def test_lambda_schedule_values() -> None:
    from models.dann import lambda_at

    assert lambda_at(0.25, 0.6, "ramp") == pytest.approx(0.6 * (2 / (1 + math.exp(-2.5)) - 1), rel=1e-12)
    assert lambda_at(0.25, 0.6, "fixed") == 0.6
