"""Benchmark: a 41 x 41 loss-landscape slice of the demo MLP over the full digits set (1797 samples).

Side by side in one run (round-robin, median of 3):
  * workbench.landscape.slice_2d (functional evaluation, exact lattice);
  * a naive loop: copy theta + a d1 + b d2 into the parameters, forward, restore (target: ours <= 1.1x);
  * loss-landscapes 3.0.6 (PyPI) random_plane, filter normalisation.
Prints the time ratios and the correctness differences found.
Run: .venv/bin/python benchmarks/landscape.py   (one thread: WORKBENCH_THREADS=1, the Makefile default)
"""

import copy
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import interleaved, need  # noqa: E402

import workbench as wb  # noqa: E402
from workbench import landscape, zoo  # noqa: E402
from workbench.zoo.datasets import digits  # noqa: E402

torch.set_num_threads(int(os.environ.get("WORKBENCH_THREADS", "1")))
wb.set_threads(torch.get_num_threads())
STEPS = 41
model = zoo.load("mlp-sgd-large-s0")
X, Y = digits("all")
lf = torch.nn.CrossEntropyLoss()
(d1, d2), _ = landscape.random_directions(model, 2, seed=0)
coords = np.linspace(-1, 1, STEPS)
coords[STEPS // 2] = 0.0


def ours():
    return landscape.slice_2d(model, lf, (X, Y), directions=[d1, d2], coords=coords, progress=False).loss.values


def naive():
    m = model
    names = [n for n, _ in m.named_parameters()]
    theta = {n: p.detach().clone() for n, p in m.named_parameters()}
    params = dict(m.named_parameters())
    out = np.empty((STEPS, STEPS))
    with torch.no_grad():
        try:
            for i, a in enumerate(coords):
                for j, b in enumerate(coords):
                    for n in names:
                        params[n].copy_(theta[n] + a * d1[n] + b * d2[n])
                    out[i, j] = lf(m(X), Y).item()
        finally:
            for n in names:
                params[n].copy_(theta[n])
    return out


ll = need("loss_landscapes", "loss-landscapes==3.0.6")
import loss_landscapes.metrics  # noqa: E402


def peer():
    metric = loss_landscapes.metrics.Loss(lf, X, Y)
    return ll.random_plane(model, metric, distance=1, steps=STEPS, normalization="filter", deepcopy_model=True)


times, outs = interleaved({"workbench": ours, "naive loop": naive, "loss-landscapes": peer})
L0 = float(wb.evaluate(model, lf, (X, Y)).loss)
print(
    f"41 x 41 = {STEPS * STEPS} full-data evaluations of mlp-sgd-large-s0 "
    f"({sum(p.numel() for p in model.parameters())} "
    f"params, {len(Y)} samples), {torch.get_num_threads()} thread(s)"
)
for k, t in times.items():
    print(f"  {k:16s} {t:7.2f} s   {t / times['naive loop']:.2f}x naive   per point {1e3 * t / STEPS**2:.2f} ms")
print(f"ratio workbench / naive loop      = {times['workbench'] / times['naive loop']:.3f}  (target <= 1.1)")
print(f"ratio workbench / loss-landscapes = {times['workbench'] / times['loss-landscapes']:.3f}")
print("correctness:")
print(f"  workbench vs naive loop, max |diff|          = {np.max(np.abs(outs['workbench'] - outs['naive loop'])):.2e}")
c = STEPS // 2
print(f"  workbench centre cell - L(theta)             = {outs['workbench'][c, c] - L0:.2e}  (exact lattice)")
grid = np.asarray(outs["loss-landscapes"])
print(
    f"  loss-landscapes: min over grid |cell - L(theta)| = {np.min(np.abs(grid - L0)):.2e}  "
    f"(its grid never evaluates theta itself)"
)
m2 = copy.deepcopy(model)
before = torch.cat([p.detach().reshape(-1).clone() for p in m2.parameters()])
ll.random_plane(m2, loss_landscapes.metrics.Loss(lf, X[:64], Y[:64]), steps=5, normalization="filter")
after = torch.cat([p.detach().reshape(-1) for p in m2.parameters()])
print(
    f"  loss-landscapes with its default deepcopy_model=False: model left displaced by max |dtheta| = "
    f"{float((after - before).abs().max()):.3g}; requires_grad left {[p.requires_grad for p in m2.parameters()][0]}"
)
m3 = copy.deepcopy(model)
s = wb.state.snapshot(m3)
landscape.slice_2d(m3, lf, (X[:64], Y[:64]), steps=5, progress=False)
print(f"  workbench: model bitwise unchanged afterwards = {s.matches(m3)}")
