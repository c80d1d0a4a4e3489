"""Benchmark: ``workbench.weightspace.weight_spectra`` side by side with the ``weightwatcher`` package (0.7.7, the
``bench`` extra) on the same models: a planted power-law layer, a random-init MLP, the zoo's trained MLP and CNN
(digits), and a wide random + planted CNN. Per layer: alpha, xmin, KS distance, lambda_max, stable rank.

Where the two differ, and why (read from weightwatcher's source):

* **fit range**: both fit a continuous power law by maximum likelihood with xmin chosen by the smallest KS
  distance (Clauset et al.). weightwatcher (its own ``WWFit``, ``pl_package='ww'``) tries every eigenvalue but the
  largest as xmin (tails down to 2 points) and measures D against one side of the empirical CDF's steps
  (``k / n``); workbench needs ``min_tail`` (10) points and takes both sides (``k / n`` and ``(k + 1) / n``), the
  KS statistic proper. On heavy tails they pick the same or a nearby xmin; on small or near-MP spectra a 2-5
  point tail can win in weightwatcher and alpha then differs a lot. Below 20 eigenvalues weightwatcher switches to
  another estimator (``fit_powerlaw_smallN``, a prior on alpha): the 10-class heads differ for that reason.
* **eigenvalue floor**: weightwatcher drops eigenvalues <= 1e-5 (absolute), workbench <= 1e-10 lambda_max.
* **convolutions**: both read a ``(out, in, kh, kw)`` kernel as kh*kw matrices ``(out, in)`` whose eigenvalues are
  pooled into one ESD (``pool=True``). weightwatcher then multiplies conv weights by ``sqrt(conv2d_count / 2)`` =
  ``sqrt(1/2)`` (``conv2d_norm=True``, pooled count 1), so its conv eigenvalues, lambda_max and norms are half of
  workbench's (alpha and stable rank are scale-free and unchanged; alpha_weighted shifts by alpha log10(2)).
* **which layers**: weightwatcher's ``min_evals`` counts the pooled eigenvalues (a 1 -> 8 channel 3x3 conv has 9),
  workbench's the eigenvalues per matrix (M = 1 there: left out).
* **MP soft rank / traps**: weightwatcher fits the MP bulk of the shuffled W numerically (``mp_fit``);
  workbench uses the analytic edge ``sigma^2 (sqrt(N) + sqrt(M))^2`` from W's element variance.

Run: .venv/bin/python benchmarks/weightspace_spectra.py
"""

import copy
import logging
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import need  # noqa: E402

from workbench import zoo  # noqa: E402
from workbench.weightspace import weight_spectra  # noqa: E402


def planted(a: float, n: int = 600, bulk: int = 300, seed: int = 0) -> torch.nn.Module:
    """A Linear layer whose W^T W has the quantiles of p(x) ~ x^-a on x >= 1 plus a uniform bulk below 1."""
    g = torch.Generator().manual_seed(seed)
    tail = (1 - (np.arange(n) + 0.5) / n) ** (-1 / (a - 1))
    lam = np.r_[tail, np.linspace(0.05, 0.9, bulk)]
    m = lam.size
    u, _ = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64))
    w = u @ torch.diag(torch.from_numpy(np.sqrt(lam))) @ v.T
    lin = torch.nn.Linear(m, m, bias=False)
    with torch.no_grad():
        lin.weight.copy_(w)
    return torch.nn.Sequential(lin)


def models():
    torch.manual_seed(0)
    out = {f"planted a={a}": planted(a) for a in (2.0, 3.0, 4.0)}
    out["random MLP 512-256-128"] = torch.nn.Sequential(
        torch.nn.Linear(512, 256), torch.nn.ReLU(), torch.nn.Linear(256, 128)
    )
    conv = torch.nn.Sequential(torch.nn.Conv2d(64, 128, 3), torch.nn.ReLU(), torch.nn.Conv2d(128, 128, 3))
    out["random CNN 64-128-128 (3x3)"] = conv
    for name in ("mlp-sgd-small-s0", "cnn-sgd-small-s0"):
        out[f"zoo {name}"] = zoo.load(name)
    return out


def main():
    ww = need("weightwatcher", "weightwatcher==0.7.7")
    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    print(f"weightwatcher {ww.__version__}; workbench weight_spectra (min_tail=10)\n")
    head = (
        f"{'model / layer':44s} {'alpha wb':>8s} {'alpha ww':>8s} {'xmin wb':>9s} {'xmin ww':>9s} {'D wb':>6s} "
        f"{'D ww':>6s} {'lmax wb':>9s} {'lmax ww':>9s} {'srank wb':>8s} {'srank ww':>8s}"
    )
    print(head)
    gaps = []
    for label, model in models().items():
        t0 = time.perf_counter()
        ours = weight_spectra(model, progress=False, keep_eigenvalues=False)
        t_ours = time.perf_counter() - t0
        watcher = ww.WeightWatcher(model=copy.deepcopy(model))
        t0 = time.perf_counter()
        details = watcher.analyze(randomize=False, vectors=False, detX=False, plot=False, min_evals=8)
        t_ww = time.perf_counter() - t0
        print(f"{label}  (workbench {t_ours:.2f} s, weightwatcher {t_ww:.2f} s)")
        by_name = {str(n): i for i, n in enumerate(details["name"])}  # weightwatcher names the leaf module
        for layer in ours.layer.values:
            i = by_name.get(layer.removesuffix(".weight").split(".")[-1])
            if i is None:
                print(f"  {layer:42s} (not analysed by weightwatcher)")
                continue
            r = details.iloc[i]
            o = ours.sel(layer=layer)
            a_wb, a_ww = float(o.alpha), float(r["alpha"])
            gaps.append(abs(a_wb - a_ww))
            print(
                f"  {layer:42s} {a_wb:8.3f} {a_ww:8.3f} {float(o.xmin):9.4g} {float(r['xmin']):9.4g} "
                f"{float(o.ks_distance):6.3f} {float(r['D']):6.3f} {float(o.lambda_max):9.4g} "
                f"{float(r['lambda_max']):9.4g} {float(o.stable_rank):8.2f} {float(r['stable_rank']):8.2f}"
            )
    print(f"\n|alpha wb - alpha ww|: median {np.median(gaps):.3f}, max {np.max(gaps):.3f} over {len(gaps)} layers")


if __name__ == "__main__":
    main()
