"""One result format: xarray objects with provenance, saved atomically as netCDF.

Every probe returns an ``xarray.DataArray`` or ``xarray.Dataset`` whose attrs carry
``long_name``/``units`` and the provenance keys below, all netCDF-serialisable (str, int, float)
so that :func:`save` followed by :func:`load` gives back an equal object, attrs included.

Provenance attrs: ``probe``, ``probe_params`` (JSON), ``model_fingerprint``,
``data_fingerprint``, ``seed``, ``versions`` (JSON), ``wall_time_s``, ``created``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from torch import nn

_DA_FLAG = "workbench_dataarray"
_UNNAMED = "__workbench_unnamed__"


_FP_CACHE: dict = {}


def model_fingerprint(model: nn.Module) -> str:
    """blake2b (16 hex digits) over names, shapes, dtypes and bytes of all parameters and buffers.

    Cached on the tensors' identities, storage and autograd version counters (any in-place write bumps
    them), so repeated probes on an unchanged model do not hash its weights again.
    """
    named = [(n, t) for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t is not None]
    key = (id(model), tuple((n, id(t), t._version, t.data_ptr(), tuple(t.shape), str(t.dtype)) for n, t in named))
    hit = _FP_CACHE.get(key)
    if hit is not None:
        return hit
    h = hashlib.blake2b(digest_size=8)
    for name, t in named:
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())  # buffer protocol: no copy
    fp = h.hexdigest()
    if len(_FP_CACHE) > 256:
        _FP_CACHE.clear()
    _FP_CACHE[key] = fp
    return fp


def versions() -> dict[str, str]:
    from . import __version__

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
    """Write ``obj`` (DataArray or Dataset) to ``path`` as netCDF4 (h5netcdf), atomically.

    The file is written to a temporary name in the same folder and renamed into place, so an
    interrupted save never leaves a broken or half-written file at ``path``.
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
    return atomic_write(path, lambda tmp: ds.to_netcdf(tmp, engine="h5netcdf", invalid_netcdf=False))


def atomic_write(path, write) -> Path:
    """Write a file atomically: ``write(tmp_path)`` fills a temporary file in the same folder, which is
    then renamed onto ``path``; an interrupted write never leaves a broken or half-written ``path``, and
    the temporary file is removed. The new file gets the permissions a plain ``open()`` would give.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "note.txt"
    >>> _ = atomic_write(p, lambda tmp: pathlib.Path(tmp).write_text("hi"))
    >>> p.read_text()
    'hi'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def load(path):
    """Read back what :func:`save` wrote (a DataArray if a DataArray was saved)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"load: no file at {path}")
    ds = xr.load_dataset(path, engine="h5netcdf")
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
