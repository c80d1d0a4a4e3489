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
