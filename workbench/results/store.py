"""A crash-safe store of results appended along ``step``: a folder of netCDF segments.

Each :meth:`StepStore.log` appends one row (or event) to ``journal.jsonl`` with a single ``write`` (microseconds:
cheap enough for every training step, and kept by the kernel when the process is killed), and each
:meth:`StepStore.flush` (or :meth:`StepStore.append`) writes the rows so far as one segment (``seg-000017.nc``)
with :func:`~workbench.results.save`
(a temporary file, fsynced, checksummed and renamed into place), so a writer killed at any instant
(SIGKILL included) leaves every earlier segment whole and at most a temporary file that the next reader
removes. Readers open the folder while a writer appends (:func:`read_store`, :func:`workbench.load`); a
resumed run appends new segments, and a step written twice (a run resumed from an earlier checkpoint) keeps
its latest non-NaN values. Rows along ``step`` and events along ``event`` (alarms) are kept in one
``xarray.Dataset``; variables absent from a row are NaN there.

Why segments rather than one zarr array resized in place: a resize rewrites array metadata before the
chunks land, so a kill between the two leaves steps whose values were never written; a segment is either
wholly there or absent. :func:`to_zarr` exports a finished store for tools that read zarr.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import xarray as xr

from . import load, save
from .files import DamagedFileError, atomic_write, clean_stale_temps

__all__ = ["StepStore", "is_store", "read_store", "combine_rows", "make_row", "rows_to_dataset", "to_zarr", "MARKER"]

MARKER = "workbench-store.json"
JOURNAL = "journal.jsonl"
STEP, EVENT = "step", "event"


def is_store(path) -> bool:
    """Whether ``path`` is a folder written by :class:`StepStore`."""
    return (Path(path) / MARKER).is_file()


class StepStore:
    """Append rows (one ``xarray.Dataset`` per step, scalar coord ``step``) and events to the folder ``path``.

    ``attrs`` (provenance) are written once, when the folder is created; opening an existing store resumes it
    (its attrs kept, ``resumed`` counted).

    >>> import tempfile, xarray as xr
    >>> s = StepStore(tempfile.mkdtemp() + "/run", attrs={"probe": "demo"})
    >>> _ = s.append([xr.Dataset({"loss": ((), 1.5)}, coords={"step": 0})])
    >>> _ = s.append([xr.Dataset({"loss": ((), 0.5)}, coords={"step": 10})])
    >>> ds = read_store(s.path)
    >>> ds.loss.values.tolist(), ds.step.values.tolist(), ds.attrs["probe"]
    ([1.5, 0.5], [0, 10], 'demo')
    """

    def __init__(self, path, attrs: dict | None = None):
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise FileExistsError(f"store: {self.path} is a file; give a folder path for the store")
        if self.path.is_dir() and any(self.path.iterdir()) and not is_store(self.path):
            raise FileExistsError(
                f"store: {self.path} is a folder that is not a workbench store; give a new or empty folder"
            )
        self.path.mkdir(parents=True, exist_ok=True)
        clean_stale_temps(self.path)
        if is_store(self.path):
            meta = json.loads((self.path / MARKER).read_text())
            meta["resumed"] = int(meta.get("resumed", 0)) + 1
        else:
            meta = {"format": "workbench-steps", "version": 1, "attrs": dict(attrs or {}), "resumed": 0}
        atomic_write(self.path / MARKER, lambda tmp: Path(tmp).write_text(json.dumps(meta, sort_keys=True)))
        self.attrs = meta["attrs"]
        self.seq = 1 + max((int(p.stem[4:]) for p in self.path.glob("seg-*.nc")), default=-1)
        self.journal = self.path / JOURNAL
        self.rows: list[dict] = []
        self.events: list[dict] = []
        rows, events = read_journal(self.journal)  # a killed run's last rows: into a segment before going on
        if rows or events:
            self.append(rows, events)
        self.journal.unlink(missing_ok=True)
        self._fd = None

    def log(self, row: dict | xr.Dataset | None = None, event: dict | None = None) -> None:
        """Append one row and/or one event to the journal, and keep them for the next :meth:`flush`. A row is
        ``{"step": int, "data": {name: (dims, value)}, "coords": {dim: labels}}`` (:func:`make_row`; plain
        Python and numpy values, no xarray object per step: microseconds) or a Dataset with a scalar ``step``."""
        rec = {}
        if row is not None:
            row = as_row(row)
            rec["row"] = row
            self.rows.append(row)
        if event is not None:
            rec["event"] = {k: _plain(v) for k, v in event.items()}
            self.events.append(event)
        if self._fd is None:
            self._fd = os.open(self.journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.write(self._fd, (json.dumps(rec, allow_nan=True) + "\n").encode())

    def flush(self) -> Path | None:
        """The journal's rows and events as one segment (atomic), then the journal emptied."""
        path = self.append(self.rows, self.events)
        self.rows, self.events = [], []
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
        return path

    def close(self) -> None:
        self.flush()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.journal.unlink(missing_ok=True)

    def append(self, rows: list, events: list[dict] | None = None) -> Path | None:
        """Write ``rows`` (see :meth:`log`) and ``events`` (dicts of scalars) as one segment."""
        if not rows and not events:
            return None
        parts = []
        if rows:
            parts.append(rows_to_dataset([as_row(r) for r in rows]))
        if events:
            parts.append(_events(events))
        ds = xr.merge(parts, combine_attrs="drop_conflicts")
        ds.attrs = {}
        path = save(ds, self.path / f"seg-{self.seq:06d}.nc")
        self.seq += 1
        return path


def read_store(path) -> xr.Dataset:
    """The store at ``path`` as one Dataset: rows along ``step`` (sorted; a step written twice keeps its latest
    value), events along ``event``, the store's attrs. Safe while a writer appends; temporaries of a killed
    writer are removed, and a damaged segment raises :class:`~workbench.results.DamagedFileError` naming it."""
    path = Path(path)
    if not is_store(path):
        raise FileNotFoundError(f"path: {path} is not a workbench store (no {MARKER} in it)")
    meta = json.loads((path / MARKER).read_text())
    clean_stale_temps(path)
    # the journal first: a flush between the two reads then shows its rows twice (combined), never not at all
    jrows, jevents = read_journal(path / JOURNAL)
    rows, events = [], []
    for seg in sorted(path.glob("seg-*.nc")):
        try:
            ds = load(seg)
        except FileNotFoundError:  # renamed away by a concurrent cleaner: nothing to read
            continue
        except DamagedFileError:
            raise
        ev = [v for v in ds.data_vars if EVENT in ds[v].dims]
        if ev:
            events.append(ds[ev])
        rest = ds.drop_vars(ev)
        if STEP in rest.dims:
            rows.append(rest)
    rows += [rows_to_dataset(jrows)] if jrows else []
    events += [_events(jevents)] if jevents else []
    out = xr.Dataset()
    if rows:
        out = combine_rows(rows)
    if events:
        ev = xr.concat(events, EVENT, join="outer")
        table = ev.to_dataframe().astype(str)
        keep = ~table.duplicated().to_numpy()  # an event read from the journal and from its segment: once
        out = xr.merge([out, ev.isel({EVENT: keep})], combine_attrs="override")
    out.attrs = dict(meta.get("attrs", {}), resumed=int(meta.get("resumed", 0)))
    return out


def _stack(rows: list[xr.Dataset]) -> xr.Dataset:
    """Rows along ``step``; a variable (or coordinate) missing from some rows is NaN there."""
    return xr.concat(rows, STEP, join="outer", coords="minimal", compat="override", combine_attrs="drop_conflicts")


def _plain(v):
    return v.item() if isinstance(v, np.generic) else v


def _events(events: list[dict]) -> xr.Dataset:
    keys = sorted({k for e in events for k in e})
    return xr.Dataset({f"{EVENT}_{k}": (EVENT, np.array([_plain(e.get(k, "")) for e in events])) for k in keys})


def make_row(step: int, data: dict, coords: dict | None = None) -> dict:
    """A row: ``data`` maps names to ``(dims, value)`` (a scalar: ``((), 1.5)``), ``coords`` the labels of dims."""
    out = {}
    for k, (dims, v) in data.items():
        v = np.asarray(v)
        out[k] = [list(dims), v.tolist() if v.ndim else v.item()]
    labels = {d: np.asarray(c).tolist() for d, c in (coords or {}).items()}
    return {"step": int(step), "data": out, "coords": labels}


def as_row(row) -> dict:
    """``row`` as a row dict (a Dataset with a scalar ``step`` coord is converted)."""
    if isinstance(row, dict):
        return row
    data = {k: (v.dims, v.values) for k, v in row.data_vars.items()}
    return make_row(int(row[STEP]), data, {d: row[d].values for d in row.dims if d in row.coords})


def rows_to_dataset(rows: list[dict]) -> xr.Dataset:
    """Rows along ``step``: one array per variable, NaN in the rows that lack it (built at flush and read time)."""
    names = list(dict.fromkeys(k for r in rows for k in r["data"]))
    coords: dict = {}
    for r in rows:
        for d, c in r["coords"].items():
            coords.setdefault(d, c)
    out = {}
    for k in names:
        first = next(r["data"][k] for r in rows if k in r["data"])
        dims, shape = tuple(first[0]), np.shape(first[1])
        kind = np.asarray(first[1]).dtype
        arr = np.full(
            (len(rows), *shape), np.nan if kind.kind in "biuf" else "", dtype=float if kind.kind in "biuf" else object
        )
        for i, r in enumerate(rows):
            if k in r["data"]:
                arr[i] = r["data"][k][1]
        out[k] = ((STEP, *dims), arr)
    return xr.Dataset(out, coords={STEP: [r["step"] for r in rows], **coords})


def read_journal(path) -> tuple[list[dict], list[dict]]:
    """The rows and events of a journal (a torn last line, from a killed writer, is skipped)."""
    rows, events = [], []
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        return rows, events
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "row" in rec:
            rows.append(rec["row"])
        if "event" in rec:
            events.append(rec["event"])
    return rows, events


def combine_rows(rows: list[xr.Dataset]) -> xr.Dataset:
    """Rows (or blocks of rows) along ``step``, sorted; rows of one step combined, the latest non-NaN value of
    each variable kept (a resumed run's repeated steps, a loss recorded after the step's other statistics)."""
    out = _stack(rows)
    steps = out[STEP].values
    if len(np.unique(steps)) == len(steps):
        return out.sortby(STEP)
    return out.groupby(STEP).last(skipna=True).sortby(STEP)


def to_zarr(path, target) -> Path:
    """Export the store at ``path`` to a zarr store at ``target`` (needs the ``zarr`` package)."""
    ds = read_store(path)
    for v in list(ds.variables):
        if ds[v].dtype == object:
            ds[v] = ds[v].astype(str)
    ds.to_zarr(target, mode="w")
    return Path(target)
