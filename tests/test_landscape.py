import copy
import warnings

import numpy as np
import pytest
import torch
import xarray as xr
from torch import nn

import workbench as wb
from workbench import landscape as L
from workbench.params import ParamSpace


def _cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3)
    ).eval()


def _data(n=30):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, 6, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def _f64_loss(model, theta_dict, x, y):
    m = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for n, p in m.named_parameters():
            p.copy_(theta_dict[n].double())
        return float(nn.functional.cross_entropy(m(x.double()), y))


def test_every_cell_equals_a_float64_recomputation():
    m, (x, y) = _cnn(), _data()
    d1, d2 = [L.random_direction(m, s) for s in (5, 6)]
    c = np.array([-0.75, -0.25, 0.0, 0.5])
    s = L.slice_2d(m, nn.CrossEntropyLoss(), (x, y), directions=[d1, d2], coords=c, progress=False)
    assert s.loss.dims == ("alpha", "beta") and s.loss.shape == (4, 4)
    theta = {n: p.detach().double() for n, p in m.named_parameters()}
    for i, a in enumerate(c):
        for j, b in enumerate(c):
            ref = _f64_loss(m, {n: theta[n] + a * d1[n].double() + b * d2[n].double() for n in theta}, x, y)
            assert abs(float(s.loss[i, j]) - ref) <= 1e-4 * abs(ref)


def test_lattice_contains_theta_exactly():
    m, data = _cnn(), _data()
    lf = nn.CrossEntropyLoss()
    s = L.slice_2d(m, lf, data, steps=5, span=0.5, seed=3, progress=False)
    np.testing.assert_array_equal(s.alpha.values, [-0.5, -0.25, 0.0, 0.25, 0.5])
    np.testing.assert_array_equal(s.alpha.values, s.beta.values)
    assert float(s.loss.sel(alpha=0.0, beta=0.0)) == float(wb.evaluate(m, lf, data).loss)  # bitwise
    # rows are not staggered: a 1-D slice along d1 equals the beta=0 row
    d1 = L.random_directions(m, 2, seed=3)[0][0]
    row = L.slice_1d(m, lf, data, direction=d1, coords=s.alpha.values, progress=False)
    np.testing.assert_allclose(row.loss.values, s.loss.sel(beta=0.0).values, rtol=1e-6)


def test_filter_normalisation_per_tensor_rank():
    m = _cnn()
    with torch.no_grad():
        m[0].bias.zero_()  # all-zero 1-D parameter must not crash
    theta = {n: p.detach() for n, p in m.named_parameters()}
    d = L.random_direction(m, 0, "filter", "zero")
    w = "0.weight"
    np.testing.assert_allclose(d[w].reshape(4, -1).norm(dim=1), theta[w].reshape(4, -1).norm(dim=1), rtol=1e-5)
    lw = "4.weight"
    np.testing.assert_allclose(d[lw].norm(dim=1), theta[lw].norm(dim=1), rtol=1e-5)
    for n in ("0.bias", "1.weight", "1.bias", "4.bias"):
        assert torch.count_nonzero(d[n]) == 0
    ds = L.random_direction(m, 0, "filter", "scale")
    assert torch.count_nonzero(ds["0.bias"]) == 0  # zero bias -> zero direction, no ZeroDivisionError
    assert float(ds["1.weight"].norm()) == pytest.approx(float(theta["1.weight"].norm()), rel=1e-5)
    dl = L.random_direction(m, 0, "layer", "zero")
    assert float(dl[w].norm()) == pytest.approx(float(theta[w].norm()), rel=1e-5)
    dm = L.random_direction(m, 0, "model", "keep")
    tot = lambda dd: float(torch.sqrt(sum((v.double() ** 2).sum() for v in dd.values())))  # noqa: E731
    assert tot(dm) == pytest.approx(tot(theta), rel=1e-5)
    # Gaussian, not uniform: the raw direction has mean ~0 and negative entries
    raw = L.random_direction(m, 0, "none", "keep")
    v = torch.cat([t.reshape(-1) for t in raw.values()])
    assert (v < 0).float().mean() == pytest.approx(0.5, abs=0.1) and abs(float(v.mean())) < 0.15


def test_seeds_are_deterministic_and_recorded():
    m, data = _cnn(), _data()
    lf = nn.CrossEntropyLoss()
    a = L.slice_2d(m, lf, data, steps=3, seed=7, progress=False)
    b = L.slice_2d(m, lf, data, steps=3, seed=7, progress=False)
    c = L.slice_2d(m, lf, data, steps=3, seed=8, progress=False)
    np.testing.assert_array_equal(a.loss.values, b.loss.values)
    assert not np.allclose(a.loss.values, c.loss.values)
    import json

    seeds = json.loads(a.attrs["probe_params"])["direction_seeds"]
    assert len(seeds) == 2 and seeds[0] != seeds[1] and seeds == L.child_seeds(7, 2)


def test_several_seeds_give_a_band():
    m, data = _cnn(), _data()
    s = L.slice_1d(m, nn.CrossEntropyLoss(), data, seeds=[0, 1, 2], steps=5, progress=False)
    assert s.loss.dims == ("seed", "alpha") and s.loss.shape == (3, 5)
    assert float(s.loss.std("seed").sel(alpha=1.0)) > 0
    np.testing.assert_allclose(s.loss.sel(alpha=0.0).values, s.loss.sel(alpha=0.0).values[0])  # all share theta


def test_nan_losses_are_data_with_one_warning():
    m, data = _cnn(), _data()

    def loss_fn(out, y):
        v = nn.functional.cross_entropy(out, y)
        return v if v < 1.5 else v * float("inf")

    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        s = L.slice_1d(m, loss_fn, data, steps=9, span=20, seed=0, progress=False)
    msgs = [str(x.message) for x in w if issubclass(x.category, RuntimeWarning)]
    assert len(msgs) == 1 and "non-finite" in msgs[0]
    assert np.isnan(s.loss.values).any() and np.isfinite(s.loss.sel(alpha=0.0))


def test_vmap_engine_equals_loop():
    m, data = _cnn(), _data()
    lf = nn.CrossEntropyLoss()
    a = L.slice_2d(m, lf, data, steps=4, seed=1, engine="loop", progress=False)
    b = L.slice_2d(m, lf, data, steps=4, seed=1, engine="vmap", chunk=5, progress=False)
    np.testing.assert_allclose(a.loss.values, b.loss.values, rtol=1e-5)


def test_train_mode_does_not_touch_running_stats():
    m, data = _cnn(), _data()
    m.train()
    before = m[1].running_mean.clone(), int(m[1].num_batches_tracked)
    s = L.slice_1d(m, nn.CrossEntropyLoss(), data, steps=3, mode="train", progress=False)
    assert torch.equal(m[1].running_mean, before[0]) and int(m[1].num_batches_tracked) == before[1]
    assert m.training and np.isfinite(s.loss.values).all()


def test_explicit_direction_errors_name_the_argument():
    m, data = _cnn(), _data()
    lf = nn.CrossEntropyLoss()
    bad = [torch.zeros(3)]
    with pytest.raises(ValueError, match="got 1 tensors"):
        L.slice_1d(m, lf, data, direction=bad, progress=False)
    zeros = {n: torch.zeros_like(p) for n, p in m.named_parameters()}
    with pytest.raises(ValueError, match="all zeros"):
        L.slice_1d(m, lf, data, direction=zeros, progress=False)
    with pytest.raises(ValueError, match="coords"):
        L.slice_1d(m, lf, data, coords=[], progress=False)


def test_parameter_subset_moves_only_that_layer():
    m, data = _cnn(), _data()
    s = L.slice_1d(m, nn.CrossEntropyLoss(), data, steps=3, params=["4"], seed=0, progress=False)
    d = L.random_direction(m, L.child_seeds(0, 1)[0], params=["4"])
    assert set(d) == {"4.weight", "4.bias"}
    assert np.isfinite(s.loss.values).all()


def test_interpolate_barrier_and_endpoints():
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    b = copy.deepcopy(a)
    with torch.no_grad():
        for p in b.parameters():
            p.mul_(-1.3).add_(0.1)
    g = torch.Generator().manual_seed(1)
    data = torch.randn(50, 4, generator=g), torch.randint(0, 3, (50,), generator=g)
    lf = nn.CrossEntropyLoss()
    r = L.interpolate(a, b, lf, data, steps=11, progress=False)
    t = r.t.values
    assert float(r.loss[0]) == float(wb.evaluate(a, lf, data).loss)
    assert float(r.loss[-1]) == float(wb.evaluate(b, lf, data).loss)
    mid = copy.deepcopy(a)
    with torch.no_grad():
        for pm, pa, pb in zip(mid.parameters(), a.parameters(), b.parameters()):
            pm.copy_(0.7 * pa + 0.3 * pb)
    assert float(r.loss.sel(t=0.3, method="nearest")) == pytest.approx(float(wb.evaluate(mid, lf, data).loss), rel=1e-5)
    lin = (1 - t) * r.loss.values[0] + t * r.loss.values[-1]
    assert r.attrs["barrier"] == pytest.approx(np.max(r.loss.values - lin))
    assert r.attrs["barrier_simple"] == pytest.approx(r.loss.values.max() - max(r.loss.values[[0, -1]]))
    assert 0 <= float(r.accuracy.min()) <= float(r.accuracy.max()) <= 1


def test_interpolate_bn_reset_matches_update_bn():
    torch.manual_seed(0)
    mk = lambda: nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))  # noqa: E731
    a, b = mk(), mk()
    for m in (a, b):
        m.train()
        with torch.no_grad():
            m(torch.randn(64, 4) * 3 + 1)
        m.eval()
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(40, 4, generator=g), torch.randint(0, 3, (40,), generator=g)
    r = L.interpolate(a, b, nn.CrossEntropyLoss(), (x, y), coords=[0.5], bn_reset=True, progress=False)
    mid = copy.deepcopy(a)
    with torch.no_grad():
        for pm, pa, pb in zip(mid.parameters(), a.parameters(), b.parameters()):
            pm.copy_(0.5 * pa + 0.5 * pb)
    torch.optim.swa_utils.update_bn([(x,)], mid)
    mid.eval()
    with torch.no_grad():
        ref = float(nn.functional.cross_entropy(mid(x), y))
    assert float(r.loss[0]) == pytest.approx(ref, rel=1e-5)
    plain = L.interpolate(a, b, nn.CrossEntropyLoss(), (x, y), coords=[0.5], progress=False)
    assert abs(float(plain.loss[0]) - ref) > 1e-4  # repair changes the answer: the test can fail


def test_interpolate_rejects_different_architectures():
    with pytest.raises(ValueError, match="one architecture"):
        L.interpolate(nn.Linear(3, 2), nn.Linear(4, 2), nn.MSELoss(), (torch.randn(5, 3), torch.randn(5, 2)))


def test_pca_directions_match_sklearn():
    from sklearn.decomposition import PCA

    torch.manual_seed(0)
    base = nn.Linear(5, 3)
    traj = []
    for i in range(6):
        m = copy.deepcopy(base)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(torch.randn_like(p) * (0.1 * (6 - i)) + 0.05 * i)
        traj.append(m)
    ds = L.pca_directions(traj)
    assert ds.direction.dims == ("component", "param") and ds["coords"].dims == ("checkpoint", "component")
    sp = ParamSpace(traj[-1])
    v = [torch.from_numpy(ds.direction.values[k]) for k in range(2)]
    assert float(v[0] @ v[1]) == pytest.approx(0, abs=1e-6) and float(v[0].norm()) == pytest.approx(1, rel=1e-6)
    M = np.stack([(ParamSpace(m).theta0 - sp.theta0).double().numpy() for m in traj[:-1]])
    pca = PCA(2).fit(M)
    np.testing.assert_allclose(ds.explained_variance_ratio.values, pca.explained_variance_ratio_, rtol=1e-5)
    for k in range(2):
        assert abs(float(np.dot(pca.components_[k], v[k].numpy()))) == pytest.approx(1, rel=1e-5)
    np.testing.assert_allclose(ds["coords"].values[-1], [0, 0], atol=1e-12)
    s = L.slice_2d(
        traj[-1], nn.MSELoss(), (torch.randn(8, 5), torch.randn(8, 3)), directions=ds, steps=3, progress=False
    )
    assert s.trajectory_alpha.shape == (6,) and "loss" in s
    np.testing.assert_array_equal(s.trajectory_beta.values, ds["coords"].values[:, 1])


def test_tied_weights_move_together():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Linear(4, 4, bias=False)
            self.out = nn.Linear(4, 4, bias=False)
            self.out.weight = self.emb.weight  # one Parameter, two names

        def forward(self, x):
            return self.out(torch.tanh(self.emb(x)))

    torch.manual_seed(0)
    m = Tied().eval()
    x, y = torch.randn(10, 4), torch.randint(0, 4, (10,))
    d = {"emb.weight": torch.randn(4, 4)}
    s = L.slice_1d(m, nn.CrossEntropyLoss(), (x, y), direction=d, coords=[0.5], progress=False)
    ref = copy.deepcopy(m)
    with torch.no_grad():
        ref.emb.weight.add_(0.5 * d["emb.weight"])  # moves both uses
        assert float(s.loss[0]) == pytest.approx(float(nn.functional.cross_entropy(ref(x), y)), rel=1e-6)


def test_flat_direction_of_the_wrong_length_names_the_fix():
    m, data = _cnn(), _data()
    with pytest.raises(ValueError, match="direction 0: a flat vector must have 483 entries.*parameters\\(\\) order"):
        L.slice_1d(m, nn.CrossEntropyLoss(), data, direction=torch.ones(10_000), progress=False)


# -- the probe contract, return types, the keyword tail ------------------------------------------


def test_slices_always_return_a_dataset():
    m, data = _cnn(), _data()
    lf = nn.CrossEntropyLoss()
    for acc in (False, True):
        s1 = L.slice_1d(m, lf, data, steps=3, accuracy=acc, progress=False)
        s2 = L.slice_2d(m, lf, data, steps=3, accuracy=acc, progress=False)
        assert isinstance(s1, xr.Dataset) and isinstance(s2, xr.Dataset)
        assert ("accuracy" in s1) is acc and ("accuracy" in s2) is acc
    ref = wb.evaluate(m, lf, data)
    assert float(s2.accuracy.sel(alpha=0.0, beta=0.0)) == float(ref.accuracy)
    assert float(s1.accuracy.sel(alpha=0.0)) == float(ref.accuracy)
    assert s2.loss.attrs["units"] == "nats" and "trajectory_alpha" not in s2


def test_progress_callback_and_cancel_mid_grid():
    import threading

    m, data = _cnn(), _data()
    seen, ev = [], threading.Event()

    def progress(done, total):
        seen.append((done, total))
        if done == 4:
            ev.set()

    s = L.slice_2d(m, nn.CrossEntropyLoss(), data, steps=3, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (9, 9) and len(seen) == 9 and "loss" in s
    seen.clear()
    state = wb.state.snapshot(m)
    with pytest.raises(wb.Cancelled):
        L.slice_2d(m, nn.CrossEntropyLoss(), data, steps=3, progress=progress, cancel=ev)
    assert seen[-1] == (4, 9) and state.matches(m)


def test_pca_dataset_drives_slice_2d():
    torch.manual_seed(0)
    traj = [nn.Linear(3, 2) for _ in range(5)]
    ds = L.pca_directions({f"epoch {i}": m for i, m in enumerate(traj)})
    assert list(ds.checkpoint.values) == [f"epoch {i}" for i in range(5)] and ds.direction.shape == (2, 8)
    data = (torch.randn(8, 3), torch.randn(8, 2))
    a = L.slice_2d(traj[-1], nn.MSELoss(), data, directions=ds, steps=3, progress=False)
    b = L.slice_2d(traj[-1], nn.MSELoss(), data, directions=[ds.direction[0], ds.direction[1]], steps=3, progress=False)
    np.testing.assert_array_equal(a.loss.values, b.loss.values)
    assert "trajectory_alpha" in a and "trajectory_alpha" not in b
    import json

    assert json.loads(a.attrs["probe_params"])["directions"] == "pca"
    one = L.pca_directions(traj, n_components=1)
    assert one.direction.shape == (1, 8)
    with pytest.raises(ValueError, match="n_components=2"):
        L.slice_2d(traj[-1], nn.MSELoss(), data, directions=one, steps=3, progress=False)


def test_pca_refuses_directions_that_are_rounding_noise():
    torch.manual_seed(0)
    traj = [nn.Linear(3, 2) for _ in range(3)]
    with pytest.raises(ValueError, match="at least n_components \\+ 2 = 4 checkpoints"):
        L.pca_directions(traj)
    base = nn.Linear(3, 2)
    line = []
    for k in range(5):  # collinear checkpoints: one real direction
        c = copy.deepcopy(base)
        with torch.no_grad():
            for p in c.parameters():
                p.add_(0.1 * k)
        line.append(c)
    with pytest.raises(ValueError, match="span only 1 direction"):
        L.pca_directions(line)
    assert L.pca_directions(line, n_components=1).explained_variance_ratio.values[0] == pytest.approx(1.0)


def test_interpolate_records_model_a_and_the_data():
    from workbench.results import model_fingerprint

    a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    data = (torch.randn(8, 3), torch.randint(0, 2, (8,)))
    r = L.interpolate(a, b, nn.CrossEntropyLoss(), data, steps=3, progress=False)
    assert r.attrs["model_fingerprint"] == model_fingerprint(a)
    assert "data_fingerprint" in r.attrs and r.attrs["probe"] == "landscape.interpolate"


def test_interpolate_records_model_b():
    from workbench.results import model_fingerprint

    a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    data = (torch.randn(8, 3), torch.randint(0, 2, (8,)))
    r = L.interpolate(a, b, nn.CrossEntropyLoss(), data, steps=3, progress=False)
    assert r.attrs["model_b_fingerprint"] == model_fingerprint(b)


def test_vmap_engine_accuracy_equals_loop():
    m, data = _cnn(), _data()
    lf = nn.CrossEntropyLoss()
    a = L.slice_1d(m, lf, data, seeds=[0, 1], steps=5, engine="loop", accuracy=True, progress=False)
    b = L.slice_1d(m, lf, data, seeds=[0, 1], steps=5, engine="vmap", chunk=3, accuracy=True, progress=False)
    np.testing.assert_allclose(a.loss.values, b.loss.values, rtol=1e-5)
    np.testing.assert_array_equal(a.accuracy.values, b.accuracy.values)


# -- even steps, bad arguments, non-finite losses -----------------------------------------------------------


def test_an_even_number_of_steps_works_everywhere():
    m, data = _cnn(), _data()
    lf = nn.CrossEntropyLoss()
    ref = float(wb.evaluate(m, lf, data).loss)
    s1 = L.slice_1d(m, lf, data, steps=4, progress=False)
    s2 = L.slice_2d(m, lf, data, steps=4, progress=False)
    r = L.interpolate(m, _cnn(), lf, data, steps=4, progress=False)
    assert 0.0 not in s1.alpha.values and s1.sizes["alpha"] == 4 and s2.loss.shape == (4, 4)
    assert s1.attrs["loss_theta0"] == ref and s2.attrs["loss_theta0"] == ref  # no sel(alpha=0) needed
    assert r.attrs["loss_a"] == ref and r.sizes["t"] == 4
    odd = L.slice_1d(m, lf, data, steps=5, progress=False)
    assert odd.attrs["loss_theta0"] == float(odd.loss.sel(alpha=0.0)) == ref


@pytest.mark.parametrize(
    "kw, exc, msg",
    [
        (dict(steps=True), TypeError, "^steps: expected an int, got True"),
        (dict(steps=-3), ValueError, "^steps: expected an int in 1.."),
        (dict(steps=10**12), ValueError, "^steps: expected an int in 1..10000000"),
        (dict(span=-1.0), ValueError, "^span: expected a number > 0"),
        (dict(span=float("nan")), ValueError, "^span: expected a finite number"),
        (dict(span=(1.0, -1.0)), ValueError, "^span: a .lo, hi. pair needs lo < hi"),
        (dict(coords="abc"), TypeError, "^coords: expected an array of numbers"),
        (dict(chunk=0), ValueError, "^chunk: expected an int >= 1"),
        (dict(accuracy=1), TypeError, "^accuracy: expected True or False"),
        (dict(seeds=[0, -1]), ValueError, "^seeds: expected an int >= 0"),
        (dict(direction=object()), TypeError, "^direction: expected None, 'random'"),
        (dict(normalization="filters"), ValueError, "^normalization: expected one of"),
    ],
)
def test_bad_slice_arguments_are_named(kw, exc, msg):
    m, data = _cnn(), _data()
    with pytest.raises(exc, match=msg):
        L.slice_1d(m, nn.CrossEntropyLoss(), data, progress=False, **kw)


def test_a_nan_loss_everywhere_is_nan_cells_with_one_warning_and_bad_inputs_still_raise():
    m, (x, y) = _cnn(), _data()

    def nan_loss(out, t):
        return nn.functional.cross_entropy(out, t) * float("nan")

    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        s = L.slice_2d(m, nan_loss, (x, y), steps=3, progress=False)
        r = L.interpolate(m, _cnn(), nan_loss, (x, y), steps=3, progress=False)
    assert np.isnan(s.loss.values).all() and np.isnan(r.loss.values).all() and np.isnan(s.attrs["loss_theta0"])
    assert sum("non-finite" in str(x.message) for x in w) == 2  # one per call
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="^data: inputs contain NaN"):  # NaN inputs are never data
        L.slice_2d(m, nn.CrossEntropyLoss(), (bad, y), steps=3, progress=False)
