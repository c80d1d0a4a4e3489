"""The input checks every transferability metric shares: numeric arrays, (N, D) features, class
labels remapped to 0..C-1 and source-head probabilities, with errors that name the argument."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from ..data import as_data

__all__ = [
    "as_array",
    "feature_matrix",
    "class_labels",
    "probabilities",
    "warn_wide",
    "unit_scale",
    "MAX_ABS",
    "labelled",
    "as_argument",
]

#: features above this magnitude overflow the covariances of the scale-dependent metrics
MAX_ABS = 1e100


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


def feature_matrix(F: Any, what: str = "features", max_abs: float | None = None) -> np.ndarray:
    """``F`` as a finite float64 ``(N, D)`` matrix with N >= 2 and D >= 1, not constant across the samples;
    with ``max_abs`` (scale-dependent metrics), no larger entries than that (their covariances overflow).

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
    if np.all(F == F[:1]):
        raise ValueError(
            f"{what}: every feature is constant across the samples, so no metric can tell the classes apart "
            "(a dead layer? check the model and the inputs)"
        )
    if max_abs is not None and np.abs(F).max() > max_abs:
        raise ValueError(
            f"{what}: values up to {np.abs(F).max():.3g} overflow this metric's covariances; rescale the "
            "features (e.g. standardise them), or use a scale-invariant metric (LogME, H-score)"
        )
    return F


def unit_scale(F: np.ndarray) -> tuple[np.ndarray, float]:
    """``(F / c, c)`` with ``c`` the root-mean-square entry of ``F``, computed without overflow or underflow:
    the scale-invariant metrics run on unit-scale features at any feature scale.

    >>> G, c = unit_scale(np.array([[3e200, 0.0], [0.0, 4e200]]))
    >>> G.tolist(), round(float(c) / 2.5e200, 12)
    ([[1.2, 0.0], [0.0, 1.6]], 1.0)
    """
    m = float(np.abs(F).max())
    G = F / m
    r = float(np.sqrt(np.mean(G * G)))
    return G / r, m * r


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


def labelled(data: Any, what: str, device=None, dtype=None) -> tuple[torch.Tensor, np.ndarray]:
    """``(inputs, labels)`` of labelled target data: the inputs as one tensor on ``device`` (floating ones in
    ``dtype``), the labels as a 1-D numpy array of any values (class names, ids...). ``data`` is an
    ``(inputs, labels)`` pair, a DataLoader or a list of ``(inputs, labels)`` batches; errors name ``what``.

    >>> x, y = labelled((np.zeros((3, 2)), ["a", "b", "a"]), "train")
    >>> x.dtype, y.tolist()
    (torch.float64, ['a', 'b', 'a'])
    """

    def adapted(d):
        try:
            return as_data(d, device, dtype)
        except (TypeError, ValueError) as e:
            msg = str(e)
            raise type(e)(what + msg[4:] if msg.startswith("data:") else f"{what}: {msg}") from None

    if isinstance(data, (tuple, list)) and len(data) == 2 and not all(isinstance(b, (tuple, list)) for b in data):
        x, labels = data
        raw = as_array(labels, f"{what} labels")
        x = adapted((x, torch.arange(raw.shape[0] if raw.ndim else 1))).materialize()[0]
    else:
        x, y = adapted(data).materialize()
        raw = as_array(y, f"{what} labels")
    if raw.ndim > 1 and raw.size == raw.shape[0]:
        raw = raw.ravel()  # (N, 1) labels
    if raw.ndim != 1:
        raise ValueError(f"{what} labels: expected one label per sample, got shape {raw.shape}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what}: the inputs must be one tensor (or array), got {type(x).__name__}")
    return x, raw


def as_argument(run, arg: str, inner: str = "data"):
    """``run()``, with a clear error of a probe called inside (whose data argument is ``inner``) renamed to
    this call's argument ``arg`` (e.g. :func:`~workbench.transfer.features`' ``data:`` as ``target_data:``).

    >>> as_argument(lambda: 1, "train")
    1
    """
    try:
        return run()
    except (ValueError, TypeError) as e:
        msg = str(e)
        if not msg.startswith(inner + ":"):
            raise
        raise type(e)(arg + msg[len(inner) :]) from e
