"""Benchmark: Hessian top-k eigenvalues and trace of the demo MLP (8,970 parameters), against the
exact Hessian, side by side in one run:

  * workbench: Lanczos with full reorthogonalisation (top-k), Hutch++ and XTrace (trace);
  * a plain baseline: scipy eigsh over a torch.func HVP LinearOperator; plain Hutchinson;
  * PyHessian 0.1 (PyPI): power iteration with deflation (top-k), Hutchinson with its relative-change stop.

Prints relative error against the exact spectrum, HVP count and seconds (medians over seeds).
The exact Hessian (8,970 HVPs + eigvalsh, a few minutes on 2 cores) is cached under zoo.cache_root() / "bench".
Run: .venv/bin/python benchmarks/sharpness.py [--samples 512]
"""

import argparse
import hashlib
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import need  # noqa: E402

import workbench as wb  # noqa: E402
from workbench import sharpness as S  # noqa: E402
from workbench import zoo  # noqa: E402
from workbench.curvature import HessianOperator  # noqa: E402
from workbench.objective import Objective  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--samples", type=int, default=512)
ap.add_argument("--seeds", type=int, default=5)
args = ap.parse_args()
torch.set_num_threads(int(os.environ.get("WORKBENCH_THREADS", "1")))
wb.set_threads(torch.get_num_threads())
model = zoo.load("mlp-sgd-large-s0")
x, y = zoo.data("train")
x, y = x[: args.samples], y[: args.samples]
lf = torch.nn.CrossEntropyLoss()
K = 5

key = hashlib.sha256((wb.results.model_fingerprint(model) + str(args.samples)).encode()).hexdigest()[:12]
cache = zoo.cache_root() / "bench" / f"exact_spectrum_{key}.npz"
if cache.exists():
    ev = np.load(cache)["ev"]
else:
    print("computing the exact Hessian (cached afterwards) ...", flush=True)
    t0 = time.perf_counter()
    import copy

    H = S.exact_hessian(copy.deepcopy(model).double(), lf, (x.double(), y), progress=True).values
    ev = np.linalg.eigvalsh(H)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, ev=ev)
    print(f"  exact Hessian + eigvalsh: {time.perf_counter() - t0:.0f} s")
top, tr = ev[::-1][:K], ev.sum()
print(
    f"mlp-sgd-large-s0, {sum(p.numel() for p in model.parameters())} params, {len(y)} samples; exact top-{K} "
    f"{np.round(top, 5)}, trace {tr:.5f}"
)

need("pyhessian", "pyhessian==0.1")
pyh_h = sys.modules["pyhessian.hessian"]  # the package re-exports the class under the module's name

count = {"n": 0}
_orig = pyh_h.hessian_vector_product


def counting(*a, **k):
    count["n"] += 1
    return _orig(*a, **k)


pyh_h.hessian_vector_product = counting


def run(label, fn, truth):
    errs, hvps, secs = [], [], []
    for s in range(args.seeds):
        t0 = time.perf_counter()
        vals, n = fn(s)
        secs.append(time.perf_counter() - t0)
        errs.append(np.max(np.abs(np.asarray(vals) - truth) / np.abs(truth)))
        hvps.append(n)
    print(
        f"  {label:44s} rel.err median {statistics.median(errs):.1e} max {max(errs):.1e}   "
        f"HVPs {statistics.median(hvps):5.0f}   {statistics.median(secs):6.3f} s"
    )


def ours_topk(s):
    r = S.hessian_eigenvalues(model, lf, (x, y), k=K, seed=s, progress=False)
    return r["eigenvalue"].values, r.attrs["n_hvp"]


def eigsh_topk(s):
    from scipy.sparse.linalg import eigsh

    op = HessianOperator(Objective(model, lf, (x, y)))
    v0 = np.random.default_rng(s).standard_normal(op.shape[0])
    vals = eigsh(op.to_scipy(), k=K, which="LA", v0=v0, tol=1e-6, return_eigenvectors=False)
    return np.sort(vals)[::-1], op.n_products


def pyhessian_topk(s):
    torch.manual_seed(s)
    count["n"] = 0
    h = pyh_h.hessian(model, lf, data=(x, y), cuda=False)
    vals, _ = h.eigenvalues(top_n=K)
    return np.sort(vals)[::-1], count["n"]


def ours_trace(method):
    def f(s):
        t = S.hessian_trace(model, lf, (x, y), n_hvp=99, method=method, seed=s, progress=False)
        return [float(t)], t.attrs["n_hvp"]

    return f


def pyhessian_trace(s):
    torch.manual_seed(s)
    np.random.seed(s)
    count["n"] = 0
    h = pyh_h.hessian(model, lf, data=(x, y), cuda=False)
    return [float(np.mean(h.trace()))], count["n"]


was = model.training
print(f"top-{K} eigenvalues (max relative error over the {K}), {args.seeds} seeds:")
run("workbench Lanczos (full reorth., tol 1e-3)", ours_topk, top)
run("plain scipy eigsh over torch.func HVP", eigsh_topk, top)
run("PyHessian 0.1 power iteration + deflation", pyhessian_topk, top)
print("trace, 99 HVPs:")
run("workbench Hutch++", ours_trace("hutch++"), np.array([tr]))
run("workbench XTrace", ours_trace("xtrace"), np.array([tr]))
run("plain Hutchinson", ours_trace("hutchinson"), np.array([tr]))
run("PyHessian 0.1 Hutchinson (rel.-change stop)", pyhessian_trace, np.array([tr]))
model.train()
pyh_h.hessian(model, lf, data=(x[:32], y[:32]), cuda=False)
print(f"state: PyHessian leaves a train-mode model in train mode: {model.training} (it calls model.eval())")
model.train(was)
try:
    h = pyh_h.hessian(model, lf, data=(x, y), cuda=False)
    h.density(iter=10, n_v=1)
    print("PyHessian density: ran")
except Exception as e:
    print(f"PyHessian density(): {type(e).__name__}: {str(e)[:90]}")
t0 = time.perf_counter()
d = S.spectral_density(model, lf, (x, y), n_runs=3, n_lanczos=40, progress=False)
print(
    f"workbench spectral_density (SLQ, 3 x 40 HVPs): {time.perf_counter() - t0:.2f} s, integral "
    f"{np.trapezoid(d.values, d.eigenvalue.values):.4f}"
)
