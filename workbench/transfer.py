"""Transferability probe: score and rank models (or layers) for a labelled target task without
fine-tuning, and check the scores against real fine-tuning.

Metrics take numpy or torch inputs, compute in float64 and return plain floats (higher = more
transferable for every metric here). ``features`` is (N, D); ``labels`` any N values (remapped to
0..C-1); ``source_probs`` (N, Cs) softmax outputs of the source model's own head.

* :func:`logme` (You et al. 2021/2022), :func:`leep` (Nguyen et al. 2020), :func:`nce` (Tran et al.
  2019), :func:`hscore` (Bao et al. 2019; shrinkage: Ibrahim et al. 2022), :func:`transrate` (Huang
  et al. 2022), :func:`gbc` (Pandy et al. 2022), :func:`sfda` (Shao et al. 2022), :func:`nleep` (Li et
  al. 2021), :func:`etran` (Gholami et al. 2023, experimental), :func:`tmi` (Xu & Kang 2023, experimental).
* Invariant to a global scaling of the features: LogME, H-score (plain and shrinkage), GBC (while its
  1e-4 variance floor does not bind) and TMI; scale-dependent: TransRate, SFDA and ETran (through the
  LDA shrinkage exp(-5 lambda_max)), ETran's energy and N-LEEP (the GMM's covariance floor).
* :func:`features` extracts (pooled) features of any named layers with forward hooks;
  :class:`FeatureStats` accumulates sufficient statistics (F^T F, class sums, counts) in one streaming
  pass for LogME and the H-score without holding the N x D matrix.
* :func:`rank` scores models x layers x metrics into an xarray Dataset; :func:`correlate` compares
  scores with ground-truth accuracies (weighted Kendall tau as in the literature, Kendall tau,
  Pearson, top-1 relative accuracy) with bootstrap confidence intervals.
* :func:`linear_probe_accuracy` and :func:`finetune_accuracy`: the ground-truth harness.
"""
from __future__ import annotations

import math
import time
import warnings

import numpy as np
import torch
import xarray as xr
from torch import nn

# -- input validation ------------------------------------------------------------------------------


def _np(x, what):
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.dtype == object:
        raise TypeError(f"{what}: expected a numeric array (tensor or numpy), got {x.dtype} elements; "
                        "convert it, e.g. np.asarray(x, dtype=float)")
    return x


def _features(F, what="features"):
    F = _np(F, what)
    if F.ndim != 2:
        raise ValueError(f"{what}: expected a 2-D (N samples, D dims) array, got shape {F.shape}; pool or flatten first")
    if F.shape[0] < 2 or F.shape[1] < 1:
        raise ValueError(f"{what}: need at least 2 samples and 1 dimension, got shape {F.shape}")
    F = F.astype(np.float64)
    if not np.all(np.isfinite(F)):
        raise ValueError(f"{what}: contains NaN or inf; clean the features (e.g. drop those samples)")
    return F


def _labels(y, n, what="labels", min_classes=2):
    y = _np(y, what).ravel()
    if y.shape[0] != n:
        raise ValueError(f"{what}: {y.shape[0]} labels for {n} samples; pass one label per row")
    if y.dtype.kind == "f" and not np.all(np.isfinite(y)):
        raise ValueError(f"{what}: contains NaN or inf; class labels must be finite (drop the unlabelled samples)")
    classes, yi = np.unique(y, return_inverse=True)  # any label values -> 0..C-1
    if len(classes) < min_classes:
        raise ValueError(f"{what}: need at least {min_classes} classes, got {len(classes)}")
    return yi.astype(np.int64), len(classes)


def _probs(P, n, what="source_probs"):
    P = _np(P, what).astype(np.float64)
    if P.ndim != 2 or P.shape[0] != n:
        raise ValueError(f"{what}: expected (N, source classes) probabilities for N={n}, got shape {P.shape}")
    if not np.all(np.isfinite(P)) or P.min() < 0:
        raise ValueError(f"{what}: must be finite and non-negative (softmax outputs of the source head)")
    s = P.sum(1)
    if not np.allclose(s, 1, atol=1e-4):
        raise ValueError(f"{what}: rows must sum to 1 (apply softmax to the source logits); sums range "
                         f"{s.min():.3g}..{s.max():.3g}")
    return P / s[:, None]


def _warn_wide(n, d, c, metric):
    if d >= n - c:
        warnings.warn(f"{metric}: feature dimension {d} is not small against {n} samples; the score saturates "
                      f"(H-score at C-1 = {c - 1}). Reduce D (PCA) or use hscore(..., shrinkage=True)",
                      RuntimeWarning, stacklevel=3)


# -- LogME -----------------------------------------------------------------------------------------

class FeatureStats:
    """Streaming sufficient statistics of (features, labels): N, sum F, F^T F, class sums and counts.
    Enough for :func:`logme` (classification) and :func:`hscore` without the N x D matrix."""

    def __init__(self, n_classes: int):
        self.C = int(n_classes)
        self.n = 0
        self.FtF = self.s = self.class_sum = None
        self.count = np.zeros(self.C)

    def update(self, F, y):
        F = _features(F)
        y = _np(y, "labels").ravel().astype(np.int64)
        if y.min() < 0 or y.max() >= self.C:
            raise ValueError(f"labels: FeatureStats expects labels in 0..{self.C - 1}, got {y.min()}..{y.max()}")
        if self.FtF is None:
            D = F.shape[1]
            self.FtF, self.s, self.class_sum = np.zeros((D, D)), np.zeros(D), np.zeros((self.C, D))
        self.n += F.shape[0]
        self.FtF += F.T @ F
        self.s += F.sum(0)
        np.add.at(self.class_sum, y, F)
        self.count += np.bincount(y, minlength=self.C)
        return self


def _logme_from_spectrum(sig, x2, t2, N, D, tol=1e-10, max_iter=2000):
    """Evidence maximisation per target column. sig (k,) eigenvalues of F^T F (k <= D nonzero
    directions), x2 (k, C) squared projections of the columns on those directions, t2 (C,) ||t||^2."""
    k = sig.shape[0]
    r0 = np.maximum(t2 - x2.sum(0), 0.0)  # part of t outside the span of F
    # when t lies in the span of F (D >= N) the evidence keeps growing with beta: the residual is floored
    # at 1e-12 ||t||^2, which caps beta where the evidence has converged to its supremum
    floor = 1e-12 * np.maximum(t2, 1e-300)
    alpha = np.ones_like(t2)
    beta = np.ones_like(t2)
    for _ in range(max_iter):
        den = alpha[None] + beta[None] * sig[:, None]
        gamma = (beta[None] * sig[:, None] / den).sum(0)
        m2 = (beta[None] ** 2 * sig[:, None] * x2 / den ** 2).sum(0)
        res2 = np.maximum(r0 + (alpha[None] ** 2 * x2 / den ** 2).sum(0), floor)
        a_new = gamma / np.maximum(m2, 1e-300)
        b_new = np.maximum(N - gamma, 1e-12) / res2
        done = np.all(np.abs(a_new - alpha) <= tol * alpha) and np.all(np.abs(b_new - beta) <= tol * beta)
        alpha, beta = a_new, b_new
        if done:
            break
    den = alpha[None] + beta[None] * sig[:, None]
    m2 = (beta[None] ** 2 * sig[:, None] * x2 / den ** 2).sum(0)
    res2 = np.maximum(r0 + (alpha[None] ** 2 * x2 / den ** 2).sum(0), floor)
    logdet = np.log(den).sum(0) + (D - k) * np.log(alpha)  # zero eigenvalues padded up to D
    ev = (D / 2 * np.log(alpha) + N / 2 * np.log(beta) - N / 2 * np.log(2 * np.pi) - beta / 2 * res2
          - alpha / 2 * m2 - logdet / 2)
    return ev / N, alpha, beta


def _spectrum(F, T):
    """Nonzero eigenvalues s_i of F^T F and the squared projections (U^T T)^2 of the targets on the left
    singular vectors. Fast path: eigh of the smaller Gram matrix (F^T F or F F^T); when that spectrum is
    ill-conditioned (the Gram matrix squares the condition number), an SVD of F itself."""
    N, D = F.shape
    eps = np.finfo(np.float64).eps
    if N >= D:
        sig, V = np.linalg.eigh(F.T @ F)
    else:
        sig, U = np.linalg.eigh(F @ F.T)
    top = sig.max()
    keep = sig > top * eps * max(N, D) * 10
    if top <= 0 or sig[keep].min() < top * 1e-8:  # ill-conditioned: recompute accurately
        U, sv, _ = np.linalg.svd(F, full_matrices=False)
        keep = sv > sv.max() * eps * max(N, D)
        U, sig = U[:, keep], sv[keep] ** 2
        return sig, (U.T @ T) ** 2
    if N >= D:
        sig, V = sig[keep], V[:, keep]
        return sig, (V.T @ (F.T @ T)) ** 2 / sig[:, None]  # (U^T t)^2 with U = F V / s
    sig, U = sig[keep], U[:, keep]
    return sig, (U.T @ T) ** 2


def logme(features, labels=None, *, regression: bool = False, return_params: bool = False):
    """LogME (You, Liu, Wang & Long, ICML 2021; JMLR 2022): the maximum log evidence per sample of a
    Bayesian linear model ``t = F w + eps``, ``w ~ N(0, I / alpha)``, ``eps ~ N(0, I / beta)``:

    ``L(alpha, beta) = D/2 ln alpha + N/2 ln beta - N/2 ln 2 pi - beta/2 ||t - F m||^2 - alpha/2 ||m||^2
    - 1/2 ln |alpha I + beta F^T F|``, ``m = beta A^{-1} F^T t``,

    maximised by MacKay's fixed point ``alpha = gamma / ||m||^2``, ``beta = (N - gamma) / ||t - F m||^2``,
    ``gamma = sum_i beta s_i / (alpha + beta s_i)`` (s_i eigenvalues of F^T F), iterated to convergence
    (relative change 1e-10; the references stop after 11 iterations or at 1e-3). The score is the mean
    over target columns (one-hot classes, or regression targets with ``regression=True``) of L*/N.
    The spectrum is padded with zeros up to D, so it is correct when D > N (thuml/LogME PR #24): all-zero
    feature columns leave it unchanged. ``features`` may also be a :class:`FeatureStats` (classification).
    """
    if isinstance(features, FeatureStats):
        st = features
        N, D = st.n, st.FtF.shape[0]
        sig, V = np.linalg.eigh(st.FtF)
        keep = sig > sig.max() * 1e-12 * max(N, D) if sig.max() > 0 else sig > 0
        sig, V = sig[keep], V[:, keep]
        FtT = st.class_sum.T  # (D, C): F^T t for one-hot t
        x2 = (V.T @ FtT) ** 2 / sig[:, None]
        t2 = st.count.copy()
        ev, a, b = _logme_from_spectrum(sig, x2, t2, N, D)
    else:
        F = _features(features)
        N, D = F.shape
        if regression:
            T = _np(labels, "targets").astype(np.float64)
            T = T[:, None] if T.ndim == 1 else T
            if T.shape[0] != N or not np.all(np.isfinite(T)):
                raise ValueError(f"targets: expected N={N} finite regression targets, got shape {T.shape}")
        else:
            y, C = _labels(labels, N)
            T = np.eye(C)[y]
        sig, x2 = _spectrum(F, T)
        t2 = (T ** 2).sum(0)
        ev, a, b = _logme_from_spectrum(sig, x2, t2, N, D)
    score = float(np.mean(ev))
    return (score, {"alpha": a, "beta": b, "evidence_per_column": ev}) if return_params else score


# -- source-head metrics ---------------------------------------------------------------------------

def leep(source_probs, labels) -> float:
    """LEEP (Nguyen, Hassner, Seeger & Archambeau, ICML 2020), with the log:
    ``P(y, z) = 1/N sum_{i: y_i = y} theta_z(x_i)``, ``P(y | z) = P(y, z) / sum_y' P(y', z)``,
    ``LEEP = 1/N sum_i ln sum_z P(y_i | z) theta_z(x_i)`` (<= 0). (Several reference repositories
    report the mean probability without the log, a different number.)"""
    P = _probs(source_probs, _np(source_probs, "source_probs").shape[0])
    y, C = _labels(labels, P.shape[0])
    joint = np.zeros((C, P.shape[1]))
    np.add.at(joint, y, P)
    joint /= P.shape[0]
    cond = joint / np.maximum(joint.sum(0, keepdims=True), 1e-300)
    eep = (P * cond[y]).sum(1)
    return float(np.mean(np.log(np.maximum(eep, 1e-300))))


def nce(source_labels, labels) -> float:
    """NCE (Tran, Nguyen & Hassner, ICCV 2019): ``-H(Y | Z) = sum_{y,z} P(y, z) ln P(y | z)`` with
    empirical joint counts of target labels y and source predictions z (argmax of the source head);
    unused source classes contribute nothing (<= 0). ``source_labels`` may also be source probabilities."""
    z = _np(source_labels, "source_labels")
    if z.ndim == 2:
        z = z.argmax(1)
    y, C = _labels(labels, z.shape[0])
    zi, _ = _labels(z, z.shape[0], "source_labels", min_classes=1)
    joint = np.zeros((C, zi.max() + 1))
    np.add.at(joint, (y, zi), 1.0)
    joint /= joint.sum()
    pz = joint.sum(0, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        term = np.where(joint > 0, joint * np.log(joint / pz), 0.0)
    return float(term.sum())


# -- feature metrics ---------------------------------------------------------------------------------

def _class_means(F, y, C):
    counts = np.bincount(y, minlength=C).astype(np.float64)
    sums = np.zeros((C, F.shape[1]))
    np.add.at(sums, y, F)
    return sums / counts[:, None], counts


def hscore(features, labels=None, *, shrinkage: bool = False) -> float:
    """H-score (Bao et al., ICIP 2019): ``H = tr(cov(F)^+ cov(E[F | y]))``, where E[F|y] replaces each
    row by its class mean (a true matrix product: one reference multiplies elementwise). With
    ``shrinkage=True`` (Ibrahim, Ponomareva & Mazumder, ICLR 2022): the Ledoit-Wolf estimate
    ``S_LW = (1 - a) S + a tr(S)/D I`` and ``H_a = tr(S_LW^{-1} (1 - a) cov(E[F|y]))``.
    Plain H-score saturates at C - 1 when D is not small against N (a warning says so).
    ``features`` may be a :class:`FeatureStats` (plain H-score only)."""
    if isinstance(features, FeatureStats):
        if shrinkage:
            raise ValueError("shrinkage: the Ledoit-Wolf H-score needs the features themselves, not FeatureStats")
        st = features
        N, C = st.n, st.C
        mu = st.s / N
        S = st.FtF / N - np.outer(mu, mu)
        M = st.class_sum / np.maximum(st.count[:, None], 1)
        Mc = M - mu
        Sb = (Mc.T * (st.count / N)) @ Mc
        _warn_wide(N, S.shape[0], C, "hscore")
        return float(np.trace(np.linalg.pinv(S, rcond=1e-10, hermitian=True) @ Sb))
    F = _features(features)
    y, C = _labels(labels, F.shape[0])
    N, D = F.shape
    Fc = F - F.mean(0)
    M, counts = _class_means(Fc, y, C)
    Sb = (M.T * (counts / N)) @ M  # cov of the class-mean-replaced features
    if shrinkage:
        from sklearn.covariance import LedoitWolf

        lw = LedoitWolf(assume_centered=True).fit(Fc)
        a = lw.shrinkage_
        return float(np.trace(np.linalg.solve(lw.covariance_, (1 - a) * Sb)))
    _warn_wide(N, D, C, "hscore")
    S = Fc.T @ Fc / N
    return float(np.trace(np.linalg.pinv(S, rcond=1e-10, hermitian=True) @ Sb))


def _coding_rate(Z, eps):
    n, d = Z.shape
    if n == 0:
        return 0.0
    G = Z @ Z.T if n < d else Z.T @ Z  # logdet(I + c Z^T Z) = logdet(I + c Z Z^T)
    return 0.5 * np.linalg.slogdet(np.eye(G.shape[0]) + G / (n * eps))[1]


def transrate(features, labels, eps: float = 1e-4) -> float:
    """TransRate (Huang et al., ICML 2022): ``TrR = R(F, eps) - 1/C sum_c R(F_c, eps)`` with the coding
    rate ``R(Z, eps) = 1/2 ln det(I + Z^T Z / (n eps))`` of the centred features (n rows of Z; the
    constant follows the TLlib implementation, the paper's d/(n eps^2) could not be verified). Not
    scale-invariant, and grows with D."""
    F = _features(features)
    y, C = _labels(labels, F.shape[0])
    Fc = F - F.mean(0)
    return float(_coding_rate(Fc, eps) - np.mean([_coding_rate(Fc[y == c], eps) for c in range(C)]))


def _pca(F, variance, seed=0, max_dims=None):
    from sklearn.decomposition import PCA

    if variance is None or F.shape[1] <= 2:
        return F
    Z = PCA(n_components=variance, svd_solver="full", random_state=seed).fit_transform(F)
    return Z[:, :max_dims] if max_dims else Z


def gbc(features, labels, *, gaussian: str = "spherical", pca_variance: float | None = 0.8) -> float:
    """GBC (Pandy et al., CVPR 2022): ``-sum_{i != j} exp(-D_B(c_i, c_j))`` over pairs of classes with
    per-class Gaussians (``spherical`` or ``diagonal``, variances floored at 1e-4) on PCA-reduced
    features (80 % variance), Bhattacharyya distance
    ``D_B = 1/8 sum (mu_1 - mu_2)^2 / s + 1/2 sum [ln s - (ln s_1 + ln s_2) / 2]``, ``s = (s_1 + s_2) / 2``."""
    F = _features(features)
    y, C = _labels(labels, F.shape[0])
    Z = _pca(F, pca_variance)
    mus, vars_ = [], []
    for c in range(C):
        Zc = Z[y == c]
        v = np.maximum(Zc.var(0), 1e-4)
        if gaussian == "spherical":
            v = np.full_like(v, v.mean())
        elif gaussian != "diagonal":
            raise ValueError(f"gaussian: expected 'spherical' or 'diagonal', got {gaussian!r}")
        mus.append(Zc.mean(0))
        vars_.append(v)
    total = 0.0
    for i in range(C):
        for j in range(C):
            if i == j:
                continue
            s = (vars_[i] + vars_[j]) / 2
            db = 0.125 * np.sum((mus[i] - mus[j]) ** 2 / s) + 0.5 * np.sum(
                np.log(s) - 0.5 * np.log(vars_[i]) - 0.5 * np.log(vars_[j]))
            total += np.exp(-db)
    return float(-total)


def _shrunk_lda(X, y, C, lam=None):
    """Regularised LDA (as in SFDA): returns (logits, lam). S_w = sum_c p_c cov_c, lambda =
    max(exp(-5 lambda_max(S_w)), 1e-10), shrinkage towards tr(S)/D I for S_w and S_t."""
    N, D = X.shape
    mu = X.mean(0)
    M, counts = _class_means(X, y, C)
    pri = counts / N
    Sw = np.zeros((D, D))
    for c in range(C):
        Xc = X[y == c] - M[c]
        Sw += pri[c] * (Xc.T @ Xc) / max(len(Xc), 1)
    if lam is None:
        lam = float(max(np.exp(-5 * np.linalg.eigvalsh(Sw)[-1]), 1e-10))

    def shrink(S):
        return (1 - lam) * S + lam * np.trace(S) / D * np.eye(D)

    Xt = X - mu
    St = shrink(Xt.T @ Xt / N)
    Sw_s = shrink(Sw)
    Sb = St - Sw_s
    from scipy.linalg import eigh

    evals, evecs = eigh(Sb, Sw_s)  # symmetric generalised problem (ETran calls eigh on inv(Sw) Sb)
    evecs = evecs[:, np.argsort(evals)[::-1]]
    coef = (M @ evecs) @ evecs.T
    intercept = -0.5 * np.einsum("cd,cd->c", M, coef) + np.log(pri)
    return X @ coef.T + intercept, lam


def _softmax(z):
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def sfda(features, labels) -> float:
    """SFDA (Shao et al., ECCV 2022): regularised Fisher discriminant analysis on the features, ConfMix
    (each sample moved towards the mean of the other classes' means by one minus its LDA probability
    of its own class: ``x <- p_y x + (1 - p_y) mean_{c != y} mu_c``), a second regularised LDA with the
    same lambda, and the score ``1/N sum_i p(y_i | x_i)``. The softmax is applied once (the reference
    applies it twice)."""
    F = _features(features)
    y, C = _labels(labels, F.shape[0])
    logits, lam = _shrunk_lda(F, y, C)
    p = _softmax(logits)
    py = p[np.arange(len(y)), y]
    M, _ = _class_means(F, y, C)
    others = (M.sum(0)[None] - M) / (C - 1)  # mean of the other classes' means, per class
    Fm = py[:, None] * F + (1 - py[:, None]) * others[y]
    logits2, _ = _shrunk_lda(Fm, y, C, lam)
    p2 = _softmax(logits2)
    return float(p2[np.arange(len(y)), y].mean())


def nleep(features, labels, *, components_per_class: int = 5, pca_variance: float = 0.8, max_dims: int = 64,
          seed: int = 0) -> float:
    """N-LEEP (Li et al., CVPR 2021): PCA of the features to 80 % variance (at most ``max_dims``
    dimensions: a full-covariance GMM on hundreds of dimensions takes minutes), a Gaussian mixture with
    ``components_per_class x C`` components (seeded: deterministic), then :func:`leep` with the GMM
    posteriors in place of the source head."""
    from sklearn.mixture import GaussianMixture

    F = _features(features)
    y, C = _labels(labels, F.shape[0])
    Z = _pca(F, pca_variance, seed, max_dims)
    k = max(1, min(components_per_class * C, F.shape[0] // 2))
    gm = GaussianMixture(k, covariance_type="full", reg_covar=1e-4, random_state=seed, max_iter=200).fit(Z)
    return leep(gm.predict_proba(Z), y)


def etran(features, labels, *, part: str = "lda", bottom: float = 0.5) -> float:
    """EXPERIMENTAL. ETran (Gholami et al., ICCV 2023). ``part="lda"``: mean probability of the true
    class under the regularised LDA of :func:`sfda` (first stage; a symmetric generalised eigenproblem,
    where the reference calls eigh on a non-symmetric matrix). ``part="energy"``: the mean of
    ``logsumexp_j F_j(x)`` over the lowest ``bottom`` percent of samples (features used as logits, as in
    the reference). The paper combines them after min-max normalisation across the zoo
    (0.15 energy + 0.85 LDA); :func:`rank` does that as the ``etran`` metric."""
    F = _features(features)
    if part == "energy":
        from scipy.special import logsumexp

        e = np.sort(logsumexp(F, axis=1))
        k = max(1, int(math.ceil(len(e) * bottom / 100)))
        return float(e[:k].mean())
    if part != "lda":
        raise ValueError(f"part: expected 'lda' or 'energy', got {part!r}")
    y, C = _labels(labels, F.shape[0])
    logits, _ = _shrunk_lda(F, y, C)
    return float(_softmax(logits)[np.arange(len(y)), y].mean())


def tmi(features, labels) -> float:
    """EXPERIMENTAL. After Xu & Kang (ICCV 2023), who score transferability by intra-class feature
    variance (no reference code; estimator not verified against the paper): the negative mean over
    classes of the total within-class variance of L2-normalised features. Higher (tighter classes) is
    more transferable."""
    F = _features(features)
    y, C = _labels(labels, F.shape[0])
    Fn = F / np.maximum(np.linalg.norm(F, axis=1, keepdims=True), 1e-12)
    return float(-np.mean([Fn[y == c].var(0).sum() for c in range(C)]))


METRICS = {
    "logme": lambda f, y, p: logme(f, y),
    "leep": lambda f, y, p: leep(p, y) if p is not None else math.nan,
    "nce": lambda f, y, p: nce(p, y) if p is not None else math.nan,
    "hscore": lambda f, y, p: hscore(f, y),
    "hscore_shrinkage": lambda f, y, p: hscore(f, y, shrinkage=True),
    "transrate": lambda f, y, p: transrate(f, y),
    "gbc": lambda f, y, p: gbc(f, y),
    "sfda": lambda f, y, p: sfda(f, y),
    "nleep": lambda f, y, p: nleep(f, y),
    "etran_lda": lambda f, y, p: etran(f, y, part="lda"),
    "etran_energy": lambda f, y, p: etran(f, y, part="energy"),
    "tmi": lambda f, y, p: tmi(f, y),
}
EXPERIMENTAL = {"etran_lda", "etran_energy", "etran", "tmi"}


# -- features from any layer ---------------------------------------------------------------------

def _pool(t: torch.Tensor, pool: str) -> torch.Tensor:
    if t.dim() == 2:
        return t
    if t.dim() == 4 and pool in ("mean", "max"):  # conv maps (B, C, H, W)
        return t.mean((2, 3)) if pool == "mean" else t.amax((2, 3))
    if pool == "mean":
        return t.mean(1)
    if pool == "cls":
        return t[:, 0]
    if pool == "max":
        return t.amax(1)
    if pool == "flatten":
        return t.flatten(1)
    raise ValueError(f"pool: expected 'mean', 'cls', 'max' or 'flatten', got {pool!r}")


def default_layer(model: nn.Module) -> str:
    """The input of the last nn.Linear (the penultimate features), named by that Linear module."""
    last = None
    for n, m in model.named_modules():
        if isinstance(m, nn.Linear):
            last = n
    if last is None:
        raise ValueError("layers: the model has no nn.Linear head; name the layers to read (layers=[...])")
    return last


def features(model: nn.Module, data, layers=None, *, pool: str = "mean", input_of: bool | None = None,
             mask_key: str = "attention_mask", return_outputs: bool = False):
    """Features of named modules for every example of ``data`` (a tensor, a mapping, an (inputs,
    labels) pair or a DataLoader / list of such batches), via forward hooks, in eval mode, no grad.

    ``layers``: module names (default: the input of the last Linear, i.e. penultimate features).
    ``input_of``: read a module's input instead of its output (default: True only for the default layer).
    ``pool``: for (B, T, D) token outputs, ``mean`` (masked by the batch's ``attention_mask`` when given),
    ``cls`` (first token), ``max`` or ``flatten``; conv maps are averaged over space.
    Returns ``{layer: (N, D) float64 array}`` (and the model outputs' softmax if ``return_outputs``).
    """
    from collections.abc import Mapping

    from .data import to_device
    from .params import model_device_dtype
    from .state import preserve

    if layers is None:
        layers = [default_layer(model)]
        input_of = True if input_of is None else input_of
    layers = [layers] if isinstance(layers, str) else list(layers)
    mods = dict(model.named_modules())
    missing = [l for l in layers if l not in mods]
    if missing:
        raise ValueError(f"layers: no module named {missing}; e.g. {[n for n in mods if n][:8]}")
    device, _ = model_device_dtype(model)
    from torch.utils.data import DataLoader

    batches = list(data) if isinstance(data, (DataLoader, list)) else [data]
    out = {l: [] for l in layers}
    probs = []
    with preserve(model), torch.no_grad():
        model.eval()
        current = {}
        handles = []
        for l in layers:
            if input_of:
                handles.append(mods[l].register_forward_pre_hook(lambda m, a, l=l: current.__setitem__(l, a[0])))
            else:
                handles.append(mods[l].register_forward_hook(
                    lambda m, a, o, l=l: current.__setitem__(l, o[0] if isinstance(o, tuple) else o)))
        try:
            for b in batches:
                if isinstance(b, (tuple, list)) and len(b) == 2 and isinstance(b[1], torch.Tensor) and b[1].dim() == 1:
                    b = b[0]
                b = to_device(b, device)
                mask = b.get(mask_key) if isinstance(b, Mapping) else None
                o = model(**b) if isinstance(b, Mapping) else model(*b) if isinstance(b, tuple) else model(b)
                for l in layers:
                    t = current[l]
                    if hasattr(t, "last_hidden_state"):
                        t = t.last_hidden_state
                    if mask is not None and t.dim() == 3 and pool == "mean":
                        w = mask[..., None].to(t.dtype)
                        f = (t * w).sum(1) / w.sum(1).clamp_min(1)
                    else:
                        f = _pool(t, pool)
                    out[l].append(f.double().cpu())
                if return_outputs and isinstance(o, torch.Tensor) and o.dim() == 2:
                    probs.append(torch.softmax(o.double(), -1).cpu())
        finally:
            for h in handles:
                h.remove()
    feats = {l: torch.cat(v).numpy() for l, v in out.items()}
    if return_outputs:
        return feats, (torch.cat(probs).numpy() if probs else None)
    return feats


# -- ranking and evaluation ---------------------------------------------------------------------------

def rank(models: dict, target_data, metrics=None, *, layers=None, pool: str = "mean", progress: bool = True) -> xr.Dataset:
    """Score every (model, layer) for the target task with every metric.

    ``models``: dict name -> nn.Module. ``target_data``: an (inputs, labels) pair or a DataLoader of them.
    ``layers``: None (penultimate features of each model), a list of module names for all models, or a
    dict model name -> list. ``metrics``: names from :data:`METRICS` (default: all but N-LEEP), plus
    ``"etran"`` (the ETran combination across the zoo). LEEP and NCE use the model's own output as the
    source head (penultimate layer only). Returns a Dataset over (model, layer, metric): ``score`` and
    ``seconds``.
    """
    from tqdm.auto import tqdm

    if not isinstance(models, dict) or not models:
        raise ValueError("models: pass a non-empty dict name -> nn.Module")
    metrics = [m for m in METRICS if m != "nleep"] if metrics is None else list(metrics)
    want_etran = "etran" in metrics
    base = [m for m in metrics if m != "etran"]
    if want_etran:
        base += [m for m in ("etran_lda", "etran_energy") if m not in base]
    bad = [m for m in base if m not in METRICS]
    if bad:
        raise ValueError(f"metrics: unknown {bad}; choose from {sorted(METRICS) + ['etran']}")
    x, y = _split_xy(target_data)
    rows = {}
    for name, model in tqdm(models.items(), desc="scoring models", disable=not progress, leave=False):
        lys = layers.get(name) if isinstance(layers, dict) else layers
        feats, probs = features(model, _batches_of(x), lys, pool=pool, return_outputs=True)
        for li, (lname, F) in enumerate(feats.items()):
            key = lname if lys is not None else "penultimate"
            for met in base:
                t0 = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    src = probs if (lys is None or li == len(feats) - 1) else None
                    v = METRICS[met](F, y, src)
                rows[(name, key, met)] = (v, time.perf_counter() - t0)
    mnames = list(models)
    lnames = list(dict.fromkeys(k[1] for k in rows))
    score = np.full((len(mnames), len(lnames), len(base)), np.nan)
    secs = np.full_like(score, np.nan)
    for (m, l, met), (v, s) in rows.items():
        score[mnames.index(m), lnames.index(l), base.index(met)] = v
        secs[mnames.index(m), lnames.index(l), base.index(met)] = s
    ds = xr.Dataset({"score": (("model", "layer", "metric"), score, {"long_name": "transferability score"}),
                     "seconds": (("model", "layer", "metric"), secs, {"units": "s"})},
                    coords={"model": mnames, "layer": lnames, "metric": base})
    if want_etran:
        def mm(v):
            lo, hi = np.nanmin(v), np.nanmax(v)
            return (v - lo) / (hi - lo) if hi > lo else np.zeros_like(v)

        comb = 0.15 * mm(ds.score.sel(metric="etran_energy").values) + 0.85 * mm(ds.score.sel(metric="etran_lda").values)
        extra = xr.Dataset({"score": (("model", "layer", "metric"), comb[..., None]),
                            "seconds": (("model", "layer", "metric"), (ds.seconds.sel(metric="etran_energy")
                                                                        + ds.seconds.sel(metric="etran_lda")).values[..., None])},
                           coords={"model": mnames, "layer": lnames, "metric": ["etran"]})
        ds = xr.concat([ds, extra], dim="metric")
    from .results import provenance

    ds.attrs.update(provenance("transfer.rank", dict(metrics=list(ds.metric.values), layers=layers, pool=pool,
                                                    n_samples=len(y))))
    ds.attrs["experimental_metrics"] = ",".join(sorted(EXPERIMENTAL & set(ds.metric.values.tolist())))
    return ds


def _split_xy(data):
    from torch.utils.data import DataLoader

    if isinstance(data, DataLoader):
        xs, ys = [], []
        for xb, yb in data:
            xs.append(xb)
            ys.append(yb)
        return torch.cat(xs), np.concatenate([_np(v, "labels") for v in ys])
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return data[0], _np(data[1], "labels").ravel()
    raise TypeError("target_data: expected an (inputs, labels) pair or a DataLoader of (inputs, labels)")


def _batches_of(x, size=512):
    if isinstance(x, torch.Tensor):
        return [x[i:i + size] for i in range(0, x.shape[0], size)]
    return [x]


def correlate(scores: xr.DataArray, ground_truth, *, n_boot: int = 1000, confidence: float = 0.95, seed: int = 0,
              top_k: int = 1) -> xr.Dataset:
    """How well each metric's scores rank the models by their ground-truth accuracy.

    ``scores``: DataArray over (model, metric) (e.g. ``rank(...).score.sel(layer="penultimate")``);
    ``ground_truth``: DataArray over model, or a dict / sequence aligned with ``scores.model``.
    Returns a Dataset over ``metric``: ``weighted_tau`` (``scipy.stats.weightedtau``, hyperbolic weights,
    the literature's protocol), ``kendall_tau``, ``pearson``, ``top_k_relative_accuracy`` (best true
    accuracy among the top-k scored models over the best overall), each with bootstrap (over models)
    confidence intervals ``*_low`` / ``*_high``.
    """
    from scipy.stats import kendalltau, pearsonr, weightedtau

    models = [str(m) for m in scores.model.values]
    if isinstance(ground_truth, xr.DataArray):
        gt = np.array([float(ground_truth.sel(model=m)) for m in models]) if "model" in ground_truth.dims else \
            ground_truth.values
    elif isinstance(ground_truth, dict):
        gt = np.array([float(ground_truth[m]) for m in models])
    else:
        gt = np.asarray(ground_truth, float)
    if gt.shape != (len(models),):
        raise ValueError(f"ground_truth: expected one value per model ({len(models)}), got shape {gt.shape}")
    rng = np.random.default_rng(seed)
    mets = [str(m) for m in scores.metric.values]
    stats = {k: np.full(len(mets), np.nan) for k in ("weighted_tau", "kendall_tau", "pearson", "top_k_relative_accuracy")}
    lo = {k: np.full(len(mets), np.nan) for k in stats}
    hi = {k: np.full(len(mets), np.nan) for k in stats}

    def compute(s, g):
        ok = np.isfinite(s)
        s, g = s[ok], g[ok]
        if len(s) < 3 or np.ptp(s) == 0 or np.ptp(g) == 0:
            return dict.fromkeys(stats, np.nan)
        top = np.argsort(-s)[:top_k]
        return {"weighted_tau": weightedtau(s, g).statistic, "kendall_tau": kendalltau(s, g).statistic,
                "pearson": pearsonr(s, g).statistic, "top_k_relative_accuracy": g[top].max() / g.max()}

    a = (1 - confidence) / 2
    for i, met in enumerate(mets):
        s = scores.sel(metric=met).values.astype(float)
        for k, v in compute(s, gt).items():
            stats[k][i] = v
        boots = {k: [] for k in stats}
        for _ in range(n_boot):
            idx = rng.integers(0, len(gt), len(gt))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                r = compute(s[idx], gt[idx])
            for k, v in r.items():
                boots[k].append(v)
        for k in stats:
            b = np.asarray(boots[k], float)
            b = b[np.isfinite(b)]
            if b.size:
                lo[k][i], hi[k][i] = np.quantile(b, [a, 1 - a])
    data = {}
    for k in stats:
        data[k] = ("metric", stats[k])
        data[f"{k}_low"] = ("metric", lo[k])
        data[f"{k}_high"] = ("metric", hi[k])
    ds = xr.Dataset(data, coords={"metric": mets})
    ds.attrs.update(n_models=len(models), n_boot=int(n_boot), confidence=float(confidence))
    return ds


def bootstrap_score(metric, features, labels, *, n_boot: int = 200, confidence: float = 0.95, seed: int = 0):
    """(score, low, high): a metric's value and its bootstrap interval over target samples."""
    F = _features(features)
    y, _ = _labels(labels, F.shape[0])
    fn = METRICS[metric] if isinstance(metric, str) else metric
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(y), len(y))
        if len(np.unique(y[idx])) < 2:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            vals.append(fn(F[idx], y[idx], None) if isinstance(metric, str) else fn(F[idx], y[idx]))
    a = (1 - confidence) / 2
    v0 = fn(F, y, None) if isinstance(metric, str) else fn(F, y)
    lo, hi = np.quantile(vals, [a, 1 - a])
    return float(v0), float(lo), float(hi)


# -- ground-truth harness --------------------------------------------------------------------------

def linear_probe_accuracy(model: nn.Module, train, test, *, layer: str | None = None, pool: str = "mean",
                          C: float = 1.0, seed: int = 0) -> float:
    """Test accuracy of multinomial logistic regression (L2, C=1) on frozen, standardised features of
    ``layer`` (default the penultimate), trained on ``train`` = (inputs, labels)."""
    from sklearn.linear_model import LogisticRegression

    ftr = features(model, _batches_of(train[0]), None if layer is None else [layer], pool=pool)
    fte = features(model, _batches_of(test[0]), None if layer is None else [layer], pool=pool)
    ftr, fte = next(iter(ftr.values())), next(iter(fte.values()))
    mu, sd = ftr.mean(0), ftr.std(0) + 1e-8
    clf = LogisticRegression(C=C, max_iter=3000, random_state=seed)
    clf.fit((ftr - mu) / sd, _np(train[1], "labels"))
    return float(clf.score((fte - mu) / sd, _np(test[1], "labels")))


def finetune_accuracy(model: nn.Module, train, test, *, epochs: int = 8, lr: float = 3e-3, batch_size: int = 32,
                      head: str = "head", seed: int = 0) -> float:
    """Test accuracy after fine-tuning a copy of ``model`` (the user's model is not touched): the module
    named ``head`` (a Linear) is replaced by a fresh Linear for the target classes and the whole network
    is trained with Adam (``lr``, ``batch_size``, ``epochs``, seeded) on ``train``."""
    import copy

    xtr, ytr = train
    xte, yte = test
    ytr = torch.as_tensor(_labels(ytr, len(ytr))[0])
    classes = np.unique(_np(train[1], "labels"))
    yte = torch.as_tensor(np.searchsorted(classes, _np(yte, "labels")))
    torch.manual_seed(seed)
    m = copy.deepcopy(model)
    old = getattr(m, head, None)
    if not isinstance(old, nn.Linear):
        raise ValueError(f"head: the model has no nn.Linear attribute {head!r} to replace")
    setattr(m, head, nn.Linear(old.in_features, len(classes)))
    for p in m.parameters():
        p.requires_grad_(True)
    opt = torch.optim.Adam(m.parameters(), lr=lr)
    lf = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(seed)
    m.train()
    for _ in range(epochs):
        perm = torch.randperm(len(ytr), generator=g)
        for i in range(0, len(ytr), batch_size):
            idx = perm[i:i + batch_size]
            loss = lf(m(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    m.eval()
    with torch.no_grad():
        return float((m(xte).argmax(1) == yte).float().mean())
