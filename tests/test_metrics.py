"""decoding/metrics.py against closed forms, brute-force definitions and hand-worked cases."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.linalg

from decoding import metrics


def random_rotation(d: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q


def test_fd_of_commuting_gaussians_is_the_closed_form():
    """Same eigenvectors: FD = ||mu1 - mu2||^2 + sum (sqrt(a_i) - sqrt(b_i))^2."""
    r = random_rotation(4, 0)
    a, b = np.array([1.0, 2.0, 0.5, 3.0]), np.array([4.0, 1.0, 0.5, 0.1])
    mu1, mu2 = np.array([0.0, 1.0, 2.0, 3.0]), np.array([1.0, 1.0, 0.0, 3.0])
    fd = metrics.frechet_from_stats(mu1, r @ np.diag(a) @ r.T, mu2, r @ np.diag(b) @ r.T)
    assert fd == pytest.approx(5.0 + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum(), rel=1e-9)


def test_fd_of_general_gaussians_matches_scipy_sqrtm():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    s1, s2 = x @ x.T + 0.1 * np.eye(6), y @ y.T
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    brute = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert metrics.frechet_from_stats(mu1, s1, mu2, s2) == pytest.approx(brute, rel=1e-7)
    assert metrics.frechet_from_stats(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-8)


def test_fd_from_samples_approaches_the_gaussians_fd():
    rng = np.random.default_rng(2)
    real = rng.normal(0.0, 1.0, size=(20000, 3))
    fake = rng.normal(0.0, 2.0, size=(20000, 3)) + np.array([1.0, 0.0, 0.0])
    # N(0, I) vs N(e1, 4I): 1 + 3 * (1 - 2)^2 = 4
    assert metrics.frechet_distance(real, fake) == pytest.approx(4.0, rel=0.05)


def test_mmd2_unbiased_equals_its_double_sum():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(5, 2)), rng.normal(size=(4, 2)) + 0.5
    k = metrics.polynomial_kernel
    xx = np.mean([k(x[[i]], x[[j]])[0, 0] for i, j in itertools.permutations(range(5), 2)])
    yy = np.mean([k(y[[i]], y[[j]])[0, 0] for i, j in itertools.permutations(range(4), 2)])
    xy = np.mean([k(x[[i]], y[[j]])[0, 0] for i in range(5) for j in range(4)])
    assert metrics.mmd2_unbiased(k(x, x), k(y, y), k(x, y)) == pytest.approx(xx + yy - 2 * xy)
    assert metrics.kid_full_resample(k(x, x), yy, k(x, y).mean(1), np.arange(5)) == pytest.approx(xx + yy - 2 * xy)
    assert metrics.offdiagonal_mean(y, chunk=3) == pytest.approx(yy)
    assert metrics.cross_row_mean(x, y, chunk=2) == pytest.approx(k(x, y).mean(1))


def test_kid_resample_leaves_out_pairs_of_copies():
    rng = np.random.default_rng(10)
    x = rng.normal(size=(6, 3))
    kxx = metrics.polynomial_kernel(x, x)
    idx = np.array([0, 0, 2, 3, 3, 3, 5])
    distinct_pairs = [kxx[a, b] for a, b in itertools.product(idx, idx) if a != b]
    assert metrics.kid_full_resample(kxx, 0.0, np.zeros(6), idx) == pytest.approx(np.mean(distinct_pairs))


def test_kid_is_near_zero_for_one_distribution_and_positive_for_a_shift():
    rng = np.random.default_rng(4)
    real = rng.normal(size=(600, 8))
    same, _ = metrics.kid(real, rng.normal(size=(600, 8)), subsets=20, subset_size=300)
    shifted, std = metrics.kid(real, rng.normal(size=(600, 8)) + 0.5, subsets=20, subset_size=300)
    assert abs(same) < 0.02 and shifted > 0.1 and shifted > 10 * std / np.sqrt(20)


def brute_prdc(real, fake, k_pr, k_dc):
    """The four definitions written out with loops over samples."""
    def radius(x, i, k):
        return sorted(np.linalg.norm(x[i] - x[j]) for j in range(len(x)) if j != i)[k - 1]

    def dist(u, v):
        return np.linalg.norm(u - v)

    r_pr = [radius(real, i, k_pr) for i in range(len(real))]
    r_dc = [radius(real, i, k_dc) for i in range(len(real))]
    f_pr = [radius(fake, j, k_pr) for j in range(len(fake))]
    precision = np.mean([any(dist(y, x) <= r for x, r in zip(real, r_pr)) for y in fake])
    recall = np.mean([any(dist(x, y) <= r for y, r in zip(fake, f_pr)) for x in real])
    density = np.mean([sum(dist(y, x) <= r for x, r in zip(real, r_dc)) for y in fake]) / k_dc
    coverage = np.mean([min(dist(x, y) for y in fake) <= r for x, r in zip(real, r_dc)])
    return {"precision": precision, "recall": recall, "density": density, "coverage": coverage}


def test_prdc_hand_case():
    """real 0, 1, 2, 10, 11 and fake 0.5, 1.5, 1.6 on a line, k = 1 (P/R) and 2 (D/C), worked by hand:
    every fake lies in a real 1-NN ball; only reals 0 and 1 lie in a fake 1-NN ball (radii 1, 0.1, 0.1);
    each fake lies in 3 of the real 2-NN balls (radii 2, 1, 2, 8, 9); reals 10 and 11 have no fake
    within their radius."""
    real, fake = np.array([[0.0], [1], [2], [10], [11]]), np.array([[0.5], [1.5], [1.6]])
    got = metrics.knn_metrics(real, fake, k_pr=1, k_dc=2)
    assert got == pytest.approx({"precision": 1.0, "recall": 0.4, "density": 1.5, "coverage": 0.6})
    assert got == pytest.approx(brute_prdc(real, fake, 1, 2))


def test_prdc_matches_the_definitions_on_random_points_and_is_one_for_identical_sets():
    rng = np.random.default_rng(5)
    real, fake = rng.normal(size=(30, 2)), rng.normal(size=(25, 2)) * 1.5 + 0.3
    assert metrics.knn_metrics(real, fake) == pytest.approx(brute_prdc(real, fake, 3, 5))
    same = metrics.knn_metrics(real, real.copy())
    assert same["precision"] == same["recall"] == same["coverage"] == 1.0


def test_knn_bootstrap_resample_ignores_copies_of_a_sample():
    rng = np.random.default_rng(6)
    real, fake = rng.normal(size=(20, 2)), rng.normal(size=(12, 2))
    tables = metrics.knn_tables(real, fake)
    perm = rng.permutation(12)
    assert metrics.knn_metrics_from_tables(tables, perm) == pytest.approx(metrics.knn_metrics(real, fake))
    # a resample with copies: its fake radii are those of the distinct samples it holds
    idx = np.array([0, 0, 1, 2, 3, 3, 4])
    distinct = np.array([0, 1, 2, 3, 4])
    with_copies = metrics.knn_metrics_from_tables(tables, idx)
    plain = metrics.knn_metrics(real, fake[distinct])
    assert with_copies["recall"] == pytest.approx(plain["recall"])
    assert with_copies["coverage"] == pytest.approx(plain["coverage"])
    assert with_copies["precision"] == pytest.approx(metrics.knn_metrics(real, fake[idx])["precision"])


def test_resample_radius_falls_back_when_its_near_neighbours_are_missing():
    """With more than 64 fakes the precomputed neighbour lists are cut; a resample that leaves out a
    sample's whole list must still find its radius among the samples present."""
    rng = np.random.default_rng(11)
    real, fake = rng.normal(size=(80, 2)), rng.normal(size=(90, 2))
    tables = metrics.knn_tables(real, fake)
    keep = np.setdiff1d(np.arange(90), tables.fake_order[0])  # sample 0 without any of its 64 nearest
    got = metrics.knn_metrics_from_tables(tables, keep)
    assert got == pytest.approx(metrics.knn_metrics(real, fake[keep]))


def test_self_radii_in_chunks_equal_the_full_matrix():
    x = np.random.default_rng(7).normal(size=(23, 3))
    r3, r5 = metrics.self_radii(x, (3, 5), chunk=4)
    d = metrics.pairwise_distances(x, x)
    assert r3 == pytest.approx(metrics.kth_neighbour_radius(d, 3), rel=1e-5)
    assert r5 == pytest.approx(metrics.kth_neighbour_radius(d, 5), rel=1e-5)
    with pytest.raises(ValueError, match="k = 5 nearest neighbours need more than 5 samples"):
        metrics.self_radii(x[:5], (5,))


def test_bootstrap_interval_is_seeded_and_covers_the_mean():
    x = np.random.default_rng(8).normal(size=400)
    ci = metrics.bootstrap_interval(lambda i: float(x[i].mean()), len(x), resamples=300, seed=1)
    assert ci == metrics.bootstrap_interval(lambda i: float(x[i].mean()), len(x), resamples=300, seed=1)
    half = 1.96 * x.std() / np.sqrt(len(x))
    assert ci[0] < x.mean() < ci[1] and ci[1] - ci[0] == pytest.approx(2 * half, rel=0.25)
    with pytest.raises(ValueError, match="bootstrap resamples must be >= 2"):
        metrics.bootstrap_interval(lambda i: 0.0, 3, resamples=1)


def test_distribution_metrics_rank_a_shifted_set_worse_with_intervals():
    rng = np.random.default_rng(9)
    real = rng.normal(size=(300, 4))
    good = metrics.distribution_metrics(real, rng.normal(size=(100, 4)), hits=np.ones(100, bool), resamples=30,
                                        kid_subsets=5, prdc_real=real[:100])
    bad = metrics.distribution_metrics(real, rng.normal(size=(100, 4)) + 1.0, resamples=30, kid_subsets=5,
                                       prdc_real=real[:100])
    assert good["fd"] <= good["fd_ci"][1] and good["precision_ci"][0] <= good["precision"] <= good["precision_ci"][1]
    assert bad["fd_ci"][0] > good["fd_ci"][1] and bad["kid"] > good["kid"]
    assert bad["precision"] < good["precision"] and bad["coverage"] < good["coverage"]
    assert good["class_consistency"] == 1.0 and "class_consistency" not in bad
    assert good["samples"] == 100 and good["reference"] == 300


def test_total_variation_of_known_histograms():
    assert metrics.total_variation(np.array([0, 0, 1, 1]), np.array([0, 0, 0, 2])) == pytest.approx(0.5)
    assert metrics.total_variation(np.array([3, 4]), np.array([4, 3])) == 0.0
    a = np.array([[0, 1], [0, 1], [1, 1], [1, 0]])  # position 0: {0: .5, 1: .5}; position 1: {1: .75, 0: .25}
    b = np.array([[0, 1], [0, 1], [0, 1], [0, 1]])
    tv = metrics.token_tv(a, b, vocab_size=2)
    # positions: 0.5 and 0.25; bigrams (0,1),(0,1),(1,1),(1,0) vs four (0,1): 0.5
    assert tv == pytest.approx({"position_tv": 0.375, "position_tv_max": 0.5, "bigram_tv": 0.5})
    with pytest.raises(ValueError, match="same T"):
        metrics.token_tv(a, b[:, :1], 2)


def test_fd_interval_is_centred_on_its_point():
    """FD's bootstrap resamples are biased upwards (their duplicates); the reported interval is shifted by
    the median bias so that it holds the point value, while the plain percentile interval does not."""
    from decoding.metrics import bootstrap_interval, frechet_from_stats, gaussian_stats

    rng = np.random.default_rng(3)
    real, fake = rng.normal(size=(2000, 16)), rng.normal(size=(200, 16))
    mu_r, s_r = gaussian_stats(real)
    stat = lambda i: frechet_from_stats(mu_r, s_r, *gaussian_stats(fake[i]))  # noqa: E731
    point = stat(np.arange(200))
    plain = bootstrap_interval(stat, 200, 100, seed=0)
    centred = bootstrap_interval(stat, 200, 100, seed=0, centre=point)
    assert plain[0] > point  # the symptom: the whole percentile interval above the point
    assert centred[0] < point < centred[1]
    assert centred[1] - centred[0] == pytest.approx(plain[1] - plain[0])  # the same spread
    assert bootstrap_interval(lambda i: float(i.mean()), 50, 20, centre=None) == bootstrap_interval(
        lambda i: float(i.mean()), 50, 20)
    with pytest.raises(ValueError, match="centre applies to a statistic with one value"):
        bootstrap_interval(lambda i: {"a": 1.0}, 10, 5, centre=1.0)
