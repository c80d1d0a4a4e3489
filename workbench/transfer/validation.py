"""The input checks every transferability metric shares: numeric arrays, (N, D) features, class
labels remapped to 0..C-1 and source-head probabilities, with errors that name the argument."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

__all__ = ["as_array", "feature_matrix", "class_labels", "probabilities", "warn_wide"]


def as_array(x: Any, what: str) -> np.ndarray:
    """``x`` (tensor, array or sequence) as a numeric numpy array; ``what`` names it in errors.

    >>> as_array(torch.tensor([1, 2]), "labels")
    array([1, 2])
    """
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.dtype == object:
        raise TypeError(
            f"{what}: expected a numeric array (tensor or numpy), got {x.dtype} elements; "
            "convert it, e.g. np.asarray(x, dtype=float)"
        )
    return x


def feature_matrix(F: Any, what: str = "features") -> np.ndarray:
    """``F`` as a finite float64 ``(N, D)`` matrix with N >= 2 and D >= 1.

    >>> feature_matrix([[1, 2], [3, 4]]).dtype
    dtype('float64')
    """
    F = as_array(F, what)
    if F.ndim != 2:
        raise ValueError(
            f"{what}: expected a 2-D (N samples, D dims) array, got shape {F.shape}; pool or flatten first"
        )
    if F.shape[0] < 2 or F.shape[1] < 1:
        raise ValueError(f"{what}: need at least 2 samples and 1 dimension, got shape {F.shape}")
    F = F.astype(np.float64)
    if not np.all(np.isfinite(F)):
        raise ValueError(f"{what}: contains NaN or inf; clean the features (e.g. drop those samples)")
    return F


def class_labels(y: Any, n: int, what: str = "labels", min_classes: int = 2) -> tuple[np.ndarray, int]:
    """``(labels remapped to 0..C-1 as int64, C)`` for ``n`` samples; any label values are accepted.

    >>> class_labels(["b", "a", "b"], 3)
    (array([1, 0, 1]), 2)
    """
    y = as_array(y, what).ravel()
    if y.shape[0] != n:
        raise ValueError(f"{what}: {y.shape[0]} labels for {n} samples; pass one label per row")
    if y.dtype.kind == "f" and not np.all(np.isfinite(y)):
        raise ValueError(f"{what}: contains NaN or inf; class labels must be finite (drop the unlabelled samples)")
    classes, yi = np.unique(y, return_inverse=True)  # any label values -> 0..C-1
    if len(classes) < min_classes:
        raise ValueError(f"{what}: need at least {min_classes} classes, got {len(classes)}")
    return yi.astype(np.int64), len(classes)


def probabilities(P: Any, n: int, what: str = "source_probs") -> np.ndarray:
    """``P`` as ``(n, source classes)`` float64 probabilities whose rows sum to 1 (renormalised).

    >>> probabilities([[0.25, 0.75], [1.0, 0.0]], 2).sum(1)
    array([1., 1.])
    """
    P = as_array(P, what).astype(np.float64)
    if P.ndim != 2 or P.shape[0] != n:
        raise ValueError(f"{what}: expected (N, source classes) probabilities for N={n}, got shape {P.shape}")
    if not np.all(np.isfinite(P)) or P.min() < 0:
        raise ValueError(f"{what}: must be finite and non-negative (softmax outputs of the source head)")
    s = P.sum(1)
    if not np.allclose(s, 1, atol=1e-4):
        raise ValueError(
            f"{what}: rows must sum to 1 (apply softmax to the source logits); sums range {s.min():.3g}..{s.max():.3g}"
        )
    return P / s[:, None]


def warn_wide(n: int, d: int, c: int, metric: str) -> None:
    """A RuntimeWarning when ``d >= n - c``: the H-score then saturates at C - 1.

    >>> warn_wide(100, 5, 3, "hscore")  # narrow enough: silent
    """
    if d >= n - c:
        warnings.warn(
            f"{metric}: feature dimension {d} is not small against {n} samples; the score saturates "
            f"(H-score at C-1 = {c - 1}). Reduce D (PCA) or use hscore(..., shrinkage=True)",
            RuntimeWarning,
            stacklevel=3,
        )
