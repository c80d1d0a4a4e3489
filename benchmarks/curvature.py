"""Benchmark (issue #23): curvature at scale, side by side in one run.

  a. Hessian-vector product cost / gradient cost (``HessianOperator.matvec`` vs ``Objective.loss_and_grad``)
     on the demo CNN and on MiniLM (all-MiniLM-L6-v2, 22.7 M parameters, sdpa as shipped). Target <= 2.5x.
  b. Top-5 Hessian eigenvalues of the demo MLP and CNN (512 samples) against the exact float64 Hessian:
     workbench ``hessian_eigenvalues`` vs curvlinops (``HessianLinearOperator`` + scipy ``eigsh``) vs
     hessian-eigenthings 1.0 (``lanczos``, ``deflated_power_iteration``; its 0.x ``compute_hessian_eigenthings``
     is gone). Seconds, products, relative error. Target: ours <= 1.0x their time at equal or better accuracy.
  c. MiniLM on CPU over 64 sentences: top-5 Hessian (and GGN, once ``curvature=`` exists) eigenvalues with
     the products used to reach 1e-3 relative residual (target <= 40) and the peak resident memory (VmHWM)
     against model + (k + products) x P x 4 bytes + 1 GB; Hutch++ trace with a modest budget.

MiniLM objective: the mean-pooled last hidden state (attention-masked) of ``zoo.text_topics()`` sentences
goes through a fixed linear probe (a logistic regression fitted once on the frozen embeddings of all 160
sentences, L2 with C=1; a buffer, so only MiniLM's 22.7 M parameters are probed) into cross-entropy on the
topic labels of the first 64 sentences. Differentiable, label-based and with a positive semi-definite GGN.

Run:   .venv/bin/python benchmarks/curvature.py            (full size, ~15 min on 2 cores, one thread)
       .venv/bin/python benchmarks/curvature.py --quick    (smoke run: 8 sentences, 1 seed, ~2 min)
       --reference    adds a long float64 Lanczos run on MiniLM (tol 1e-6; ~1 h here), cached, and the
                      peers on MiniLM (under the math sdpa backend, which they need) against it
"""

import argparse
import inspect
import os
import statistics
import sys
import time
from datetime import date

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, eigsh
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, os.path.dirname(__file__))
from _common import exact_spectrum, interleaved, need, peak_rss, reset_peak_rss  # noqa: E402

import workbench as wb  # noqa: E402
from workbench import sharpness as S  # noqa: E402
from workbench import zoo  # noqa: E402
from workbench.curvature import HessianOperator  # noqa: E402
from workbench.objective import Objective  # noqa: E402

ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
ap.add_argument("--quick", action="store_true", help="smoke run: 8 MiniLM sentences, 1 seed, small budgets")
ap.add_argument("--sentences", type=int, default=None, help="MiniLM sentences (default 64, --quick 8)")
ap.add_argument("--samples", type=int, default=512, help="digits samples for the demo MLP / CNN")
ap.add_argument("--seeds", type=int, default=None, help="seeds per small-model method (default 3, --quick 1)")
ap.add_argument("--trace-hvp", type=int, default=None, help="Hutch++ products on MiniLM (default 12, --quick 4)")
ap.add_argument("--reference", action="store_true", help="long float64 MiniLM run (cached) and peers on MiniLM")
ap.add_argument("--skip-minilm", action="store_true", help="only the demo models")
args = ap.parse_args()
N_SENT = args.sentences or (8 if args.quick else 64)
SEEDS = args.seeds or (1 if args.quick else 3)
TRACE_HVP = args.trace_hvp or (4 if args.quick else 12)
K, TOL = 5, 1e-3
FLOOR = 1e-5  # float32 products: relative eigenvalue errors below this count as equal
torch.set_num_threads(int(os.environ.get("WORKBENCH_THREADS", "1")))
wb.set_threads(torch.get_num_threads())
curvlinops = need("curvlinops", "curvlinops-for-pytorch==3.0.1")
he = need("hessian_eigenthings", "hessian-eigenthings==1.0.0a5")
lf = nn.CrossEntropyLoss()
print(
    f"benchmarks/curvature.py {' '.join(sys.argv[1:])}  ({date.today()}, torch {torch.__version__}, "
    f"{torch.get_num_threads()} thread(s), {os.cpu_count()} cores)",
    flush=True,
)


def n_params(m):
    return sum(p.numel() for p in m.parameters() if p.requires_grad)


def hvp_vs_grad(label, model, data, repeat, engines=("auto",), math_grad=False):
    """Median seconds of one gradient and of one HVP per engine (interleaved), printed as ratios."""
    obj = Objective(model, lf, data)
    obj.loss_and_grad()  # warm-up: first-batch checks, allocator
    v = torch.randn(obj.space.numel, generator=torch.Generator().manual_seed(0))
    fns = {"grad": lambda: obj.loss_and_grad()}
    if math_grad:

        def grad_math():
            with sdpa_kernel(SDPBackend.MATH):
                return obj.loss_and_grad()

        fns["grad (math sdpa)"] = grad_math
    for e in engines:
        op = HessianOperator(obj, engine=e)
        op.matvec(v)
        fns[f"HVP engine={e}"] = lambda op=op: op.matvec(v)  # a later product of the same operator (Lanczos)
        # a fresh operator's first product: with one batch, double backward builds the gradient's graph here
        fns[f"first HVP engine={e}"] = lambda e=e: HessianOperator(obj, engine=e).matvec(v)
    t, _ = interleaved(fns, repeat)
    g = t["grad"]
    print(f"  {label} ({obj.space.numel:,} params), medians of {repeat}: gradient {g:.3f} s")
    for k, s in t.items():
        if k != "grad":
            print(f"    {k:30s} {s:7.3f} s   {s / g:5.2f}x gradient")
    return {k: s / g for k, s in t.items()}


def run_seeds(fn, truth):
    """(median max-relative-error over the top-k, median products, median seconds) over SEEDS seeds, after one
    untimed warm-up call (first-call costs of torch.func / the allocator would otherwise land on one method)."""
    fn(SEEDS)
    errs, prods, secs = [], [], []
    for s in range(SEEDS):
        t0 = time.perf_counter()
        vals, n = fn(s)
        secs.append(time.perf_counter() - t0)
        vals = np.sort(np.asarray(vals, dtype=float))[::-1][: len(truth)]
        errs.append(float(np.max(np.abs(vals - truth) / np.abs(truth))))
        prods.append(n)
    return statistics.median(errs), statistics.median(prods), statistics.median(secs)


class Counted(LinearOperator):
    """A scipy LinearOperator that counts the vectors it is applied to."""

    def __init__(self, A):
        super().__init__(np.float64, A.shape)
        self.A, self.n = A, 0

    def _matvec(self, v):
        self.n += 1
        return np.asarray(self.A @ v, dtype=np.float64).ravel()

    def _matmat(self, V):
        self.n += V.shape[1]
        return np.asarray(self.A @ V, dtype=np.float64)

    _rmatvec = _matvec


def he_counted(op):
    """hessian-eigenthings operator wrapped to count its products."""
    box = {"n": 0}

    def mv(v):
        box["n"] += 1
        return op.matvec(v)

    return he.LambdaOperator(mv, size=op.size, device=op.device, dtype=op.dtype), box


def peers(model, data, loss=lf, batch_size_fn=None, ours_n=30, skip=None):
    """The peer solvers as ``seed -> (eigenvalues, products)``; ``data`` an (inputs, targets) batch; parameters
    whose name contains ``skip`` are left out (hessian-eigenthings refuses parameters the loss does not use)."""
    keep = lambda name, p: p.requires_grad and not (skip and skip in name)  # noqa: E731
    params = [p for n, p in model.named_parameters() if keep(n, p)]

    def cl_eigsh(s):
        H = curvlinops.HessianLinearOperator(
            model, loss, params, [data], check_deterministic=False, batch_size_fn=batch_size_fn, progressbar=False
        )
        A = Counted(H.to_scipy())
        v0 = np.random.default_rng(s).standard_normal(A.shape[0])
        return eigsh(A, k=K, which="LA", tol=TOL, v0=v0, return_eigenvectors=False), A.n

    def he_op():
        return he.HessianOperator(model, [data], lambda m, b: loss(m(b[0]), b[1]), param_filter=keep)

    def he_lanczos(max_iter):
        def f(s):
            op, box = he_counted(he_op())
            r = he.lanczos(op, k=K, max_iter=max_iter, which="LA", tol=TOL, seed=s)
            return r.eigenvalues.double().numpy(), box["n"]

        return f

    def he_power(s):
        op, box = he_counted(he_op())
        r = he.deflated_power_iteration(op, k=K, max_iter=100, tol=1e-4, seed=s)
        return r.eigenvalues.double().numpy(), box["n"]

    return {
        "curvlinops + scipy eigsh (tol 1e-3)": cl_eigsh,
        f"hessian-eigenthings lanczos (default {2 * K} steps)": he_lanczos(None),
        f"hessian-eigenthings lanczos ({ours_n} steps)": he_lanczos(ours_n),
        "hessian-eigenthings power iter. + deflation": he_power,
    }


def ours(model, data, **kw):
    def f(s):
        r = S.hessian_eigenvalues(model, lf, data, k=K, tol=TOL, seed=s, progress=False, **kw)
        return r["eigenvalue"].values, r.attrs["n_hvp"]

    return f


# ---------------------------------------------------------------- a + b: the demo models
x, y = zoo.data("train")
x, y = x[: args.samples], y[: args.samples]
summary = {}
print("\n(a) HVP cost / gradient cost (target <= 2.5x)", flush=True)
cnn, mlp = zoo.load("cnn-sgd-large-s0"), zoo.load("mlp-sgd-large-s0")
summary["cnn hvp/grad"] = hvp_vs_grad(
    f"demo CNN cnn-sgd-large-s0, {len(y)} samples", cnn, (x, y), 7 if args.quick else 21
)

print(f"\n(b) top-{K} Hessian eigenvalues vs the exact Hessian, {len(y)} samples, medians over {SEEDS} seed(s)")
for name, model in (("mlp-sgd-large-s0", mlp), ("cnn-sgd-large-s0", cnn)):
    truth = exact_spectrum(model, lf, x, y, str(args.samples))[::-1][:K]
    print(f"  {name} ({n_params(model):,} params), exact top-{K} {np.round(truth, 4)}")
    e0, n0, t0 = run_seeds(ours(model, (x, y)), truth)
    print(f"    {'workbench hessian_eigenvalues (tol 1e-3)':48s} err {e0:.1e}  products {n0:4.0f}  {t0:6.3f} s  1.00x")
    for label, fn in peers(model, (x, y), ours_n=int(n0)).items():
        e, n, t = run_seeds(fn, truth)
        verdict = "ours faster" if t0 <= t else "ours SLOWER"
        verdict += ", ours as accurate" if e0 <= max(e, FLOOR) else ", ours LESS accurate"
        print(f"    {label:48s} err {e:.1e}  products {n:4.0f}  {t:6.3f} s  ours/theirs {t0 / t:4.2f}x ({verdict})")
        summary[f"{name} ours/{label}"] = (t0 / t, e0, e)
    sys.stdout.flush()

if args.skip_minilm:
    sys.exit(0)


# ---------------------------------------------------------------- MiniLM
class Probe(nn.Module):
    """MiniLM -> attention-masked mean pooling -> a fixed linear probe (weights are buffers)."""

    def __init__(self, hf, W, b):
        super().__init__()
        self.hf = hf
        self.register_buffer("W", W)
        self.register_buffer("b", b)

    def embed(self, input_ids, attention_mask):
        h = self.hf(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        w = attention_mask.unsqueeze(-1).to(h.dtype)
        return (h * w).sum(1) / w.sum(1)

    def forward(self, input_ids, attention_mask):
        return self.embed(input_ids, attention_mask) @ self.W.T + self.b


class DictIn(nn.Module):
    """``model(X)`` for a mapping X: the peers call the model with one positional input."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, X):
        return self.m(**X)


def minilm_task():
    from sklearn.linear_model import LogisticRegression

    hf, tok = zoo.minilm()
    texts, labels = zoo.text_topics()
    classes = sorted(set(labels))
    yall = torch.tensor([classes.index(t) for t in labels])
    model = Probe(hf, torch.zeros(len(classes), hf.config.hidden_size), torch.zeros(len(classes))).eval()
    with torch.no_grad():
        enc = tok(texts, padding=True, return_tensors="pt")
        emb = model.embed(enc["input_ids"], enc["attention_mask"]).numpy()
    clf = LogisticRegression(C=1.0, max_iter=2000).fit(emb, yall.numpy())
    model.W.copy_(torch.tensor(clf.coef_, dtype=torch.float32))
    model.b.copy_(torch.tensor(clf.intercept_, dtype=torch.float32))
    enc = tok(texts[:N_SENT], padding=True, return_tensors="pt")
    data = ({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}, yall[:N_SENT])
    return model, data


model, mdata = minilm_task()
P = n_params(model)
print(
    f"\nMiniLM all-MiniLM-L6-v2 ({P:,} params, attention {model.hf.config._attn_implementation}), {N_SENT} "
    f"sentences x {mdata[0]['input_ids'].shape[1]} tokens, fixed logistic probe, "
    f"loss {Objective(model, lf, mdata).loss():.4f}",
    flush=True,
)
print("\n(a) HVP cost / gradient cost on MiniLM (target <= 2.5x)")
summary["minilm hvp/grad"] = hvp_vs_grad(
    "MiniLM", model, mdata, 1 if args.quick else 2, engines=("auto", "func"), math_grad=True
)


def tiny_batch():
    return {k: v[:2] for k, v in mdata[0].items()}, mdata[1][:2]


try:  # the peers as shipped on sdpa (one product on 2 sentences): do they need the math backend?
    op = he.HessianOperator(
        DictIn(model), [tiny_batch()], lambda m, b: lf(m(b[0]), b[1]), param_filter=lambda n, p: "pooler" not in n
    )
    op.matvec(torch.ones(op.size))
    print("  hessian-eigenthings HVP on MiniLM under sdpa as shipped: runs")
except Exception as e:
    msg = str(e).splitlines()[0][:90]
    print(f"  hessian-eigenthings HVP on MiniLM under sdpa as shipped: {type(e).__name__}: {msg}")

print(f"\n(c) MiniLM top-{K} eigenvalues to {TOL:g} relative residual (target <= 40 products) and peak memory")
bsf = lambda X: X["input_ids"].shape[0]  # noqa: E731
budget_bytes = lambda steps: P * 4 + (K + steps) * P * 4 + 2**30  # noqa: E731
curvatures = ["hessian"]
if "curvature" in inspect.signature(S.hessian_eigenvalues).parameters:
    curvatures.append("ggn")
results = {}
for curv in curvatures:
    kw = {} if curv == "hessian" else {"curvature": curv}
    base = reset_peak_rss()
    t0 = time.perf_counter()
    r = S.hessian_eigenvalues(model, lf, mdata, k=K, tol=TOL, seed=0, progress=False, **kw)
    secs, peak = time.perf_counter() - t0, peak_rss()
    n, vals = r.attrs["n_hvp"], r["eigenvalue"].values
    rel = np.max(r["residual"].values / np.abs(vals))
    results[curv] = (vals, n)
    tgt = budget_bytes(n)
    print(
        f"  {curv:8s} {np.round(vals, 3)}  products {n} ({'<=' if n <= 40 else 'MISSES'} 40), max residual/|lambda| "
        f"{rel:.1e}, converged {int(r['converged'].values.sum())}/{K}, {secs:.0f} s\n"
        f"           peak RSS {peak / 2**30:.2f} GiB (rise {(peak - base) / 2**30:.2f} GiB over {base / 2**30:.2f}) vs "
        f"target {tgt / 2**30:.2f} GiB: {'ok' if peak <= tgt else 'MISSES'}",
        flush=True,
    )
    summary[f"minilm {curv}"] = (n, peak / tgt)
if "ggn" not in curvatures:
    print("  ggn      not yet available (hessian_eigenvalues has no curvature= argument)")
base = reset_peak_rss()
t0 = time.perf_counter()
tr = S.hessian_trace(model, lf, mdata, n_hvp=TRACE_HVP, method="hutch++", seed=0, progress=False)
print(
    f"  Hutch++ trace {float(tr):.1f}, 95 % CI [{tr.attrs['ci_low']:.1f}, {tr.attrs['ci_high']:.1f}] with "
    f"{tr.attrs['n_hvp']} products, {time.perf_counter() - t0:.0f} s, peak RSS {peak_rss() / 2**30:.2f} GiB",
    flush=True,
)

if args.reference:
    import copy
    import hashlib

    key = hashlib.sha256((wb.results.model_fingerprint(model) + str(N_SENT)).encode()).hexdigest()[:12]
    cache = zoo.cache_root() / "bench" / f"minilm_reference_{key}.npz"
    if cache.exists():
        ref = np.load(cache)["ev"]
    else:
        print("  long float64 reference run (cached afterwards) ...", flush=True)
        t0 = time.perf_counter()
        m64 = copy.deepcopy(model).double()
        r = S.hessian_eigenvalues(m64, lf, mdata, k=K, tol=1e-6, max_hvp=150, seed=1, progress=True)
        ref = r["eigenvalue"].values
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, ev=ref)
        print(f"  reference: {r.attrs['n_hvp']} float64 products, {time.perf_counter() - t0:.0f} s")
    print(f"  float64 reference top-{K} {np.round(ref, 4)}")
    vals, n = results["hessian"]
    print(f"    {'workbench (above)':48s} err {np.max(np.abs(vals - ref) / np.abs(ref)):.1e}  products {n}")
    with sdpa_kernel(SDPBackend.MATH):  # the peers need it on sdpa (see above)
        for label, fn in peers(DictIn(model), mdata, batch_size_fn=bsf, ours_n=n, skip="pooler").items():
            if "power" in label:
                continue  # hundreds of products at ~9 s each
            t0 = time.perf_counter()
            v, m = fn(0)
            err = np.max(np.abs(np.sort(v)[::-1][:K] - ref) / np.abs(ref))
            print(f"    {label:48s} err {err:.1e}  products {m}  {time.perf_counter() - t0:.0f} s", flush=True)

print("\nsummary (ratios; absolute seconds are context for this machine only):")
for k, v in summary.items():
    print(f"  {k}: {v}")
