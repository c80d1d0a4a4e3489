import numpy as np
from torch import nn

from workbench import landscape, plots
from workbench import sharpness as S
from workbench.testing import tiny_classifier


def _m():
    return tiny_classifier(40)


def test_landscape_figures_carry_the_data():
    m, lf, d = _m()
    s1 = landscape.slice_1d(m, lf, d, seeds=[0, 1, 2], steps=5, progress=False)
    f = plots.slice_1d(s1)
    mean = [t for t in f.data if t.name.startswith("loss: mean")][0]
    np.testing.assert_allclose(mean.y, s1.loss.mean("seed").values)
    s2 = landscape.slice_2d(m, lf, d, steps=5, progress=False)
    c = plots.slice_2d(s2, log=True)
    np.testing.assert_allclose(np.asarray(c.data[0].z), np.log10(s2.loss.values.T))
    np.testing.assert_allclose(np.asarray(plots.slice_2d(s2.loss).data[0].z), s2.loss.values.T)  # a DataArray too
    assert plots.slice_2d(s2, kind="surface").data[0].type == "surface"
    p = landscape.interpolate(
        m, nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)), lf, d, steps=5, progress=False
    )
    fi = plots.interpolation(p)
    assert any("barrier" in a.text for a in fi.layout.annotations)


def test_hessian_eigenvectors_are_landscape_directions():
    m, lf, d = _m()
    e = S.hessian_eigenvalues(m, lf, d, k=2, return_eigenvectors=True, progress=False)
    s = landscape.slice_1d(m, lf, d, direction=e.eigenvector.values[0], coords=[-1e-2, 0, 1e-2], progress=False)
    # along the top eigenvector the loss curvature is lambda_1: L(+h) + L(-h) - 2 L(0) = lambda h^2
    curv = (float(s.loss[0]) + float(s.loss[2]) - 2 * float(s.loss[1])) / 1e-4
    assert abs(curv - float(e.eigenvalue[0])) < 0.05 * abs(float(e.eigenvalue[0])) + 1e-3


def test_sharpness_figures():
    m, lf, d = _m()
    e = S.hessian_eigenvalues(m, lf, d, k=3, progress=False)
    assert list(plots.eigenvalues(e).data[0].y) == list(e.eigenvalue.values)
    assert list(plots.eigenvalues(e.eigenvalue).data[0].y) == list(e.eigenvalue.values)  # a DataArray too
    dens = S.spectral_density(m, lf, d, n_runs=2, n_lanczos=6, progress=False)
    a, b = plots.spectral_density(dens).data[0].y, plots.spectral_density(dens, sigma=0.5).data[0].y
    assert len(a) == len(b) and not np.allclose(a, b)
    r = S.sam_sharpness(m, lf, d, rho=[0.0, 0.1], progress=False)
    assert list(plots.sharpness_vs_rho(r).data[0].x) == [0.0, 0.1]


def test_attention_figures():
    from workbench import attention as A
    from workbench.testing import hostile_transformer

    m, x, mask = hostile_transformer()
    st = A.attention_stats(m, x, src_key_padding_mask=mask)
    hm = plots.heatmap(st, "normalized_entropy")
    np.testing.assert_allclose(np.asarray(hm.data[0].z), st.normalized_entropy.values)
    att = A.attention_map(m, x, layer=0, example=1, src_key_padding_mask=mask)
    assert np.asarray(plots.attention_map(att, head=2).data[0].z).shape == (7, 7)
    ov = A.over_checkpoints([m, m], x, losses=[1.0, 0.5], dim="step", progress=False, src_key_padding_mask=mask)
    assert len(plots.over_training(ov).data) == 2 * 4 + 1
    assert len(plots.collapse_overview({"a": st}).data[0].y) == 8


def test_eigenvalues_sit_on_integer_ranks_with_their_residuals():
    import xarray as xr

    def ds(k, scale=1.0):
        return xr.Dataset(
            {"eigenvalue": ("rank", scale * np.geomspace(10, 0.1, k)), "residual": ("rank", np.full(k, 1e-3))},
            coords={"rank": np.arange(k)},
        )

    f = plots.eigenvalues(ds(5), reference={"other": ds(5, 2.0)})
    mine = f.data[-1]
    assert mine.mode == "markers" and all(float(v).is_integer() for v in mine.x)
    assert f.layout.xaxis.dtick == 1 and f.layout.xaxis.tickmode == "linear" and f.layout.xaxis.tickformat == "d"
    assert mine.error_y.visible and list(mine.error_y.array) == [1e-3] * 5 and "Ritz" in f.layout.title.text
    assert f.data[0].name == "reference models" and f.layout.yaxis.type == "linear"
    big = plots.eigenvalues(ds(40))
    assert big.layout.yaxis.type == "log" and big.layout.xaxis.dtick == 2  # integer ticks, readable
    neg = ds(40)
    neg["eigenvalue"][-1] = -0.5
    assert plots.eigenvalues(neg).layout.yaxis.type == "linear"  # a negative eigenvalue: no log axis


def test_categorical_axes_are_not_drawn_as_lines():
    import xarray as xr

    by_model = xr.Dataset({"loss": ("checkpoint", [0.1, 0.3])}, coords={"checkpoint": ["sgd", "sam"]})
    by_step = xr.Dataset({"loss": ("checkpoint", [0.1, 0.3])}, coords={"checkpoint": [0, 100]})
    assert plots.over_checkpoints(by_model).data[0].mode == "markers"
    f = plots.over_checkpoints(by_step)
    assert f.data[0].mode == "lines+markers" and list(f.data[0].x) == [0, 100]  # steps keep their spacing


def test_attention_map_keeps_repeated_tokens_apart():
    import xarray as xr

    att = xr.DataArray(np.eye(3)[None], dims=("head", "query", "key"), coords={"head": [0]})
    f = plots.attention_map(att, 0, tokens=["the", "cat", "the"])
    assert list(f.data[0].x) == [0, 1, 2] and list(f.layout.xaxis.ticktext) == ["the", "cat", "the"]
    np.testing.assert_allclose(np.asarray(f.data[0].z), np.eye(3))
