"""scikit-learn's digits (1797 8x8 images, 10 classes), shipped inside scikit-learn: no download.

Pixels are scaled to [0, 1] (divided by 16). The train/test split is fixed (stratified, seed 0).
"""

from __future__ import annotations

import functools

import numpy as np
import torch


@functools.lru_cache(maxsize=1)
def _digits():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    idx = np.arange(len(y))
    tr, te = train_test_split(idx, test_size=0.25, stratify=y, random_state=0)
    return x, y, np.sort(tr), np.sort(te)


def digits(split: str = "train", image: bool = False, classes=None, transform: str | None = None):
    """(inputs, targets) tensors of the digits set.

    split: 'train' (1347), 'test' (450) or 'all' (1797). image=True gives (n, 1, 8, 8) inputs,
    else (n, 64). classes: keep only these labels, relabelled 0..k-1 in the order given.
    transform: None, 'flip' (left-right mirror), 'invert' (1 - x) or 'noise' (fixed Gaussian noise, sd 0.3).
    """
    x, y, tr, te = _digits()
    sel = {"train": tr, "test": te, "all": np.arange(len(y))}.get(split)
    if sel is None:
        raise ValueError(f"split: expected 'train', 'test' or 'all', got {split!r}")
    x, y = x[sel], y[sel]
    if classes is not None:
        classes = list(classes)
        keep = np.isin(y, classes)
        x, y = x[keep], y[keep]
        remap = {c: i for i, c in enumerate(classes)}
        y = np.array([remap[v] for v in y], dtype=np.int64)
    if transform == "flip":
        x = x.reshape(-1, 8, 8)[:, :, ::-1].reshape(-1, 64)
    elif transform == "invert":
        x = 1.0 - x
    elif transform == "noise":
        rng = np.random.default_rng(1234)
        x = x + rng.normal(0, 0.3, size=x.shape).astype(np.float32)
    elif transform is not None:
        raise ValueError(f"transform: expected None, 'flip', 'invert' or 'noise', got {transform!r}")
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    if image:
        xt = xt.reshape(-1, 1, 8, 8)
    return xt, torch.from_numpy(y)
