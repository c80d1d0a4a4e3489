"""workbench.stats: coverage of the intervals on cases with a known sampling distribution, the
estimate inside its interval, rank correlations against scipy and hand computations."""

import math

import numpy as np
import pytest
import scipy.stats
import torch

from workbench.stats import granulated_tau, interval, kendall_tau, weighted_tau


def _corr(a, b):
    return np.corrcoef(a, b)[0, 1]


CASES = {
    # name: (score, draw(rng) -> arrays, truth)
    "mean": (np.mean, lambda r: (r.normal(1.0, 2.0, size=50),), 1.0),
    "variance": (lambda x: np.var(x, ddof=1), lambda r: (r.normal(0.0, 1.0, size=100),), 1.0),
    "correlation": (
        _corr,
        lambda r: tuple(r.multivariate_normal([0, 0], [[1, 0.5], [0.5, 1]], size=100).T),
        0.5,
    ),
}


@pytest.mark.parametrize("scheme", ["subsample", "bca"])
@pytest.mark.parametrize("case", list(CASES))
def test_coverage_of_nominal_95_intervals_is_at_least_90_percent(case, scheme):
    score, draw, truth = CASES[case]
    hits, inside, widths = 0, 0, []
    for rep in range(200):
        arrays = draw(np.random.default_rng(1000 + rep))
        est, lo, hi = interval(score, *arrays, n_resamples=200, seed=rep, scheme=scheme)
        hits += lo <= truth <= hi
        inside += lo <= est <= hi
        widths.append(hi - lo)
    assert inside == 200
    assert 0.90 <= hits / 200 <= 0.99, hits / 200  # not trivially wide either
    if case == "mean":  # the width matches the known sampling distribution: 2 * 1.96 * 2 / sqrt(50) = 1.109
        assert abs(np.mean(widths) - 2 * 1.96 * 2 / math.sqrt(50)) < 0.1


def test_kendall_tau_intervals_cover_the_population_tau_of_a_gaussian_pair():
    # for a bivariate normal with correlation rho, the population tau is (2 / pi) arcsin(rho)
    truth = 2 / math.pi * math.asin(0.5)
    hits = 0
    for rep in range(200):
        z = np.random.default_rng(rep).multivariate_normal([0, 0], [[1, 0.5], [0.5, 1]], size=20)
        est, lo, hi = interval(kendall_tau, z[:, 0], z[:, 1], seed=rep, bounds=(-1, 1), centre="none")
        hits += lo <= truth <= hi
        assert lo <= est <= hi and -1 <= lo and hi <= 1
    assert 0.90 <= hits / 200 <= 0.99


def test_a_score_that_duplicates_inflate_keeps_its_estimate_inside():
    # the fraction of distinct samples is 1 on the data and ~0.63 on every with-replacement resample:
    # a percentile bootstrap puts the estimate far outside; subsampling has no duplicates, so D = 0
    x = np.random.default_rng(0).normal(size=80)
    distinct = lambda a: len(np.unique(a)) / len(a)  # noqa: E731
    boot = [distinct(x[np.random.default_rng(s).integers(0, 80, 80)]) for s in range(50)]
    assert max(boot) < 0.75
    assert interval(distinct, x) == (1.0, 1.0, 1.0)
    est, lo, hi = interval(distinct, x, scheme="bca")
    assert lo <= est == 1.0 <= hi
    # a score with a systematic 1/n term (evidence per sample): the median centring removes it
    biased = lambda a: float(np.mean(a)) + 5.0 / len(a)  # noqa: E731
    est, lo, hi = interval(biased, x)
    assert lo < est < hi
    assert abs((lo + hi) / 2 - est) < 0.1


def test_groups_resample_whole_groups_and_torch_tensors_are_indexed():
    rng = np.random.default_rng(3)
    g = np.repeat(np.arange(20), 5)
    x = rng.normal(size=20)[g] + 0.01 * rng.normal(size=100)  # 20 independent groups, not 100 samples
    est, lo, hi = interval(np.mean, x, groups=g)
    naive = interval(np.mean, x)
    assert (hi - lo) > 1.8 * (naive.high - naive.low)  # ~sqrt(5) wider: the clustering is honoured
    t = interval(lambda a: float(a.mean()), torch.as_tensor(x))
    assert t.estimate == pytest.approx(naive.estimate) and t.low == pytest.approx(naive.low)


def test_bad_arguments_are_named():
    x = np.arange(10.0)
    with pytest.raises(ValueError, match="arrays\\[1\\]"):
        interval(np.mean, x, x[:5])
    with pytest.raises(ValueError, match="scheme"):
        interval(np.mean, x, scheme="percentile")
    with pytest.raises(ValueError, match="rate"):
        interval(np.mean, x, rate=1.0)
    with pytest.raises(ValueError, match="groups"):
        interval(np.mean, x, groups=[0, 1])
    with pytest.raises(ValueError, match="centre"):
        interval(np.mean, x, centre="mean")
    with pytest.raises(ValueError, match="bounds"):
        interval(np.mean, x, bounds=(1, -1))
    with pytest.raises(ValueError, match="at least 3"):
        interval(np.mean, x[:2])
    assert all(math.isnan(v) for v in interval(lambda a: math.nan, x))


def test_bounds_clip_the_interval_of_a_bounded_score():
    rng = np.random.default_rng(5)
    x = rng.normal(size=12)
    y = x + 0.3 * rng.normal(size=12)
    free = interval(kendall_tau, x, y)
    r = interval(kendall_tau, x, y, bounds=(-1, 1))
    assert free.high > 1.0  # the rescaled subsample spread reaches past tau's range
    assert r.high == 1.0 and r.low == free.low and r.estimate == free.estimate


def test_kendall_and_weighted_tau_agree_with_hand_counts():
    # (1,2,3,4) vs (1,3,2,4): 5 concordant, 1 discordant pair of 6 -> 4/6
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))
    rng = np.random.default_rng(0)
    for n in (5, 50, 300):  # with ties, both code paths (pair signs up to SMALL_TAU, scipy beyond) equal scipy
        a, b = rng.integers(0, 6, n), rng.integers(0, 6, n)
        assert kendall_tau(a, b) == pytest.approx(scipy.stats.kendalltau(a, b).statistic, abs=1e-12)
    assert kendall_tau([1, 2, np.nan, 3], [1, 2, 9, 3]) == pytest.approx(1.0)
    # weighted tau: a swap at the top costs more than one at the bottom
    top, bottom = weighted_tau([4, 3, 2, 1], [3, 4, 2, 1]), weighted_tau([4, 3, 2, 1], [4, 3, 1, 2])
    assert top < bottom < 1.0


def test_granulated_tau_equals_a_hand_computation():
    # a 2 x 3 grid (lr x wd) plus a lone run: lr-groups are the 3 wd values (pairs), wd-groups the 2 lrs
    lr = np.array([1, 2, 1, 2, 1, 2, 3])
    wd = np.array([0, 0, 1, 1, 2, 2, 9])
    gap = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
    mu = np.array([1.0, 2.0, 8.0, 7.0, 5.0, 6.0, 0.0])
    ds = granulated_tau(mu, gap, {"lr": lr, "wd": wd})
    # lr: groups wd=0 (+1), wd=1 (-1), wd=2 (+1); the lone run makes no pair -> psi_lr = 1/3
    # wd: lr=1 runs (1,8,5) vs gaps (1,3,5): (+1 +1 -1)/3; lr=2 runs (2,7,6) vs (2,4,6): 1/3 -> psi_wd = 1/3
    assert ds.psi.sel(axis="lr") == pytest.approx(1 / 3)
    assert ds.psi.sel(axis="wd") == pytest.approx(1 / 3)
    assert ds.n_groups.values.tolist() == [3, 2]
    assert float(ds.Psi) == pytest.approx(1 / 3)
    assert float(ds.tau) == pytest.approx(kendall_tau(mu, gap))
    with pytest.raises(ValueError, match="factors\\['wd'\\]"):
        granulated_tau(mu, gap, {"lr": lr, "wd": wd[:3]})
