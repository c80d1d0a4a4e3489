import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import workbench as wb
from workbench.data import Data
from workbench.objective import Objective


def _mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3)).double()


def _xy(n=53):
    g = torch.Generator().manual_seed(3)
    return torch.randn(n, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def test_batches_are_sample_weighted_with_a_short_last_batch():
    m, (x, y) = _mlp(), _xy()
    lf = torch.nn.CrossEntropyLoss()
    full = Objective(m, lf, (x, y))
    loader = DataLoader(TensorDataset(x, y), batch_size=10)  # 5 batches of 10 and one of 3
    batched = Objective(m, lf, loader)
    assert batched.data.n == 53 and batched.data.n_batches == 6
    with torch.no_grad():
        ref = float(lf(m(x), y))
    assert full.loss() == pytest.approx(ref, rel=1e-12)
    assert batched.loss() == pytest.approx(ref, rel=1e-12)
    # an unweighted mean of batch means is measurably different: the test can fail
    with torch.no_grad():
        naive = np.mean([float(lf(m(xb), yb)) for xb, yb in loader])
    assert abs(naive - ref) > 1e-4
    l1, g1 = full.loss_and_grad()
    l2, g2 = batched.loss_and_grad()
    assert torch.allclose(g1, g2, rtol=1e-10, atol=1e-14)


def test_list_of_batches_and_dict_inputs():
    x, y = _xy(20)

    class DictNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(5, 3).double()

        def forward(self, features, scale=1.0):
            return self.lin(features) * scale

    m = DictNet()
    lf = torch.nn.CrossEntropyLoss()
    batches = [({"features": x[:12]}, y[:12]), ({"features": x[12:]}, y[12:])]
    r = wb.evaluate(m, lf, batches)
    with torch.no_grad():
        assert float(r.loss) == pytest.approx(float(lf(m(x), y)), rel=1e-12)


@pytest.mark.parametrize(
    "data, exc, words",
    [
        ((torch.randn(4, 5), torch.zeros(3, dtype=torch.long)), ValueError, ["4 samples", "3"]),
        ((torch.randn(0, 5), torch.zeros(0, dtype=torch.long)), ValueError, ["empty"]),
        ((torch.full((4, 5), float("nan")), torch.zeros(4, dtype=torch.long)), ValueError, ["NaN", "inputs"]),
        ("not data", TypeError, ["data:", "pair"]),
        (
            ((torch.randn(2, 5), torch.zeros(2, dtype=torch.long)) for _ in range(2)),
            TypeError,
            ["one-shot", "DataLoader"],
        ),
        ([], ValueError, ["no samples"]),
    ],
)
def test_bad_data_gets_a_clear_error(data, exc, words):
    with pytest.raises(exc) as ei:
        wb.evaluate(_mlp().float(), torch.nn.CrossEntropyLoss(), data)
    for w in words:
        assert w in str(ei.value)


def test_labels_out_of_range_name_the_fix():
    m = _mlp()
    x, _ = _xy(6)
    with pytest.raises(ValueError, match=r"0\.\.2.*Remap"):
        wb.evaluate(m, torch.nn.CrossEntropyLoss(), (x, torch.tensor([0, 1, 2, 3, 0, 1])))


def test_loss_fn_must_return_a_scalar():
    m, (x, y) = _mlp(), _xy(6)
    with pytest.raises(ValueError, match="reduction='mean'"):
        wb.evaluate(m, torch.nn.CrossEntropyLoss(reduction="none"), (x, y))


def test_model_without_parameters():
    with pytest.raises(ValueError, match="no parameters"):
        wb.evaluate(torch.nn.ReLU(), torch.nn.MSELoss(), _xy(4))


def test_fingerprint_depends_on_values():
    x, y = _xy(10)
    a = Data((x, y)).fingerprint()
    assert a == Data((x.clone(), y.clone())).fingerprint()
    x2 = x.clone()
    x2[0, 0] += 1e-9
    assert a != Data((x2, y)).fingerprint()


def test_threads_are_applied_and_restored():
    before = torch.get_num_threads()
    wb.set_threads(1)
    try:
        with wb.threads() as n:
            assert n == 1 and torch.get_num_threads() == 1
        assert torch.get_num_threads() == before
        with pytest.raises(ValueError):
            wb.set_threads(0)
    finally:
        wb.set_threads(None)
