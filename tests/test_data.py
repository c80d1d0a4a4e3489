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


# -- validation at the front door -----------------------------------------------------------------------


class _OneShot(torch.utils.data.IterableDataset):
    def __init__(self, items):
        self.it = iter(items)

    def __iter__(self):
        return self.it


@pytest.mark.parametrize(
    "make, exc, words",
    [
        (lambda x, y: _OneShot([(x, y)]), TypeError, ["data: an IterableDataset", "list of batches"]),
        (lambda x, y: DataLoader(_OneShot([(x, y)]), batch_size=None), ValueError, ["yielded 0 samples", "one-shot"]),
        (lambda x, y: TensorDataset(x, y), TypeError, ["data: a Dataset", "DataLoader(dataset"]),
        (lambda x, y: (x, y.float() + 0.5), ValueError, ["data:", "fractional", "class indices"]),
        (lambda x, y: (x, y[:, None]), ValueError, ["data: the targets have shape (12, 1)", "squeeze"]),
        (lambda x, y: (x[:, :-1], y), ValueError, ["data: the model's forward failed", "float64 (12, 4)"]),
        (lambda x, y: (x.long(), y), ValueError, ["data: the model's forward failed", "int64"]),
    ],
)
def test_bad_data_that_used_to_be_wrong_or_crash_is_named(make, exc, words):
    x, y = _xy(12)
    with pytest.raises(exc) as ei:
        wb.evaluate(_mlp(), torch.nn.CrossEntropyLoss(), make(x, y))
    for w in words:
        assert w in str(ei.value)


def test_a_loader_that_yields_less_on_a_later_pass_is_an_error():
    x, y = _xy(12)
    passes = []

    class Shrinking(torch.utils.data.IterableDataset):
        def __iter__(self):
            passes.append(1)
            return iter([(x, y)] if len(passes) <= 2 else [(x[:5], y[:5])])

    with pytest.raises(ValueError, match="yielded 5 samples, the first 12"):
        wb.evaluate(_mlp(), torch.nn.CrossEntropyLoss(), DataLoader(Shrinking(), batch_size=None))


@pytest.mark.parametrize(
    "labels", [lambda y: y.int(), lambda y: y.float(), lambda y: y.tolist(), lambda y: y.numpy(), lambda y: y.short()]
)
def test_int32_float_list_and_numpy_labels_give_the_int64_result(labels):
    m, (x, y), lf = _mlp(), _xy(20), torch.nn.CrossEntropyLoss()
    ref = wb.evaluate(m, lf, (x, y))
    got = wb.evaluate(m, lf, (x, labels(y)))
    assert float(got.loss) == float(ref.loss) and float(got.accuracy) == float(ref.accuracy)
    assert float(wb.evaluate(m, lf, (x.numpy(), labels(y))).loss) == float(ref.loss)


def test_a_loss_fn_that_is_not_a_class_index_loss_keeps_its_float_targets():
    m, (x, _) = _mlp(), _xy(8)
    t = torch.randn(8, 3, dtype=torch.float64)
    with torch.no_grad():
        ref = float(torch.nn.functional.mse_loss(m(x), t))
    assert float(wb.evaluate(m, torch.nn.MSELoss(), (x, t)).loss) == pytest.approx(ref, rel=1e-12)


def test_non_finite_losses_and_weights_are_named():
    m, (x, y) = _mlp(), _xy(8)
    with pytest.raises(ValueError, match="^data: the mean loss is nan at the model's parameters"):
        wb.evaluate(m, lambda out, t: torch.nn.functional.cross_entropy(out, t) * float("nan"), (x, y))
    with torch.no_grad():
        m[0].weight[0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"^model: the parameters \['0.weight'\] contain NaN or inf"):
        wb.evaluate(m, torch.nn.CrossEntropyLoss(), (x, y))


def test_mixed_dtypes_are_refused_by_name():
    m = _mlp()
    m[2].float()
    with pytest.raises(ValueError, match="^model: its parameters mix dtypes.*float32: 2.weight, 2.bias"):
        wb.evaluate(m, torch.nn.CrossEntropyLoss(), _xy(8))


def test_an_error_of_the_users_own_code_passes_unchanged():
    """Only what torch raises about its arguments is explained; a model's own bug keeps its type."""

    class Buggy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(5, 3).double()

        def forward(self, x):
            raise RuntimeError("my bug")

    with pytest.raises(RuntimeError, match="^my bug$"):
        wb.evaluate(Buggy(), torch.nn.CrossEntropyLoss(), _xy(8))
    x, y = _xy(8)
    with pytest.raises(ValueError) as ei:
        wb.evaluate(_mlp(), torch.nn.CrossEntropyLoss(), (x[:, :2], y))
    assert isinstance(ei.value.__cause__, RuntimeError)  # torch's own message is kept as the cause


def test_the_validators_name_the_argument():
    from workbench import validate as V

    assert V.count("steps", 21.0) == 21 and V.integer("m", None, none=True) is None
    assert V.real("rho", 0) == 0.0 and V.fraction("confidence", 0.5) == 0.5
    for call, exc, msg in [
        (lambda: V.count("steps", True), TypeError, "^steps: expected an int, got True"),
        (lambda: V.count("steps", 2.5), ValueError, "^steps: expected an int"),
        (lambda: V.count("steps", 0), ValueError, "^steps: expected an int in 1..10000000"),
        (lambda: V.count("n_hvp", 10**12), ValueError, "^n_hvp: expected an int in 1.."),
        (lambda: V.real("rho", float("nan")), ValueError, "^rho: expected a finite number"),
        (lambda: V.positive("lr", 0.0), ValueError, "^lr: expected a number > 0"),
        (lambda: V.real("tol", "0.1"), TypeError, "^tol: expected a number"),
        (lambda: V.boolean("adaptive", 1), TypeError, "^adaptive: expected True or False"),
        (lambda: V.choice("which", "top", ("largest", "smallest")), ValueError, "^which: expected one of"),
        (lambda: V.finite_array("coords", [0.0, float("inf")]), ValueError, "^coords: contains NaN or inf"),
        (lambda: V.name_list("metrics", ["x"], known=["logme"]), ValueError, r"^metrics: unknown \['x'\]"),
    ]:
        with pytest.raises(exc, match=msg):
            call()
