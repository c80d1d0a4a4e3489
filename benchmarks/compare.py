"""Benchmark: workbench.compare's calibration metrics side by side with netcal 1.4.0 on the same predictions
(the demo zoo's MLPs on the test digits, and synthetic overconfident logits), and the cost of the CKA family.

netcal's ``ECE`` and ``MCE`` use equal-width bins ((b-1)/M, b/M] like workbench's ``ece``/``mce``: the values
must agree to rounding. netcal's ``ACE`` is Neumann et al.'s *average* calibration error (the unweighted mean
gap over non-empty equal-width bins), not the *adaptive* calibration error of Nixon et al. that
``workbench.compare.ace`` computes; its equal-width counterpart is computed here from
``workbench.compare.reliability`` and compared, and both ACEs are printed.
Run: .venv/bin/python benchmarks/compare.py
"""

import os
import sys
import time

import numpy as np
import torch
from scipy.special import softmax

sys.path.insert(0, os.path.dirname(__file__))
from _common import need  # noqa: E402

import workbench.compare as C  # noqa: E402
from workbench import zoo  # noqa: E402

netcal = need("netcal.metrics", "netcal")


def predictions():
    x, y = zoo.data("test")
    out = {}
    for name in ("mlp-sgd-small-s0", "mlp-sam-s0", "mlp-sgd-large-s0"):
        with torch.no_grad():
            out[name] = (softmax(zoo.load(name)(x).double().numpy(), axis=1), y.numpy())
    rng = np.random.default_rng(0)
    z = 3 * rng.normal(size=(5000, 10))
    u = rng.random(5000)[:, None]
    ys = np.minimum((np.cumsum(softmax(z / 2.0, axis=1), axis=1) < u).sum(1), 9)
    out["synthetic T*=2 (n=5000)"] = (softmax(z, axis=1), ys)
    return out


def minibatch(X, Y, b):
    acc = C.MinibatchCKA()
    for i in range(0, len(X), b):
        acc.update(X[i : i + b], Y[i : i + b])
    return acc.value


def main():
    print(f"{'predictions':28s} {'bins':>4s} {'metric':>6s} {'workbench':>12s} {'netcal':>12s} {'|diff|':>9s}")
    worst = 0.0
    for name, (p, y) in predictions().items():
        for bins in (10, 15, 20):
            r = C.reliability(p, y, bins)
            ok = r["count"].values > 0
            ours = {
                "ECE": C.ece(p, y, bins),
                "MCE": C.mce(p, y, bins),
                "ACE": float(np.mean(np.abs(r.accuracy.values - r.confidence.values)[ok])),
            }
            theirs = {
                "ECE": netcal.ECE(bins).measure(p, y),
                "MCE": netcal.MCE(bins).measure(p, y),
                "ACE": netcal.ACE(bins).measure(p, y),
            }
            for k in ours:
                d = abs(ours[k] - theirs[k])
                worst = max(worst, d)
                print(f"{name:28s} {bins:4d} {k:>6s} {ours[k]:12.6f} {theirs[k]:12.6f} {d:9.2e}")
            print(f"{'':28s} {bins:4d} {'ACE*':>6s} {C.ace(p, y, bins):12.6f} {'(Nixon)':>12s}")
    print(f"largest difference: {worst:.2e} (equal-width ECE/MCE and Neumann's ACE)")
    # the CKA family: cost at n = 2000 examples, d = 512 features
    rng = np.random.default_rng(1)
    X = rng.normal(size=(2000, 512))
    Y = np.tanh(X @ rng.normal(size=(512, 256)) / 20)
    for label, f in (
        ("linear CKA (feature space)", lambda: C.linear_cka(X, Y)),
        ("linear CKA (Gram matrices)", lambda: C.cka(X, Y)),
        ("debiased linear CKA (feature space)", lambda: C.linear_cka(X, Y, debiased=True)),
        ("debiased linear CKA (Gram matrices)", lambda: C.cka(X, Y, debiased=True)),
        ("RBF CKA", lambda: C.rbf_cka(X, Y)),
        ("minibatch CKA, 8 batches of 250", lambda: minibatch(X, Y, 250)),
        ("Procrustes", lambda: C.procrustes(X, Y)),
        ("SVCCA", lambda: C.svcca(X, Y)),
        ("PWCCA", lambda: C.pwcca(X, Y)),
    ):
        t0 = time.perf_counter()
        v = f()
        print(f"{label:38s} {v:9.5f} {time.perf_counter() - t0:8.3f} s")


if __name__ == "__main__":
    main()
