"""Run directories: the checkpoints of a training run, ordered by step, as input to the over-checkpoint probes.

A run directory holds Hugging Face ``checkpoint-<step>`` folders (the ``Trainer``'s), PyTorch Lightning
``epoch=<e>-step=<s>.ckpt`` files, or state dicts / TorchScript files with the step in their name
(``step_1200.pt``, ``model-300.safetensors``: the last integer). :func:`run_checkpoints` lists them by step;
:func:`load_run` loads them with :func:`workbench.load_model` into a ``{step: model}`` dict, which
:func:`workbench.attention.over_checkpoints` and :func:`workbench.sharpness.summary` also take directly as a
directory (then stacked along ``step``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from torch import nn

from .loading import load_model

SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".ts", ".torchscript", ".jit")


def _step(path: Path) -> int | None:
    name = path.name
    if path.is_dir():
        m = re.fullmatch(r"checkpoint-(\d+)", name)
        return int(m.group(1)) if m and (path / "config.json").exists() else None
    if path.suffix not in SUFFIXES:
        return None
    m = re.search(r"step=(\d+)", name)
    if m:
        return int(m.group(1))
    numbers = re.findall(r"\d+", path.stem)
    return int(numbers[-1]) if numbers else None


def run_checkpoints(run_dir: str | os.PathLike) -> dict[int, Path]:
    """``{step: path}`` of the checkpoints in ``run_dir``, by increasing step (files and folders without a
    step, such as ``last.ckpt`` or ``config.json``, are left out).

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> for n in ("epoch=1-step=200.ckpt", "epoch=0-step=100.ckpt", "last.ckpt", "notes.txt"):
    ...     _ = (d / n).write_bytes(b"")
    >>> {s: p.name for s, p in run_checkpoints(d).items()}
    {100: 'epoch=0-step=100.ckpt', 200: 'epoch=1-step=200.ckpt'}
    """
    root = Path(run_dir)
    if not root.is_dir():
        raise ValueError(f"run_dir: {str(root)!r} is not a directory of checkpoints")
    found: dict[int, Path] = {}
    for p in sorted(root.iterdir()):
        s = _step(p)
        if s is None:
            continue
        if s in found:
            raise ValueError(f"run_dir: two checkpoints for step {s}: {found[s].name} and {p.name}; keep one")
        found[s] = p
    if not found:
        raise ValueError(
            f"run_dir: no checkpoint in {str(root)!r}; expected Hugging Face checkpoint-<step> folders, Lightning "
            "epoch=<e>-step=<s>.ckpt files, or .pt / .safetensors / TorchScript files with the step in the name"
        )
    return dict(sorted(found.items()))


def load_run(run_dir: str | os.PathLike, **load: object) -> dict[int, nn.Module]:
    """``{step: model}`` of every checkpoint of ``run_dir`` (:func:`run_checkpoints`), each loaded by
    :func:`workbench.load_model` with the keywords ``load`` (``builder=``, ``module_class=``, ``device=``).

    >>> import tempfile, pathlib, torch
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> for s in (30, 10):
    ...     torch.save(torch.nn.Linear(2, 1).state_dict(), d / f"step_{s}.pt")
    >>> list(load_run(d, builder=lambda: torch.nn.Linear(2, 1)))
    [10, 30]
    """
    return {s: load_model(str(p), **load) for s, p in run_checkpoints(run_dir).items()}
