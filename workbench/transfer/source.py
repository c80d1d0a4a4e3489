"""Metrics from a source classifier's outputs on the target data: LEEP, NCE, and N-LEEP (LEEP with a
Gaussian mixture on the features in place of the source head)."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.mixture import GaussianMixture

from .geometry import pca
from .validation import MAX_ABS, as_array, class_labels, feature_matrix, probabilities

__all__ = ["leep", "nce", "nleep"]


def leep(source_probs: Any, labels: Any) -> float:
    """LEEP (Nguyen, Hassner, Seeger & Archambeau, ICML 2020), with the log:
    ``P(y, z) = 1/N sum_{i: y_i = y} theta_z(x_i)``, ``P(y | z) = P(y, z) / sum_y' P(y', z)``,
    ``LEEP = 1/N sum_i ln sum_z P(y_i | z) theta_z(x_i)`` (<= 0). ``source_probs``: (N, Cs) softmax
    outputs of the source head. (Several reference repositories report the mean probability without
    the log, a different number.)

    >>> P = np.array([[0.9, 0.1], [0.2, 0.8], [0.8, 0.2], [0.1, 0.9]])
    >>> bool(leep(P, [0, 1, 0, 1]) > leep(P, [0, 0, 1, 1]))
    True
    """
    P = probabilities(source_probs, as_array(source_probs, "source_probs").shape[0])
    y, C = class_labels(labels, P.shape[0])
    joint = np.zeros((C, P.shape[1]))
    np.add.at(joint, y, P)
    joint /= P.shape[0]
    cond = joint / np.maximum(joint.sum(0, keepdims=True), 1e-300)
    eep = (P * cond[y]).sum(1)
    return float(np.mean(np.log(np.maximum(eep, 1e-300))))


def nce(source_labels: Any, labels: Any) -> float:
    """NCE (Tran, Nguyen & Hassner, ICCV 2019): ``-H(Y | Z) = sum_{y,z} P(y, z) ln P(y | z)`` with
    empirical joint counts of target labels y and source predictions z (argmax of the source head);
    unused source classes contribute nothing (<= 0). ``source_labels`` may also be source probabilities.

    >>> nce([0, 1, 0, 1], ["a", "b", "a", "b"])  # y determined by z
    0.0
    """
    z = as_array(source_labels, "source_labels")
    if z.ndim == 2:
        z = z.argmax(1)
    y, C = class_labels(labels, z.shape[0])
    zi, _ = class_labels(z, z.shape[0], "source_labels", min_classes=1)
    joint = np.zeros((C, zi.max() + 1))
    np.add.at(joint, (y, zi), 1.0)
    joint /= joint.sum()
    pz = joint.sum(0, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        term = np.where(joint > 0, joint * np.log(joint / pz), 0.0)
    return float(term.sum())


def nleep(
    features: Any,
    labels: Any,
    *,
    components_per_class: int = 5,
    pca_variance: float = 0.8,
    max_dims: int = 64,
    seed: int = 0,
) -> float:
    """N-LEEP (Li et al., CVPR 2021): PCA of the features to 80 % variance (at most ``max_dims``
    dimensions: a full-covariance GMM on hundreds of dimensions takes minutes), a Gaussian mixture with
    ``components_per_class x C`` components (seeded: deterministic), then :func:`leep` with the GMM
    posteriors in place of the source head.

    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 2, 40)
    >>> nleep(np.eye(2)[y] * 5 + rng.normal(size=(40, 2)), y, components_per_class=1) > -0.1
    True
    """
    F = feature_matrix(features, max_abs=MAX_ABS)
    y, C = class_labels(labels, F.shape[0])
    Z = pca(F, pca_variance, seed, max_dims)
    k = max(1, min(components_per_class * C, F.shape[0] // 2))
    gm = GaussianMixture(k, covariance_type="full", reg_covar=1e-4, random_state=seed, max_iter=200).fit(Z)
    return leep(gm.predict_proba(Z), y)
