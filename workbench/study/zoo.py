"""The study zoo: digits MLP / CNN runs varying one hyper-parameter at a time, each trained to a fixed
training cross-entropy (Jiang et al. 2020, "Fantastic generalization measures and where to find them").

Design: a *star* around a base configuration, per seed. Every axis of :data:`AXES` but ``seed`` takes the
base value and the preset's other values one at a time (the others at base); every configuration is
trained with every seed. So for each axis, the runs that differ only along it (same seed, all other axes
at base) form a group -- exactly what the granulated coefficient averages over -- and pairs of runs
that differ in one hyper-parameter exist for every axis (Jiang et al.'s conditional-independence view).

Each run: SGD with momentum 0.9 (SAM when ``rho > 0``, Foret et al. 2021), stopped once the full training
cross-entropy (eval mode) is <= the preset's ``target_loss``; runs that never reach it within ``max_epochs``
are kept with ``converged = False`` (the analysis drops them, as Jiang et al. do). Train / test loss and
accuracy are recorded, and the initial weights (for the distance from initialisation).

The sweep runs on dask (``dask.compute`` over delayed runs, the ``processes`` scheduler with one torch
thread per worker, or ``synchronous`` for ``workers=1``); every run is cached as one file under
``workbench.zoo.cache_root() / "study"`` named by the hash of its spec, so an interrupted sweep resumes
where it stopped and presets share runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn

from ..results import atomic_write
from ..zoo import cache_root
from ..zoo.datasets import digits
from ..zoo.training import sam_step

__all__ = [
    "AXES",
    "PRESETS",
    "STUDY_VERSION",
    "configs",
    "build_model",
    "train_run",
    "run_data",
    "run_path",
    "build_zoo",
    "load_run",
]

STUDY_VERSION = 1
#: the hyper-parameter axes of the study, in table order
AXES = ("arch", "lr", "batch_size", "width", "depth", "weight_decay", "dropout", "rho", "seed")

_BASE = dict(arch="mlp", lr=0.05, batch_size=64, width=64, depth=2, weight_decay=0.0, dropout=0.0, rho=0.0)

#: presets: the base, the other values per axis, the seeds, the training set size and the criterion
PRESETS: dict[str, dict[str, Any]] = {
    # for tests: 4 configurations x 2 seeds on 256 training samples, seconds
    "tiny": dict(
        base={**_BASE, "width": 32, "depth": 1, "lr": 0.1, "batch_size": 32},
        vary={"lr": [0.03], "width": [16], "weight_decay": [1e-3]},
        seeds=[0, 1],
        n_train=256,
        target_loss=0.1,
        max_epochs=150,
    ),
    # 2 CPU cores, under 10 minutes with the measures: 23 configurations x 4 seeds on 500 training digits
    "default": dict(
        base=_BASE,
        vary={
            "arch": ["cnn"],
            "lr": [0.01, 0.02, 0.2],
            "batch_size": [16, 32, 256],
            "width": [16, 32, 256],
            "depth": [1, 3, 4],
            "weight_decay": [1e-4, 3e-4, 1e-3],
            "dropout": [0.1, 0.25, 0.5],
            "rho": [0.02, 0.05, 0.1],
        },
        seeds=[0, 1, 2, 3],
        n_train=500,
        target_loss=0.02,
        max_epochs=500,
    ),
    # a GPU (or an afternoon): 5-6 values per axis, 5 seeds on all 1347 training digits, 36 configurations x 5
    "large": dict(
        base=_BASE,
        vary={
            "arch": ["cnn"],
            "lr": [0.005, 0.01, 0.02, 0.1, 0.2],
            "batch_size": [8, 16, 32, 128, 256, 512],
            "width": [16, 32, 128, 256, 512],
            "depth": [1, 3, 4, 6],
            "weight_decay": [1e-4, 3e-4, 1e-3, 3e-3, 1e-2],
            "dropout": [0.1, 0.2, 0.3, 0.5],
            "rho": [0.01, 0.02, 0.05, 0.1, 0.2],
        },
        seeds=[0, 1, 2, 3, 4],
        n_train=None,
        target_loss=0.01,
        max_epochs=1000,
    ),
}


def _preset(preset: str | dict) -> dict:
    if isinstance(preset, dict):
        return preset
    if preset not in PRESETS:
        raise ValueError(f"preset: expected one of {sorted(PRESETS)}, got {preset!r}")
    return PRESETS[preset]


def configs(preset: str | dict = "default") -> list[dict]:
    """The run specs of a preset: the base and one-at-a-time variants, times the seeds.

    >>> [(c["lr"], c["width"], c["weight_decay"], c["seed"]) for c in configs("tiny")][:5]
    [(0.1, 32, 0.0, 0), (0.03, 32, 0.0, 0), (0.1, 16, 0.0, 0), (0.1, 32, 0.001, 0), (0.1, 32, 0.0, 1)]
    """
    p = _preset(preset)
    unknown = set(p["vary"]) - set(AXES)
    if unknown:
        raise ValueError(f"preset: unknown axes {sorted(unknown)}; the axes are {AXES}")
    stars = [dict(p["base"])] + [{**p["base"], k: v} for k, vals in p["vary"].items() for v in vals]
    extra = {"n_train": p["n_train"], "target_loss": p["target_loss"], "max_epochs": p["max_epochs"]}
    return [{**c, "seed": s, **extra} for s in p["seeds"] for c in stars]


class _MLP(nn.Module):
    def __init__(self, width: int, depth: int, dropout: float):
        super().__init__()
        layers, d = [], 64
        for _ in range(depth):
            layers += [nn.Linear(d, width), nn.ReLU(), nn.Dropout(dropout)]
            d = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(d, 10)

    def forward(self, x):
        return self.head(self.features(x.flatten(1)))


class _CNN(nn.Module):
    def __init__(self, width: int, depth: int, dropout: float):
        super().__init__()
        c, layers, d = max(width // 8, 2), [], 1
        for _ in range(depth):
            layers += [nn.Conv2d(d, c, 3, padding=1), nn.ReLU(), nn.Dropout(dropout)]
            d = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c * 64, 10)

    def forward(self, x):
        return self.head(self.features(x.reshape(-1, 1, 8, 8)).flatten(1))


def build_model(spec: dict) -> nn.Module:
    """The untrained network of a run spec: an MLP (``depth`` hidden ReLU layers of ``width``) or a CNN
    (``depth`` 3x3 conv layers of ``width // 8`` channels, then a linear head), dropout after each layer.
    Both take flat (n, 64) digits inputs.

    >>> sum(p.numel() for p in build_model(configs("tiny")[0]).parameters())
    2410
    """
    cls = {"mlp": _MLP, "cnn": _CNN}.get(spec["arch"])
    if cls is None:
        raise ValueError(f"arch: expected 'mlp' or 'cnn', got {spec['arch']!r}")
    return cls(int(spec["width"]), int(spec["depth"]), float(spec["dropout"]))


def run_data(spec: dict, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` of a run's training set (the first ``n_train`` digits training samples) or test set.

    >>> [tuple(t.shape) for t in run_data(configs("tiny")[0])], len(run_data(configs("tiny")[0], "test")[1])
    ([(256, 64), (256,)], 450)
    """
    x, y = digits(split)
    n = spec.get("n_train")
    if split == "train" and n:
        x, y = x[:n], y[:n]
    return x, y


def _eval(model, x, y):
    model.eval()
    with torch.no_grad():
        out = model(x)
        return float(nn.functional.cross_entropy(out, y)), float((out.argmax(1) == y).float().mean())


def train_run(spec: dict, device: str | torch.device = "cpu") -> dict:
    """Train one run to its criterion; returns a record of plain types and tensors (``torch.save``-able):
    ``state_dict``, ``init_state_dict``, ``train_loss``/``train_acc``/``test_loss``/``test_acc`` (eval mode),
    ``epochs``, ``steps``, ``converged``. The caller's RNG is untouched (``torch.random.fork_rng``). ``device``:
    where to train (the record is on the CPU; the batch order and the initialisation are drawn on the CPU, so a
    CUDA run differs from a CPU run only by floating-point rounding).

    >>> rec = train_run(configs("tiny")[0])
    >>> rec["converged"], rec["train_loss"] <= 0.1 < rec["epochs"]
    (True, True)
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(spec["seed"]))
        model = build_model(spec)
        init = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.to(device)
        x, y = (t.to(device) for t in run_data(spec, "train"))
        gen = torch.Generator().manual_seed(int(spec["seed"]))
        opt = torch.optim.SGD(model.parameters(), lr=spec["lr"], momentum=0.9, weight_decay=spec["weight_decay"])
        lf, bs, rho, steps = nn.CrossEntropyLoss(), int(spec["batch_size"]), float(spec["rho"]), 0
        loss, epoch = _eval(model, x, y)[0], 0
        while epoch < spec["max_epochs"] and loss > spec["target_loss"] and math.isfinite(loss):
            epoch += 1
            model.train()
            perm = torch.randperm(len(y), generator=gen)
            for i in range(0, len(y), bs):
                sel = perm[i : i + bs].to(device)
                xb, yb = x[sel], y[sel]
                if rho > 0:  # SAM: the gradient at theta + rho g / |g|, applied at theta
                    sam_step(model, opt, lf, xb, yb, rho)
                else:
                    opt.zero_grad(set_to_none=True)
                    lf(model(xb), yb).backward()
                    opt.step()
                steps += 1
            loss = _eval(model, x, y)[0]
        tr, te = _eval(model, x, y), _eval(model, *(t.to(device) for t in run_data(spec, "test")))
    return {
        "spec": json.dumps(spec, sort_keys=True),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "init_state_dict": init,
        "train_loss": tr[0],
        "train_acc": tr[1],
        "test_loss": te[0],
        "test_acc": te[1],
        "epochs": epoch,
        "steps": steps,
        "converged": bool(tr[0] <= spec["target_loss"]),
    }


def _hash(spec: dict) -> str:
    return hashlib.sha256(json.dumps([STUDY_VERSION, spec], sort_keys=True).encode()).hexdigest()[:16]


def run_path(spec: dict) -> Path:
    """Where a run's record is cached: ``cache_root()/study/<hash of the spec>.pt``.

    >>> run_path(configs("tiny")[0]).parent.name
    'study'
    """
    return cache_root() / "study" / f"{_hash(spec)}.pt"


def _task(spec: dict, measure: Any = None, device: str = "cpu") -> str:
    """One point of the sweep (runs in a dask worker): train if not cached, then ``measure(path)``."""
    torch.set_num_threads(1)
    path = run_path(spec)
    if not path.exists():
        rec = train_run(spec, device)
        atomic_write(path, lambda tmp: torch.save(rec, tmp))
    if measure is not None:
        measure(path)
    return str(path)


def build_zoo(
    preset: str | dict = "default",
    *,
    workers: int = 1,
    measure: Any = None,
    device: str = "cpu",
    progress: bool = True,
) -> xr.Dataset:
    """Train (or load from the cache) every run of ``preset`` on a dask sweep with ``workers`` processes
    and return the table over ``run``: the axes as coordinates, ``train_loss``, ``test_loss``,
    ``train_acc``, ``test_acc``, ``gap`` (train minus test accuracy: Jiang et al.'s generalization gap),
    ``loss_gap``, ``epochs``, ``converged`` and ``path`` (the cached record). ``measure(path)``, if given,
    runs in the worker after training (the study's measures, cached beside the run). ``device``: where runs
    train (``"cuda"`` for the large preset; measure on it too with
    ``measure=functools.partial(measure_run, device="cuda")``). ``progress``: dask's progress bar.

    >>> runs = build_zoo("tiny", progress=False)   # seconds the first time, then from the cache
    >>> runs.sizes["run"], bool(runs.converged.all()), bool((runs.gap > 0).all())
    (8, True, True)
    """
    import dask

    specs = configs(preset)
    from dask.diagnostics import ProgressBar

    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers: expected an int >= 1 (worker processes), got {workers!r}")
    tasks = [dask.delayed(_task, pure=False)(s, measure, str(device)) for s in specs]
    bar = ProgressBar(minimum=2.0) if progress else contextlib.nullcontext()
    with bar:
        if workers == 1:
            paths = dask.compute(*tasks, scheduler="synchronous")
        else:
            paths = dask.compute(*tasks, scheduler="processes", num_workers=workers)
    recs = [torch.load(p, weights_only=True, map_location="cpu") for p in paths]
    cols = {k: ("run", [s[k] for s in specs]) for k in AXES}
    data = {k: ("run", [r[k] for r in recs]) for k in ("train_loss", "test_loss", "train_acc", "test_acc")}
    data.update(
        gap=("run", [r["train_acc"] - r["test_acc"] for r in recs]),
        loss_gap=("run", [r["test_loss"] - r["train_loss"] for r in recs]),
        epochs=("run", [r["epochs"] for r in recs]),
        converged=("run", [r["converged"] for r in recs]),
        path=("run", list(paths)),
    )
    name = preset if isinstance(preset, str) else "custom"
    return xr.Dataset(data, coords={"run": np.arange(len(specs)), **cols}, attrs={"preset": name})


def load_run(path: str | Path) -> tuple[nn.Module, nn.Module, dict]:
    """``(model, init_model, record)`` of a cached run, both models in eval mode.

    >>> model, init, rec = load_run(build_zoo("tiny", progress=False).path.values[0])
    >>> model.training, sorted(rec)[:3]
    (False, ['converged', 'epochs', 'init_state_dict'])
    """
    rec = torch.load(path, weights_only=True, map_location="cpu")
    spec = json.loads(rec["spec"])
    model, init = build_model(spec), build_model(spec)
    model.load_state_dict(rec["state_dict"])
    init.load_state_dict(rec["init_state_dict"])
    return model.eval(), init.eval(), rec
