import numpy as np
from torch import nn

from workbench.testing import tiny_classifier

from workbench import landscape, plots
from workbench import sharpness as S


def _m():
    return tiny_classifier(40)


def test_landscape_figures_carry_the_data():
    m, lf, d = _m()
    s1 = landscape.slice_1d(m, lf, d, seeds=[0, 1, 2], steps=5, progress=False)
    f = plots.slice_1d(s1)
    mean = [t for t in f.data if t.name.startswith("loss: mean")][0]
    np.testing.assert_allclose(mean.y, s1.mean("seed").values)
    s2 = landscape.slice_2d(m, lf, d, steps=5, progress=False)
    c = plots.slice_2d(s2, log=True)
    np.testing.assert_allclose(np.asarray(c.data[0].z), np.log10(s2.values.T))
    assert plots.slice_2d(s2, kind="surface").data[0].type == "surface"
    p = landscape.interpolate(m, nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)), lf, d, steps=5,
                              progress=False)
    fi = plots.interpolation(p)
    assert any("barrier" in a.text for a in fi.layout.annotations)


def test_hessian_eigenvectors_are_landscape_directions():
    m, lf, d = _m()
    e = S.hessian_eigenvalues(m, lf, d, k=2, return_eigenvectors=True, progress=False)
    s = landscape.slice_1d(m, lf, d, direction=e.eigenvector.values[0], coords=[-1e-2, 0, 1e-2], progress=False)
    # along the top eigenvector the loss curvature is lambda_1: L(+h) + L(-h) - 2 L(0) = lambda h^2
    curv = (float(s[0]) + float(s[2]) - 2 * float(s[1])) / 1e-4
    assert abs(curv - float(e.eigenvalue[0])) < 0.05 * abs(float(e.eigenvalue[0])) + 1e-3


def test_sharpness_figures():
    m, lf, d = _m()
    e = S.hessian_eigenvalues(m, lf, d, k=3, progress=False)
    assert list(plots.eigenvalues(e).data[0].y) == list(e.values)
    dens = S.spectral_density(m, lf, d, n_runs=2, n_steps=6, progress=False)
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
