"""Benchmark: LogME on N=5000, D=2048, C=100 (synthetic ReLU features), workbench against a plain numpy
SVD implementation of the same fixed point in the same run (target: >= 2x faster, equal values to 1e-6
relative), and the time of every metric at that size; then the validation table on the demo zoo: the weighted
and Kendall tau of every metric against the fine-tuned accuracy of the 12 transfer sources, per target, with
95 % BCa intervals over the sources (workbench.stats.interval), and the spread of the ground truth.
Run: .venv/bin/python benchmarks/transfer.py          (both parts)
     .venv/bin/python benchmarks/transfer.py zoo      (the zoo table only)
"""

import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import interleaved  # noqa: E402

import workbench.transfer as T  # noqa: E402

N, D, C = 5000, 2048, 100
rng = np.random.default_rng(0)
y = rng.integers(0, C, N)
W = rng.normal(size=(64, D)) / 8
F = np.maximum(rng.normal(size=(C, 64))[y] @ W + rng.normal(size=(N, D)), 0.0)


def plain_svd_logme(F, y, tol=1e-10, max_iter=2000):
    """The textbook route: a full SVD of F, then the fixed point per class column (numpy, float64)."""
    N, D = F.shape
    U, s, _ = np.linalg.svd(F, full_matrices=False)
    sig = s**2
    k = len(sig)
    out = []
    for c in range(y.max() + 1):
        t = (y == c).astype(np.float64)
        x = U.T @ t
        x2 = x**2
        r0 = t @ t - x2.sum()
        a, b = 1.0, 1.0
        for _ in range(max_iter):
            den = a + b * sig
            gamma = (b * sig / den).sum()
            m2 = (b**2 * sig * x2 / den**2).sum()
            res2 = r0 + (a**2 * x2 / den**2).sum()
            a2, b2 = gamma / m2, (N - gamma) / res2
            done = abs(a2 - a) <= tol * a and abs(b2 - b) <= tol * b
            a, b = a2, b2
            if done:
                break
        den = a + b * sig
        m2 = (b**2 * sig * x2 / den**2).sum()
        res2 = r0 + (a**2 * x2 / den**2).sum()
        ev = (
            D / 2 * np.log(a)
            + N / 2 * np.log(b)
            - N / 2 * np.log(2 * np.pi)
            - b / 2 * res2
            - a / 2 * m2
            - (np.log(den).sum() + (D - k) * np.log(a)) / 2
        )
        out.append(ev / N)
    return float(np.mean(out))


def speed():
    times, outs = interleaved(
        {"workbench logme": lambda: T.logme(F, y), "plain numpy SVD": lambda: plain_svd_logme(F, y)}, repeat=3
    )
    print(f"LogME, N={N}, D={D}, C={C} (threads: numpy's default)")
    for k, t in times.items():
        print(f"  {k:18s} {t:7.2f} s   value {outs[k]:.10f}")
    print(
        f"  speed-up {times['plain numpy SVD'] / times['workbench logme']:.2f}x (target >= 2), relative difference "
        f"{abs(outs['workbench logme'] - outs['plain numpy SVD']) / abs(outs['plain numpy SVD']):.1e} (target <= 1e-6)"
    )
    print("every metric at this size (one run each):")
    P = rng.dirichlet(np.ones(50), N)
    for name in T.METRICS:
        t0 = time.perf_counter()
        try:
            v = T.METRICS[name](F, y, P)
            msg = f"{v: .6g}"
        except Exception as e:  # report, do not stop the table
            msg = f"failed: {type(e).__name__}: {e}"
        print(
            f"  {name:18s} {time.perf_counter() - t0:8.2f} s   {msg}"
            f"{'   (experimental)' if name in T.EXPERIMENTAL else ''}",
            flush=True,
        )


def zoo_table(n_resamples=2000):
    """The tau of every metric against fine-tuned accuracy on each target of the demo zoo, with intervals."""
    import warnings

    import workbench.zoo as zoo
    from workbench.zoo import transfer as zt

    warnings.simplefilter("ignore", RuntimeWarning)
    zoo.build(zoo.names("transfer"))
    models = {n: zoo.load(n) for n in zoo.names("transfer")}
    gt = zoo.transfer_ground_truth().rename(source="model")
    mets = ["logme", "leep", "nce", "hscore", "hscore_shrinkage", "transrate", "gbc", "sfda", "nleep", "etran", "tmi"]
    cols = {}
    for t in zt.TARGETS:
        ft = gt.finetune_acc.sel(target=t).values
        t0 = time.perf_counter()
        r = T.rank(models, zt.target_data(t, "train"), metrics=mets, progress=False)
        c = T.correlate(r.score.sel(layer="penultimate"), gt.finetune_acc.sel(target=t), n_resamples=n_resamples)
        print(
            f"{t}: {len(models)} sources, fine-tuned accuracy {ft.min():.3f}-{ft.max():.3f} (spread "
            f"{ft.max() - ft.min():.3f}, without the weakest {ft.max() - np.sort(ft)[1]:.3f}); rank + correlate "
            f"{time.perf_counter() - t0:.1f} s",
            flush=True,
        )
        cols[t] = c
    for k, name in (("weighted_tau", "weighted tau"), ("kendall_tau", "Kendall tau-b")):
        print(f"\n{name} against fine-tuned accuracy [95 % BCa interval over sources, {n_resamples} resamples]")
        print(f"  {'metric':18s}" + "".join(f"{t:>24s}" for t in cols))
        for m in cols[next(iter(cols))].metric.values:
            row = "".join(
                f"{float(c[k].sel(metric=m)):+.2f} [{float(c[k + '_low'].sel(metric=m)):+.2f}, "
                f"{float(c[k + '_high'].sel(metric=m)):+.2f}]".rjust(24)
                for c in cols.values()
            )
            print(f"  {str(m):18s}{row}{'   (experimental)' if m in T.EXPERIMENTAL else ''}")


if __name__ == "__main__":
    if sys.argv[1:] != ["zoo"]:
        speed()
    zoo_table()
