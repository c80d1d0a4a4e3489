"""One result format: xarray objects with provenance, saved atomically as netCDF.

Every probe returns an ``xarray.DataArray`` or ``xarray.Dataset`` whose attrs carry
``long_name``/``units`` and the provenance keys below, all netCDF-serialisable (str, int, float)
so that :func:`save` followed by :func:`load` gives back an equal object, attrs included.

Provenance attrs: ``probe``, ``probe_params`` (JSON), ``model_fingerprint``,
``data_fingerprint``, ``seed``, ``versions`` (JSON), ``wall_time_s``, ``created``.

A saved file also stores a checksum of its contents (attr ``workbench_checksum``, verified and
dropped by :func:`load`). Writes are atomic and their leftovers cleaned (:mod:`.files`); fingerprints
are in :mod:`.fingerprint`.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from torch import nn

from .files import (
    CHECKSUM_ATTR,
    DamagedFileError,
    atomic_write,
    clean_stale_temps,
    damaged,
    stamp_checksum,
    verify_checksum,
)
from .fingerprint import is_shuffled, model_fingerprint, unordered_fingerprint

__all__ = [
    "save",
    "load",
    "concat",
    "provenance",
    "versions",
    "atomic_write",
    "clean_stale_temps",
    "DamagedFileError",
    "model_fingerprint",
    "unordered_fingerprint",
    "is_shuffled",
]

_DA_FLAG = "workbench_dataarray"
_UNNAMED = "__workbench_unnamed__"


def versions() -> dict[str, str]:
    from .. import __version__

    return {"workbench": __version__, "torch": torch.__version__, "numpy": np.__version__, "xarray": xr.__version__}


def _jsonable(v):
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return v.tolist() if v.size <= 64 else f"<array shape={v.shape}>"
    if isinstance(v, torch.Tensor):
        return v.tolist() if v.numel() <= 64 else f"<tensor shape={tuple(v.shape)}>"
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, nn.Module):
        return f"<{type(v).__name__} {model_fingerprint(v)}>"
    if callable(v):
        return getattr(v, "__qualname__", None) or type(v).__name__
    return repr(v)[:200]


def provenance(
    probe: str, params: dict, model: nn.Module | None = None, data=None, seed=None, wall_time_s: float | None = None
) -> dict:
    attrs = {
        "probe": probe,
        "probe_params": json.dumps(_jsonable(params), sort_keys=True),
        "versions": json.dumps(versions(), sort_keys=True),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    if model is not None:
        attrs["model_fingerprint"] = model_fingerprint(model)
    if data is not None:
        attrs["data_fingerprint"] = data.fingerprint() if hasattr(data, "fingerprint") else str(data)
    if seed is not None:
        attrs["seed"] = int(seed)
    if wall_time_s is not None:
        attrs["wall_time_s"] = float(wall_time_s)
    return attrs


def _check_attrs(attrs: dict, where: str) -> None:
    for k, v in attrs.items():
        ok = isinstance(v, (str, int, float, np.integer, np.floating)) and not isinstance(v, bool)
        if isinstance(v, np.ndarray):
            ok = v.ndim == 1 and v.dtype.kind in "iuf"
        if not ok:
            raise TypeError(
                f"save: attr {k!r} of {where} is a {type(v).__name__}; netCDF stores only str, int, float and "
                "1-D numeric arrays. Convert it (e.g. json.dumps for dicts, int for bools) before saving"
            )


def save(obj, path) -> Path:
    """Write ``obj`` (DataArray or Dataset) to ``path`` as netCDF4 (h5netcdf), atomically, with a checksum.

    The file is written to a temporary name in the same folder, its checksum stored in it, fsynced
    and renamed into place, so an interrupted or killed save never leaves a broken or half-written
    file at ``path`` (:func:`~workbench.results.files.atomic_write`: an existing file keeps its mode, a
    symlink is written through).

    >>> import tempfile, pathlib
    >>> p = save(xr.DataArray([1.0, 2.0], dims="x", attrs={"units": "nats"}), pathlib.Path(tempfile.mkdtemp()) / "r.nc")
    >>> load(p).attrs
    {'units': 'nats'}
    """
    path = Path(path)
    if isinstance(obj, xr.DataArray):
        name = obj.name if obj.name is not None else _UNNAMED
        ds = obj.to_dataset(name=name)
        ds.attrs = {_DA_FLAG: str(name)}
    elif isinstance(obj, xr.Dataset):
        ds = obj
    else:
        raise TypeError(f"save: obj must be an xarray DataArray or Dataset, got {type(obj).__name__}")
    _check_attrs(ds.attrs, "the dataset")
    for name, var in ds.variables.items():
        _check_attrs(var.attrs, f"variable {name!r}")

    def write(tmp: str) -> None:
        ds.to_netcdf(tmp, engine="h5netcdf", invalid_netcdf=False)
        stamp_checksum(tmp)

    return atomic_write(path, write)


def load(path, verify: bool = True):
    """Read back what :func:`save` wrote (a DataArray if a DataArray was saved).

    ``verify``: check the checksum stored by :func:`save` against the contents first (files without one,
    written before checksums or by another tool, are read unchecked). A truncated or damaged file raises
    :class:`~workbench.results.files.DamagedFileError` (a ``ValueError``) naming it. Temporary files
    that killed writers left in the folder are removed. A folder written by a
    :class:`~workbench.results.store.StepStore` (a training monitor's store) is read whole, as one Dataset.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"path: no file at {path}")
    if path.is_dir():
        from .store import read_store

        return read_store(path)
    clean_stale_temps(Path(os.path.realpath(path)).parent)
    if verify:
        verify_checksum(path)
    try:
        ds = xr.load_dataset(path, engine="h5netcdf")
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as e:
        raise damaged(path, f"{type(e).__name__}: {e}") from e
    ds.attrs.pop(CHECKSUM_ATTR, None)
    flag = ds.attrs.get(_DA_FLAG)
    if flag is not None:
        da = ds[flag]
        if flag == _UNNAMED:
            da = da.rename(None)
        return da
    return ds


def concat(results, dim: str = "checkpoint", labels=None):
    """Concatenate results of many runs along a new dim (``checkpoint`` by default)."""
    results = list(results)
    if not results:
        raise ValueError("concat: results is empty")
    out = xr.concat(results, dim=dim, combine_attrs="drop_conflicts")
    if labels is not None:
        out = out.assign_coords({dim: list(labels)})
    return out
