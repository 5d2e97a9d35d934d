"""Sample-quality metrics as distributions: pure numpy functions on feature vectors and token arrays.

Notation: `real` [M, D] are reference features (the 10,000 Fashion-MNIST test images in the shipped
classifier's penultimate layer), `fake` [N, D] the generated samples' features. None of these is
Inception FID: the Fréchet distance here is named "FD in SpecLens-classifier space" and its numbers
are not comparable to published FIDs. Intervals are bootstrap percentile intervals over resamples
of the generated set (the reference set is fixed), seeded; FD's is shifted by the bootstrap's median bias.

- `frechet_distance`: Heusel et al. 2017 (the FID formula) on any features.
- `kid`: Bińkowski et al. 2018, unbiased MMD^2 with the kernel (x.y / D + 1)^3, mean over subsets.
- `knn_metrics`: precision/recall (Kynkäänniemi et al. 2019, k = 3) and density/coverage
  (Naeem et al. 2020, k = 5).
- `token_tv`: per-position and bigram total variation between two sets of token sequences
  (the token-level check of lossless decoders against `ar`, SJD-PAC's analysis).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

FD_NAME = "FD in SpecLens-classifier space"


def blas_threads(n: int | None):
    """A context limiting numpy's BLAS to n threads (threadpoolctl, installed with scikit-learn; a no-op
    without it or with n None). On a shared, busy CPU, multi-threaded BLAS on these small matrices
    spins for 10-100x longer than one thread takes."""
    if n is None:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=n, user_api="blas")


def _as_features(x, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"{name} must be a [N, D] array with N >= 2, got shape {list(x.shape)}")
    return x


# -- Fréchet distance --------------------------------------------------------------------------------
def gaussian_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and unbiased covariance [D, D] of features [N, D]."""
    x = _as_features(x, "features")
    return x.mean(0), np.cov(x, rowvar=False)


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_from_stats(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2): the Fréchet (2-Wasserstein) distance
    between N(mu1, S1) and N(mu2, S2) (Dowson & Landau 1982; Heusel et al. 2017, eq. 6). The matrix
    square roots come from symmetric eigendecompositions, so the result is real by construction."""
    r1 = _sqrt_psd(s1)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(r1 @ s2 @ r1), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * cross)


def frechet_distance(real: np.ndarray, fake: np.ndarray) -> float:
    """FD between Gaussians fitted to two feature sets (see `frechet_from_stats`)."""
    return frechet_from_stats(*gaussian_stats(real), *gaussian_stats(fake))


# -- KID -------------------------------------------------------------------------------------------
def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """k(x, y) = (x.y / D + 1)^3, the KID kernel (Bińkowski et al. 2018, sec. 3)."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def offdiagonal_mean(x: np.ndarray, chunk: int = 2048) -> float:
    """Mean of k(x_i, x_j) over i != j, in row chunks (a 10,000-sample reference never needs its
    whole [M, M] kernel matrix in memory)."""
    total = 0.0
    for i in range(0, len(x), chunk):
        k = polynomial_kernel(x[i:i + chunk], x)
        total += k.sum() - k[np.arange(len(k)), np.arange(i, i + len(k))].sum()
    return float(total / (len(x) * (len(x) - 1)))


def cross_row_mean(x: np.ndarray, y: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """[len(x)]: mean over y of k(x_i, y), in row chunks."""
    return np.concatenate([polynomial_kernel(x[i:i + chunk], y).mean(1) for i in range(0, len(x), chunk)])


def mmd2_unbiased(kxx: np.ndarray, kyy: np.ndarray, kxy: np.ndarray) -> float:
    """Unbiased MMD^2 (Gretton et al. 2012, eq. 3) from the three kernel matrices (diagonals excluded)."""
    n, m = len(kxx), len(kyy)
    xx = (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
    yy = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(xx + yy - 2 * kxy.mean())


def kid(real: np.ndarray, fake: np.ndarray, subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float]:
    """KID = mean (and std) over `subsets` random subset pairs, each of min(subset_size, N, M) samples
    drawn without replacement, of the unbiased MMD^2 with the cubic kernel (Bińkowski et al. 2018;
    the protocol of their code and of torch-fidelity / clean-fid)."""
    real, fake = _as_features(real, "real"), _as_features(fake, "fake")
    if subsets < 1:
        raise ValueError(f"KID subsets must be >= 1, got {subsets}")
    m = min(subset_size, len(real), len(fake))
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        x = fake[rng.choice(len(fake), m, replace=False)]
        y = real[rng.choice(len(real), m, replace=False)]
        values.append(mmd2_unbiased(polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)))
    return float(np.mean(values)), float(np.std(values))


# -- precision / recall / density / coverage --------------------------------------------------------
def pairwise_distances(x: np.ndarray, y: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """Euclidean distances [len(x), len(y)], float32, computed in row chunks."""
    y2 = (y**2).sum(1)
    out = np.empty((len(x), len(y)), np.float32)
    for i in range(0, len(x), chunk):
        xc = x[i:i + chunk]
        d2 = (xc**2).sum(1)[:, None] + y2[None, :] - 2 * xc @ y.T
        out[i:i + chunk] = np.sqrt(np.clip(d2, 0, None))
    return out


def kth_neighbour_radius(d_self: np.ndarray, k: int) -> np.ndarray:
    """Distance of each row's sample to its k-th nearest neighbour in the same set, itself excluded."""
    if k >= len(d_self):
        raise ValueError(f"k = {k} nearest neighbours need more than {k} samples, got {len(d_self)}")
    d = d_self.astype(np.float64, copy=True)
    np.fill_diagonal(d, np.inf)
    return np.partition(d, k - 1, axis=1)[:, k - 1]


@dataclass
class KNNTables:
    """What precision/recall/density/coverage need, computed once per (real, fake) pair so that a
    bootstrap resample of the generated set only indexes into it."""

    real_radius_pr: np.ndarray  # [M] k_pr-th neighbour radii of the real samples
    real_radius_dc: np.ndarray  # [M] k_dc-th
    d_real_fake: np.ndarray  # [M, N]
    d_fake_fake: np.ndarray  # [N, N]
    fake_order: np.ndarray  # [N, C] each fake's nearest other fakes, nearest first (C = min(N - 1, 64))
    fake_in_real: np.ndarray  # [N] bool: inside some real k_pr-NN ball (precision, per sample)
    fake_dc_count: np.ndarray  # [N] number of real k_dc-NN balls holding it (density, per sample)
    k_pr: int
    k_dc: int


def self_radii(x: np.ndarray, ks: tuple[int, ...], chunk: int = 1024) -> list[np.ndarray]:
    """k-th nearest-neighbour radius of every sample within its own set, for each k, in row chunks
    (never the whole [N, N] matrix)."""
    if max(ks) >= len(x):
        raise ValueError(f"k = {max(ks)} nearest neighbours need more than {max(ks)} samples, got {len(x)}")
    out = [np.empty(len(x)) for _ in ks]
    for i in range(0, len(x), chunk):
        d = pairwise_distances(x[i:i + chunk], x).astype(np.float64)
        d[np.arange(len(d)), np.arange(i, i + len(d))] = np.inf
        for r, k in zip(out, ks):
            r[i:i + chunk] = np.partition(d, k - 1, axis=1)[:, k - 1]
    return out


def knn_tables(real: np.ndarray, fake: np.ndarray, k_pr: int = 3, k_dc: int = 5) -> KNNTables:
    real, fake = _as_features(real, "real"), _as_features(fake, "fake")
    if k_pr >= len(fake):
        raise ValueError(f"k = {k_pr} nearest neighbours need more than {k_pr} samples, got {len(fake)}")
    radius_pr, radius_dc = self_radii(real, (k_pr, k_dc))
    d_rf, d_ff = pairwise_distances(real, fake), pairwise_distances(fake, fake)
    others = d_ff.astype(np.float64)
    np.fill_diagonal(others, np.inf)
    columns = min(len(fake) - 1, 64)
    order = np.argpartition(others, columns - 1, axis=1)[:, :columns]
    order = np.take_along_axis(order, np.argsort(np.take_along_axis(others, order, 1), axis=1, kind="stable"), 1)
    return KNNTables(radius_pr, radius_dc, d_rf, d_ff, order, (d_rf <= radius_pr[:, None]).any(0),
                     (d_rf <= radius_dc[:, None]).sum(0), k_pr, k_dc)


def resample_fake_radius(t: KNNTables, distinct: np.ndarray) -> np.ndarray:
    """[len(distinct)]: each distinct sample's k_pr-th nearest neighbour among the other distinct samples
    of a resample: the k-th of its precomputed nearest fakes present in the resample, or, when fewer
    than k of those are present, from the full distance row."""
    present = np.zeros(len(t.d_fake_fake), bool)
    present[distinct] = True
    order = t.fake_order[distinct]  # [S, C]
    count = present[order].cumsum(1)
    found = count[:, -1] >= t.k_pr
    pick = order[np.arange(len(distinct)), (count >= t.k_pr).argmax(1)]
    radius = t.d_fake_fake[distinct, pick].astype(np.float64)
    for row in np.flatnonzero(~found):  # rare: most of its nearest fakes were left out of the resample
        d = t.d_fake_fake[distinct[row], distinct].astype(np.float64)
        d[row] = np.inf
        radius[row] = np.partition(d, t.k_pr - 1)[t.k_pr - 1]
    return radius


def knn_metrics_from_tables(t: KNNTables, idx: np.ndarray | None = None) -> dict[str, float]:
    """Precision, recall (Kynkäänniemi et al. 2019, eqs. 1-3) and density, coverage (Naeem et al.
    2020, eqs. 3-4) of the generated samples `idx` (default: all; a bootstrap passes a resample).

    precision = share of fakes inside some real k-NN ball (k = k_pr);
    recall    = share of reals inside some fake k-NN ball (the fake radii of a resample are those
                among its distinct samples: copies of a sample are not its neighbours);
    density   = (1 / k_dc) * mean over fakes of the number of real k-NN balls (k = k_dc) holding it;
    coverage  = share of reals whose nearest fake lies inside their own k-NN ball (k = k_dc).
    Recall and coverage depend only on which samples are present, not on how often."""
    idx = np.arange(t.d_fake_fake.shape[0]) if idx is None else np.asarray(idx)
    distinct = np.unique(idx)
    d_rf = t.d_real_fake[:, distinct]  # [M, S]
    return {"precision": float(t.fake_in_real[idx].mean()),
            "recall": float((d_rf <= resample_fake_radius(t, distinct)[None, :]).any(1).mean()),
            "density": float(t.fake_dc_count[idx].mean() / t.k_dc),
            "coverage": float((d_rf.min(1) <= t.real_radius_dc).mean())}


def knn_metrics(real: np.ndarray, fake: np.ndarray, k_pr: int = 3, k_dc: int = 5) -> dict[str, float]:
    """Precision, recall, density, coverage of `fake` against `real` (see `knn_metrics_from_tables`)."""
    return knn_metrics_from_tables(knn_tables(real, fake, k_pr, k_dc))


# -- bootstrap --------------------------------------------------------------------------------------
def bootstrap_interval(statistic: Callable[[np.ndarray], float | dict], n: int, resamples: int = 200,
                       seed: int = 0, level: float = 0.95,
                       centre: float | None = None) -> dict[str, tuple[float, float]] | tuple[float, float]:
    """Percentile interval of `statistic(idx)` over `resamples` resamples idx of range(n) with
    replacement (Efron & Tibshirani 1993, ch. 13). A statistic returning a dict gets one interval per key.
    centre: the statistic's value on the whole sample; the interval is then shifted by the bootstrap's
    median bias (median of the resampled values - centre), for a statistic that a resample's duplicates
    bias (FD), so that the interval keeps the resamples' spread around the point, not above it."""
    if resamples < 2:
        raise ValueError(f"bootstrap resamples must be >= 2, got {resamples}")
    if not 0 < level < 1:
        raise ValueError(f"bootstrap level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    values = [statistic(rng.integers(0, n, n)) for _ in range(resamples)]
    lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    if isinstance(values[0], dict):
        if centre is not None:
            raise ValueError("centre applies to a statistic with one value, not a dict")
        return {k: tuple(float(v) for v in np.percentile([x[k] for x in values], [lo, hi])) for k in values[0]}
    shift = 0.0 if centre is None else float(np.median(values)) - float(centre)
    return tuple(float(v) - shift for v in np.percentile(values, [lo, hi]))


def kid_full_resample(kxx: np.ndarray, yy_term: float, kxy_row_mean: np.ndarray, idx: np.ndarray) -> float:
    """Unbiased MMD^2 of the resampled generated set `idx` against the whole reference: pairs of copies
    of one sample are left out of the fake-fake term, as the diagonal is in `mmd2_unbiased`. With c_i
    the copies of sample i: sum over such pairs = c'Kc - sum_i c_i^2 K_ii, over n^2 - sum_i c_i^2 pairs."""
    c = np.bincount(idx, minlength=len(kxx)).astype(np.float64)
    pairs = len(idx) ** 2 - (c * c).sum()
    xx = (c @ kxx @ c - (c * c * np.diag(kxx)).sum()) / pairs
    return float(xx + yy_term - 2 * kxy_row_mean[idx].mean())


def distribution_metrics(real: np.ndarray, fake: np.ndarray, hits: np.ndarray | None = None,
                         resamples: int = 200, seed: int = 0, kid_subsets: int = 100,
                         kid_subset_size: int = 1000, prdc_real: np.ndarray | None = None,
                         real_kernel_mean: float | None = None) -> dict:
    """Every feature-space metric of `fake` against `real`, each with its bootstrap 95% interval.
    hits: [N] bool, the classifier's argmax == the requested class (class-consistency), optional.
    KID's point value follows Bińkowski's subsets; its interval resamples the full-set unbiased MMD^2.
    FD is biased upwards at finite N, and more so on a resample (its copies make it a smaller
    sample), so its plain percentile interval sits above its point value (at 200 samples of the
    bundled model, the whole interval did); FD's interval is the percentile interval shifted by the
    bootstrap's median bias (`bootstrap_interval(centre=fd)`): the resamples' spread around the point.
    Precision/recall/density/coverage compare against `prdc_real` (default `real`; Naeem et al. use
    as many real as generated samples). real_kernel_mean: `offdiagonal_mean(real)` when already known
    (it is the same for every decoder compared against one reference)."""
    real, fake = _as_features(real, "real"), _as_features(fake, "fake")
    n = len(fake)
    mu_r, s_r = gaussian_stats(real)
    out: dict = {"samples": n, "reference": len(real)}
    fd = frechet_from_stats(mu_r, s_r, *gaussian_stats(fake))
    fd_ci = bootstrap_interval(lambda i: frechet_from_stats(mu_r, s_r, *gaussian_stats(fake[i])), n, resamples, seed,
                               centre=fd)
    out["fd"], out["fd_ci"] = fd, fd_ci
    kid_mean, kid_std = kid(real, fake, kid_subsets, kid_subset_size, seed)
    yy = offdiagonal_mean(real) if real_kernel_mean is None else real_kernel_mean
    kxx, kxy_row = polynomial_kernel(fake, fake), cross_row_mean(fake, real)
    out["kid"], out["kid_std"] = kid_mean, kid_std
    out["kid_ci"] = bootstrap_interval(lambda i: kid_full_resample(kxx, yy, kxy_row, i), n, resamples, seed)
    tables = knn_tables(real if prdc_real is None else prdc_real, fake)
    out.update(knn_metrics_from_tables(tables))
    for k, ci in bootstrap_interval(lambda i: knn_metrics_from_tables(tables, i), n, resamples, seed).items():
        out[f"{k}_ci"] = ci
    if hits is not None:
        hits = np.asarray(hits, dtype=np.float64)
        out["class_consistency"] = float(hits.mean())
        out["class_consistency_ci"] = bootstrap_interval(lambda i: float(hits[i].mean()), n, resamples, seed)
    return out


# -- tokens ----------------------------------------------------------------------------------------------
def total_variation(a: np.ndarray, b: np.ndarray) -> float:
    """0.5 * sum |P_a - P_b| between the empirical distributions of two 1-D integer samples."""
    values, inverse = np.unique(np.concatenate([a, b]), return_inverse=True)
    pa = np.bincount(inverse[:len(a)], minlength=len(values)) / len(a)
    pb = np.bincount(inverse[len(a):], minlength=len(values)) / len(b)
    return float(0.5 * np.abs(pa - pb).sum())


def token_tv(tokens_a: np.ndarray, tokens_b: np.ndarray, vocab_size: int) -> dict[str, float]:
    """Mean (and max) over positions of the TV between the token distributions of two sets of
    sequences [Na, T] and [Nb, T] at each position, and the same for raster bigrams (t_j, t_j+1).
    With finite samples even identical distributions give TV > 0: compare with two independent
    `ar` sets of the same sizes (the noise floor)."""
    a, b = np.asarray(tokens_a, np.int64), np.asarray(tokens_b, np.int64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"token sets must be [N, T] with the same T, got {list(a.shape)} and {list(b.shape)}")
    per_pos = [total_variation(a[:, j], b[:, j]) for j in range(a.shape[1])]
    bigram_a, bigram_b = a[:, :-1] * vocab_size + a[:, 1:], b[:, :-1] * vocab_size + b[:, 1:]
    per_pair = [total_variation(bigram_a[:, j], bigram_b[:, j]) for j in range(bigram_a.shape[1])]
    return {"position_tv": float(np.mean(per_pos)), "position_tv_max": float(np.max(per_pos)),
            "bigram_tv": float(np.mean(per_pair)) if per_pair else 0.0}
