"""Benchmark: weight matching (workbench.weightspace.match) against a naive hand-written baseline.

The baseline is Ainsworth et al.'s algorithm 1 written out for one architecture: an MLP whose permutation spec is
listed by hand (no graph tracing, no generic axis bookkeeping), numpy arrays, the same
scipy.optimize.linear_sum_assignment, one run. Ours discovers the groups from the torch.fx graph and handles
any supported architecture. Side by side (round-robin, median of 3), on
  * the zoo's MLP pair mlp-sgd-small-s0 / -s1 (64 units per layer),
  * two random MLPs 64 -> 512 -> 512 -> 512 -> 10 (timing at width 512);
printed: seconds, the ratio, the matching objective sum <A, P(B)> reached by each (higher is better) and, for the
zoo pair, the loss barrier after each. Activation matching is timed beside them.
Run: .venv/bin/python benchmarks/weightspace_alignment.py   (one thread: WORKBENCH_THREADS=1)
"""

import os
import sys

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

sys.path.insert(0, os.path.dirname(__file__))
from _common import interleaved  # noqa: E402

import workbench as wb  # noqa: E402
from workbench import weightspace as ws  # noqa: E402
from workbench import zoo  # noqa: E402
from workbench.zoo.models import MLP  # noqa: E402

torch.set_num_threads(int(os.environ.get("WORKBENCH_THREADS", "1")))
wb.set_threads(torch.get_num_threads())


def naive_weight_matching(a: torch.nn.Module, b: torch.nn.Module, seed: int = 0, max_iter: int = 100):
    """Algorithm 1 of Git Re-Basin for the zoo's MLP layout, spec by hand: P_l permutes features.{2l}'s rows."""
    sa = {k: v.detach().double().numpy() for k, v in a.state_dict().items()}
    sb = {k: v.detach().double().numpy() for k, v in b.state_dict().items()}
    linears = [k[: -len(".weight")] for k in sa if k.endswith(".weight")]  # features.0, features.2, head
    n = len(linears) - 1  # hidden layers
    perms = [np.arange(sa[f"{linears[i]}.weight"].shape[0]) for i in range(n)]
    rng = np.random.default_rng(seed)
    for _ in range(max_iter):
        improved = False
        for i in rng.permutation(n):
            w_in, b_in, w_out = (f"{linears[i]}.weight", f"{linears[i]}.bias", f"{linears[i + 1]}.weight")
            prev = perms[i - 1] if i > 0 else None
            wb_in = sb[w_in][:, prev] if prev is not None else sb[w_in]
            wb_out = sb[w_out][perms[i + 1]] if i + 1 < n else sb[w_out]
            c = sa[w_in] @ wb_in.T + np.outer(sa[b_in], sb[b_in]) + sa[w_out].T @ wb_out
            new = linear_sum_assignment(c, maximize=True)[1]
            r = np.arange(len(new))
            if c[r, new].sum() > c[r, perms[i]].sum() + 1e-12:
                perms[i], improved = new, True
        if not improved:
            break
    return perms


def objective(a, b, perms_list, names):
    """sum <A, P(B)> with the hidden permutations in layer order (the MLP layout above)."""
    import xarray as xr

    spec = ws.permutation_groups(a, torch.zeros(2, a.features[0].in_features))
    ds = xr.Dataset()
    for g, p in zip(names, perms_list):
        grp = spec.groups[g]
        ds[g] = xr.DataArray(np.asarray(p), dims=f"{g}.unit", attrs=dict(kind="units", entries=";".join(
            f"{e.name}|{e.axis}|{e.offset}|{e.factor}" for e in grp.entries)))  # fmt: skip
    aligned = ws.permute(b, ds)
    return sum(
        float((x.double() * y.double()).sum()) for x, y in zip(a.state_dict().values(), aligned.state_dict().values())
    ), aligned


def main():
    x, y = zoo.data("train")
    xt, yt = zoo.data("test")
    lf = torch.nn.CrossEntropyLoss()
    cases = {"zoo mlp-sgd-small s0/s1 (64 wide)": (zoo.load("mlp-sgd-small-s0"), zoo.load("mlp-sgd-small-s1"))}
    with torch.random.fork_rng():
        torch.manual_seed(0)
        cases["random MLP 512 wide, depth 3"] = (MLP(width=512, depth=3), MLP(width=512, depth=3))
    act = dict(method="activation", progress=False)
    for label, (a, b) in cases.items():
        names = [f"features.{2 * i}" for i in range(len(a.features) // 2)]
        times, outs = interleaved(
            {
                "ours (weight)": lambda a=a, b=b: ws.match(a, b, None, x[:2], restarts=1, progress=False),
                "naive (weight)": lambda a=a, b=b: naive_weight_matching(a, b),
                "ours (activation)": lambda a=a, b=b: ws.match(a, b, None, x[:512], **act),
            }
        )
        t_ours, t_naive, t_act = times.values()
        r_ours, r_naive = outs["ours (weight)"], outs["naive (weight)"]
        o_ours, al_ours = objective(a, b, [r_ours[g].values for g in names], names)
        o_naive, al_naive = objective(a, b, r_naive, names)
        o_id, _ = objective(a, b, [np.arange(len(r_ours[g])) for g in names], names)
        print(f"\n{label}")
        print(f"  ours (weight)      {t_ours * 1e3:8.1f} ms   objective {o_ours:.6g}")
        print(f"  naive (weight)     {t_naive * 1e3:8.1f} ms   objective {o_naive:.6g}")
        print(f"  time ours / naive  {t_ours / t_naive:.2f}x")
        print(f"  ours (activation)  {t_act * 1e3:8.1f} ms   (512 samples)")
        print(f"  identity objective {o_id:.6g}")
        if label.startswith("zoo"):
            for name, m in (("ours", al_ours), ("naive", al_naive)):
                r = ws.connectivity(a, m, lf, (xt, yt), steps=11, methods=["none"], progress=False)
                print(f"  barrier after {name:5s} weight matching: {float(r.barrier[0]):.4f}")
            r = ws.connectivity(a, b, lf, (xt, yt), steps=11, methods=["none"], progress=False)
            print(f"  barrier without alignment:          {float(r.barrier[0]):.4f}")
    _ = y


if __name__ == "__main__":
    main()
