import os

import numpy as np
import pytest
import xarray as xr

import workbench as wb
from workbench.testing import hostile_case


def test_save_load_roundtrip_with_attrs(tmp_path):
    m, lf, d = hostile_case()
    r = wb.evaluate(m, lf, d)
    for key in ["probe", "probe_params", "model_fingerprint", "data_fingerprint", "versions", "wall_time_s"]:
        assert key in r.attrs
    p = wb.save(r, tmp_path / "r.nc")
    back = wb.load(p)
    assert back.identical(r)
    da = xr.DataArray(
        np.arange(6.0).reshape(2, 3),
        dims=("alpha", "beta"),
        coords={"alpha": [0, 1]},
        attrs={"long_name": "loss", "seed": 3},
    )
    wb.save(da, tmp_path / "a.nc")
    back = wb.load(tmp_path / "a.nc")
    assert isinstance(back, xr.DataArray) and back.identical(da) and back.name is None


def test_save_is_atomic_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "r.nc"
    good = xr.DataArray([1.0, 2.0], dims="x", name="v")
    wb.save(good, path)

    def boom(self, *a, **k):
        open(a[0], "wb").write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(xr.Dataset, "to_netcdf", boom)
    with pytest.raises(KeyboardInterrupt):
        wb.save(xr.DataArray([9.0], dims="x", name="v"), path)
    monkeypatch.undo()
    assert wb.load(path).identical(good)  # the old file is intact
    assert [f for f in os.listdir(tmp_path)] == ["r.nc"]  # no temp file left behind


def test_unsaveable_attrs_get_a_clear_error(tmp_path):
    da = xr.DataArray([1.0], dims="x", attrs={"flag": True})
    with pytest.raises(TypeError, match="flag"):
        wb.save(da, tmp_path / "x.nc")
    assert not (tmp_path / "x.nc").exists()


def test_results_concatenate_along_checkpoint():
    m, lf, d = hostile_case()
    rs = [wb.evaluate(hostile_case(seed)[0], lf, d) for seed in range(3)]
    ds = wb.concat(rs, "checkpoint", labels=["a", "b", "c"])
    assert ds.loss.dims == ("checkpoint",) and list(ds.checkpoint.values) == ["a", "b", "c"]
    assert float(ds.loss.sel(checkpoint="b")) == float(rs[1].loss)


def _fresh_fingerprint(model):
    """model_fingerprint's definition, computed without any cache."""
    import hashlib

    import torch

    h = hashlib.blake2b(digest_size=8)
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def test_a_new_model_at_a_recycled_address_gets_its_own_fingerprint():
    """Models created and dropped in a loop land at recycled addresses (the id-keyed cache gave 185 of 300
    wrong fingerprints for a 300x300 Linear): each fingerprint must equal a fresh hash."""
    import torch

    from workbench.results import model_fingerprint

    wrong, ids = 0, set()
    for i in range(300):
        torch.manual_seed(i)
        m = torch.nn.Linear(300, 300)
        ids.add(id(m))
        wrong += model_fingerprint(m) != _fresh_fingerprint(m)
        del m
    assert len(ids) < 300  # addresses were recycled: the case is exercised
    assert wrong == 0


def test_fingerprints_see_changes_that_bypass_version_counters():
    import gc
    import weakref

    import torch

    from workbench.results import model_fingerprint

    m = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    fps = [model_fingerprint(m)]
    assert model_fingerprint(m) == fps[0] == _fresh_fingerprint(m)  # cached and equal

    def changed(m):
        fps.append(model_fingerprint(m))
        return fps[-1] != fps[-2] and fps[-1] == _fresh_fingerprint(m)

    m[0].weight.data.mul_(2)  # .data: no version bump
    assert changed(m)
    m.train()
    m(torch.randn(8, 4))  # BatchNorm running statistics: updated without a version bump
    assert changed(m)
    m[1].running_var.data.add_(1)
    assert changed(m)
    with torch.no_grad():
        m[0].bias.add_(1)
    assert changed(m)
    m[0].weight = torch.nn.Parameter(torch.randn(4, 4))  # a new Parameter object in the slot
    assert changed(m)
    ref = weakref.ref(m)
    del m
    gc.collect()
    assert ref() is None  # the cache does not keep models alive


def test_a_shuffled_loader_has_one_data_fingerprint():
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from workbench.results import is_shuffled, unordered_fingerprint

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(50, 3, generator=g), torch.randint(0, 4, (50,), generator=g)
    dl = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True)
    fps = {unordered_fingerprint(dl) for _ in range(5)}
    assert len(fps) == 1 and is_shuffled(dl) and not is_shuffled(DataLoader(TensorDataset(x, y), batch_size=8))
    assert fps == {unordered_fingerprint([(x, y)])} == {unordered_fingerprint(DataLoader(TensorDataset(x, y), 7))}
    y2 = y.clone()
    y2[3] = (y2[3] + 1) % 4
    x2 = x.clone()
    x2[10, 1] += 1e-6
    others = [
        unordered_fingerprint([(x, y2)]),  # one label
        unordered_fingerprint([(x2, y)]),  # one value
        unordered_fingerprint([(x[:-1], y[:-1])]),  # one sample fewer
        unordered_fingerprint([(torch.cat([x, x[:1]]), torch.cat([y, y[:1]]))]),  # one sample twice
        unordered_fingerprint([(x.double(), y)]),  # dtype
        unordered_fingerprint([(x[:, [1, 0, 2]], y)]),  # features swapped within each sample
        unordered_fingerprint([({"a": x}, y)]),  # structure
    ]
    assert len(set(others) | fps) == len(others) + 1
    d = {"ids": torch.arange(12).reshape(6, 2), "mask": torch.ones(6, 2)}
    p = torch.randperm(6)
    assert unordered_fingerprint([(d, None)]) == unordered_fingerprint(
        [({k: v[p[:3]] for k, v in d.items()}, None), ({k: v[p[3:]] for k, v in d.items()}, None)]
    )
