"""The curvature operators (Hessian, GGN, Fisher, MC Fisher, empirical Fisher) against float64 ground truth
computed here without them: ``torch.func.hessian`` of the loss; through BatchNorm's batch statistics (where
torch.func's ``hessian`` and ``jacrev(jacrev(f))`` are 3 to 18 % off), central differences of the gradient and
reverse over reverse ``torch.autograd.functional.hessian``; ``J^T H_out J`` from
``torch.autograd.functional.jacobian`` / ``hessian``; the Fisher's expectation by enumerating the labels; the
per-sample gradients one sample at a time.

Models: an MLP, a CNN with BatchNorm (eval and train mode), an MLP with BatchNorm without running statistics, a
tied-weight model, a GRU regression and a 2-layer transformer with padding masks under sdpa; the operators see the
data as two uneven batches (3 + 7 samples)."""

import functools
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from workbench.config import threads
from workbench.curvature import (
    CURVATURES,
    EmpiricalFisherOperator,
    FisherOperator,
    GGNOperator,
    HessianOperator,
    MCFisherOperator,
    curvature_operator,
    parameter_blocks,
)
from workbench.objective import Objective
from workbench.params import select_parameters

N, CUT = 10, 3  # the operators see batches of 3 and 7 samples: weights n_b / N, not 1 / n_batches
ENGINES = ["func", "double_backward", "auto"]
OPS = ["hessian", "ggn", "fisher", "empirical_fisher"]
TOL = 1e-7  # relative Frobenius error of a float64 operator against its float64 ground truth
ERRORS: dict[str, float] = {}  # the largest error seen per check (read by whoever runs the file)


@pytest.fixture(autouse=True)
def _one_thread():
    with threads():  # WORKBENCH_THREADS, as probes do: two threads on a small shared box are many times slower
        yield


def rel(a, b, key: str) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    e = float(np.linalg.norm(a - b) / np.linalg.norm(b))
    ERRORS[key] = max(ERRORS.get(key, 0.0), e)
    return e


# -- models -----------------------------------------------------------------------------------------------


class Tied(nn.Module):
    """An embedding whose weight is also the output projection (a language model's tied head)."""

    def __init__(self, vocab=7, d=4):
        super().__init__()
        self.emb, self.mix = nn.Embedding(vocab, d), nn.Linear(d, d)
        self.out = nn.Linear(d, vocab, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, ids):
        return self.out(torch.tanh(self.mix(self.emb(ids).mean(1))))


class GRURegression(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru, self.head = nn.GRU(2, 3, batch_first=True), nn.Linear(3, 2)

    def forward(self, x):
        return self.head(self.gru(x)[0][:, -1])


class Transformer(nn.Module):
    """2 encoder layers (sdpa inside nn.MultiheadAttention), key padding mask, masked mean pooling."""

    def __init__(self, vocab=6, d=4, classes=3):
        super().__init__()
        self.emb, self.head = nn.Embedding(vocab, d), nn.Linear(d, classes)
        layer = nn.TransformerEncoderLayer(d, 2, dim_feedforward=6, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)

    def forward(self, ids, mask):
        h = self.enc(self.emb(ids), src_key_padding_mask=mask)
        keep = (~mask).unsqueeze(-1).to(h.dtype)
        return self.head((h * keep).sum(1) / keep.sum(1))


def make(name):
    """(model, loss_fn, inputs, targets, mode, params) of a case, float64, deterministic."""
    g = torch.Generator().manual_seed(7)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        ce, labels = nn.CrossEntropyLoss(), torch.randint(0, 3, (N,), generator=g)
        if name == "mlp":
            m = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3))
            return m.double(), ce, torch.randn(N, 3, generator=g, dtype=torch.float64), labels, "eval", None
        if name == "mlp_mse":
            m, y = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)), torch.randn(N, 2, generator=g)
            return m.double(), nn.MSELoss(), torch.randn(N, 3, generator=g).double(), y.double(), "eval", None
        if name == "bn_stats":  # batch statistics in eval mode too (no running statistics)
            m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, track_running_stats=False), nn.Tanh(), nn.Linear(4, 3))
            return m.double(), ce, torch.randn(N, 3, generator=g, dtype=torch.float64), labels, "eval", None
        if name in ("cnn", "cnn_train"):
            m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Tanh(), nn.Flatten(), nn.Linear(18, 3))
            m.double()
            with torch.no_grad():  # running statistics away from (0, 1): eval and train mode differ
                m[1].running_mean.uniform_(-0.5, 0.5, generator=g)
                m[1].running_var.uniform_(0.5, 2.0, generator=g)
            x = torch.randn(N, 1, 5, 5, generator=g, dtype=torch.float64)
            return m, ce, x, labels, "train" if name == "cnn_train" else "eval", None
        if name == "tied":
            ids = torch.randint(0, 7, (N, 3), generator=g)
            return Tied().double(), ce, ids, torch.randint(0, 7, (N,), generator=g), "eval", None
        if name == "gru":
            x, y = torch.randn(N, 4, 2, generator=g, dtype=torch.float64), torch.randn(N, 2, generator=g)
            return GRURegression().double(), nn.MSELoss(), x, y.double(), "eval", None
        if name == "transformer":
            ids, mask = torch.randint(0, 6, (N, 5), generator=g), torch.zeros(N, 5, dtype=torch.bool)
            mask[::2, 3:] = True  # every other sequence padded after 3 tokens
            mask[1::4, 4:] = True
            params = r"in_proj_weight|head"  # attention of both layers (where the mask acts) and the head
            return Transformer().double(), ce, {"ids": ids, "mask": mask}, labels, "eval", params
    raise ValueError(name)


CASES = ["mlp", "cnn", "cnn_train", "bn_stats", "tied", "gru", "transformer"]


def take(x, s):
    return {k: v[s] for k, v in x.items()} if isinstance(x, dict) else x[s]


def two_batches(x, y):
    return [(take(x, slice(0, CUT)), y[:CUT]), (take(x, slice(CUT, None)), y[CUT:])]


@functools.cache
def objective(name, params=None):
    m, lf, x, y, mode, p = make(name)
    return Objective(m, lf, two_batches(x, y), mode=mode, params=p if params is None else params)


# -- ground truth, computed without the operators -----------------------------------------------------------


class Truth:
    """theta -> outputs / loss of a batch by ``torch.func.functional_call`` (tied weights retied by torch) in the
    case's mode (train mode: BatchNorm gets fresh buffer copies on every call), and the matrices from it."""

    def __init__(self, case, params=None):
        self.model, self.loss_fn, self.x, self.y, self.mode, p = case
        self.names = [n for n, _ in select_parameters(self.model, p if params is None else params)]
        ps = dict(self.model.named_parameters())
        self.fixed = {n: t.detach() for n, t in ps.items() if n not in self.names}
        self.shapes = [ps[n].shape for n in self.names]
        self.theta0 = torch.cat([ps[n].detach().reshape(-1) for n in self.names])
        # the full batch (the operators' n_b / N weighting must reproduce it), but with batch statistics
        # (BatchNorm in train mode or without running statistics) the sum over the operators' two batches
        self.batch_stats = self.mode == "train" or any(
            getattr(mod, "track_running_stats", True) is False for mod in self.model.modules()
        )
        self.batches = two_batches(self.x, self.y) if self.batch_stats else [(self.x, self.y)]

    def outputs(self, x):
        def f(theta):
            tensors, i = dict(self.fixed), 0
            for n, s in zip(self.names, self.shapes):
                tensors[n] = theta[i : i + s.numel()].reshape(s)
                i += s.numel()
            tensors.update({n: b.clone() for n, b in self.model.named_buffers()})
            self.model.train(self.mode == "train")
            if isinstance(x, dict):
                return functional_call(self.model, tensors, (), dict(x))
            return functional_call(self.model, tensors, (x,))

        return f

    def loss(self, x, y):
        return lambda theta: self.loss_fn(self.outputs(x)(theta), y)

    def weighted(self, per_batch):
        return sum(per_batch(x, y) * (len(y) / N) for x, y in self.batches).numpy()

    def hessian(self, theta=None):
        """``jacrev(grad)`` (reverse over reverse in torch.func), and reverse over reverse by autograd
        (``torch.autograd.functional.hessian``) through batch statistics, where torch.func's ``hessian`` and
        ``jacrev(jacrev(f))`` are wrong (torch 2.13: 3 to 18 % off central differences)."""
        th = (self.theta0 if theta is None else theta).clone()
        if not self.batch_stats:
            # jacrev of grad: torch.func.hessian (jacfwd of jacrev) is wrong through layer_norm weights in torch 2.13
            return self.weighted(lambda x, y: torch.func.jacrev(torch.func.grad(self.loss(x, y)))(th))
        return self.weighted(lambda x, y: torch.autograd.functional.hessian(self.loss(x, y), th))

    def jacobian(self, x):
        out = self.outputs(x)(self.theta0).detach()
        return out, torch.autograd.functional.jacobian(self.outputs(x), self.theta0.clone()).reshape(out.numel(), -1)

    def ggn(self):
        def one(x, y):
            out, J = self.jacobian(x)
            Hout = torch.autograd.functional.hessian(lambda o: self.loss_fn(o.reshape(out.shape), y), out.reshape(-1))
            return J.T @ Hout @ J

        return self.weighted(one)

    def fisher(self):
        """(1/n_b) sum_i J_i^T E_{y ~ p(.|f_i)}[r r^T] J_i per batch, the expectation by enumerating every class
        (categorical, r by autograd of the loss) or in closed form (Gaussian of variance D/2: (2/D) I)."""

        def one(x, y):
            out, J = self.jacobian(x)
            J = J.reshape(*out.shape, -1)
            F = torch.zeros(J.shape[-1], J.shape[-1], dtype=torch.float64)
            for i in range(out.shape[0]):
                if isinstance(self.loss_fn, nn.MSELoss):
                    F += J[i].T @ J[i] * (2.0 / out.shape[1])
                    continue
                for c, p in enumerate(torch.softmax(out[i], 0)):
                    o = out[i : i + 1].clone().requires_grad_(True)
                    (r,) = torch.autograd.grad(self.loss_fn(o, torch.tensor([c])), o)
                    F += p * torch.outer(J[i].T @ r[0], J[i].T @ r[0])
            return F / out.shape[0]

        return self.weighted(one)

    def empirical_fisher(self):
        """(1/N) sum_i g_i g_i^T: g_i by a forward of sample i alone, or of its batch (batch statistics)."""
        grads = []
        for x, y in two_batches(self.x, self.y):
            for i in range(len(y)):
                th = self.theta0.clone().requires_grad_(True)
                if not self.batch_stats:
                    loss = self.loss(take(x, slice(i, i + 1)), y[i : i + 1])(th)
                else:
                    loss = self.loss_fn(self.outputs(x)(th)[i : i + 1], y[i : i + 1])
                grads.append(torch.autograd.grad(loss, th)[0])
        G = torch.stack(grads)
        return (G.T @ G / N).numpy()


@functools.cache
def truth(name, kind, params=None):
    with sdpa_kernel(SDPBackend.MATH):  # the reference attention (the fused CPU kernel has no forward-mode AD)
        return getattr(Truth(make(name), params), kind)()


def index(model, names):
    """The positions of the parameters ``names`` in the flat vector of all of ``model``'s parameters."""
    offsets, i = {}, 0
    for n, p in model.named_parameters():
        offsets[n] = np.arange(i, i + p.numel())
        i += p.numel()
    return np.concatenate([offsets[n] for n in names])


# -- every engine of every operator on every model ----------------------------------------------------------

# torch.func cannot run these: train-mode BatchNorm writes its running statistics (buffers captured from outside
# the transform) in place
FUNC_FAILS = {("cnn_train", k) for k in OPS}


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("kind", OPS)
@pytest.mark.parametrize("name", CASES)
def test_every_engine_of_every_operator_equals_the_float64_truth(name, kind, engine):
    T, cannot = truth(name, kind), (name, kind) in FUNC_FAILS
    op = curvature_operator(objective(name), kind, engine=engine)
    assert op.dtype == torch.float64 and op.shape == T.shape
    if engine == "func" and cannot:
        with pytest.raises((RuntimeError, NotImplementedError)):
            op.matvec(torch.ones(op.shape[0], dtype=torch.float64))
        return
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        D = op.dense()
    fell = [w for w in seen if w.category is RuntimeWarning and "torch.func products failed" in str(w.message)]
    # "auto" tries torch.func first for the output-space operators (one warning, then switched for good) and
    # double backward first for the Hessian (which runs everywhere: no warning)
    falls = engine == "auto" and cannot and type(op).auto_order[0] == "func"
    assert len(fell) == falls
    assert op.engine == ("double_backward" if falls else engine)
    assert op.n_products == T.shape[0]
    assert rel(D, T, f"{kind} {name}") <= TOL


# -- the traps and identities -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cnn_train", "bn_stats"])
def test_batch_statistics_hessian_equals_central_differences_of_the_gradient(name):
    """BatchNorm with batch statistics (train mode; no running statistics): the reverse-over-reverse truth and
    every engine that runs (torch.func's vjp of grad included, where it runs) equal central differences of
    Objective.loss_and_grad (eps 1e-5, float64: O(eps^2) truncation)."""
    obj = objective(name)
    P, eps = obj.space.numel, 1e-5
    FD = np.empty((P, P))
    for i in range(P):
        e = torch.zeros(P, dtype=torch.float64)
        e[i] = eps
        FD[:, i] = ((obj.loss_and_grad(obj.theta0 + e)[1] - obj.loss_and_grad(obj.theta0 - e)[1]) / (2 * eps)).numpy()
    FD = 0.5 * (FD + FD.T)
    assert rel(truth(name, "hessian"), FD, "batch stats: reverse over reverse vs differences") <= 1e-6
    if name == "cnn_train":  # running statistics give a different matrix: the comparison can fail
        assert rel(Truth(make("cnn")).hessian(), FD, "(train BN: eval-mode Hessian vs differences)") > 0.05
    for engine in ENGINES:
        if (name, "hessian") in FUNC_FAILS and engine == "func":
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            D = HessianOperator(obj, engine=engine).dense()
        assert rel(D, FD, "batch stats: operator vs differences") <= 1e-6


def test_ggn_equals_the_hessian_for_a_linear_model_with_squared_error():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        m = nn.Linear(3, 2).double()
        x, y = torch.randn(N, 3, dtype=torch.float64), torch.randn(N, 2, dtype=torch.float64)
    obj = Objective(m, nn.MSELoss(), two_batches(x, y))
    H = Truth((m, nn.MSELoss(), x, y, "eval", None)).hessian()
    # closed form: L = ||X W^T + b - Y||^2 / (N D): H = (2 / (N D)) I_D (x) [X 1]^T [X 1] in (W rows, b) order
    X1 = torch.cat([x, torch.ones(N, 1, dtype=torch.float64)], 1)
    A = (X1.T @ X1 * (2.0 / (N * 2))).numpy()
    closed = np.zeros((8, 8))
    for d in range(2):
        w, b = np.r_[3 * d : 3 * d + 3], 6 + d
        idx = np.r_[w, b]
        closed[np.ix_(idx, idx)] = A
    assert rel(H, closed, "linear MSE: torch.func.hessian vs closed form") <= 1e-12
    for engine in ENGINES:
        assert rel(GGNOperator(obj, engine=engine).dense(), H, "linear MSE: GGN vs Hessian") <= 1e-12


@pytest.mark.parametrize("name", ["mlp", "tied", "gru", "cnn_train"])
def test_fisher_equals_ggn_for_softmax_cross_entropy_and_squared_error(name):
    """Two independent truths (labels enumerated vs the loss's output Hessian) and two operators agree; the
    empirical Fisher is a different matrix (so the comparison can fail)."""
    assert rel(truth(name, "fisher"), truth(name, "ggn"), "Fisher truth vs GGN truth") <= 1e-10
    obj = objective(name)
    engine = "double_backward" if name == "cnn_train" else "func"
    F, G = FisherOperator(obj, engine=engine).dense(), GGNOperator(obj, engine=engine).dense()
    assert rel(F, G, "Fisher operator vs GGN operator") <= 1e-10
    assert rel(truth(name, "empirical_fisher"), truth(name, "fisher"), "(empirical Fisher vs Fisher)") > 0.05


@pytest.mark.parametrize("name", ["mlp", "mlp_mse"])
def test_mc_fisher_converges_to_the_fisher(name):
    F = truth(name, "fisher")
    err = {}
    for S in (100, 4000):
        op = MCFisherOperator(objective(name), mc_samples=S, generator=torch.Generator().manual_seed(0), chunk=64)
        D = op.dense()
        err[S] = rel(D, F, f"MC Fisher S={S} ({name})")
        np.testing.assert_array_equal(op.dense(), D)  # labels drawn once: one fixed matrix
    assert err[4000] < 0.05 and err[4000] < err[100] / 2, err  # O(1 / sqrt(S N)) error
    same = MCFisherOperator(objective(name), mc_samples=100, generator=torch.Generator().manual_seed(0), chunk=64)
    assert rel(same.dense(), F, "(MC Fisher S=100, same seed)") == pytest.approx(err[100], rel=1e-9)


def test_mc_fisher_with_an_ignore_index_that_is_a_class_is_refused_or_right():
    m, _, x, y, _, _ = make("mlp")
    y = torch.where(y == 0, 1, y)  # no sample carries class 0: on this data the loss is the plain mean
    obj = Objective(m, nn.CrossEntropyLoss(ignore_index=0), two_batches(x, y))
    try:
        op = MCFisherOperator(obj, mc_samples=4000, generator=torch.Generator().manual_seed(0), chunk=64)
    except ValueError as e:
        assert "curvature: 'mc_fisher'" in str(e)
        return
    assert rel(op.dense(), truth("mlp", "fisher"), "MC Fisher, ignore_index=0") < 0.05


@pytest.mark.parametrize("shape", [(), (2, 3)])
def test_fisher_equals_ggn_for_squared_error_on_outputs_of_any_shape(shape):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)
        m = nn.Sequential(nn.Linear(3, max(1, int(np.prod(shape)))), nn.Tanh(), nn.Unflatten(1, shape or (1,)))
        m.double()
        x, y = torch.randn(N, 3, dtype=torch.float64), torch.randn(N, *(shape or (1,)), dtype=torch.float64)
    if not shape:  # outputs and targets of shape (N,)
        m.append(nn.Flatten(0))
        y = y[:, 0]
    obj = Objective(m, nn.MSELoss(), two_batches(x, y))
    G = Truth((m, nn.MSELoss(), x, y, "eval", None)).ggn()
    assert rel(GGNOperator(obj).dense(), G, "GGN, MSE outputs of any shape") <= TOL
    assert rel(FisherOperator(obj).dense(), G, "Fisher vs GGN, MSE outputs of any shape") <= 1e-10


def test_output_curvatures_take_a_pytree_of_outputs():
    """A model returning a dict (an unused float leaf, an integer leaf): GGN and empirical Fisher equal the plain
    model's; the Fisher, which needs one tensor of logits and a known likelihood, is refused by name."""
    m, lf, x, y, _, _ = make("mlp")

    class Outputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.m = m

        def forward(self, x):
            h = self.m[1](self.m[0](x))
            return {"logits": self.m[2](h), "hidden": h, "count": torch.tensor(3)}

    obj = Objective(Outputs(), lambda out, t: lf(out["logits"], t), two_batches(x, y))
    for kind in ("ggn", "empirical_fisher"):
        for engine in ("func", "double_backward"):
            D = curvature_operator(obj, kind, engine=engine).dense()
            assert rel(D, truth("mlp", kind), f"{kind}, dict outputs") <= TOL
    with pytest.raises(ValueError, match="curvature: 'fisher' needs the loss to be a negative log-likelihood"):
        FisherOperator(obj)


def test_mc_fisher_and_fisher_refuse_losses_they_cannot_sample_from():
    m, _, x, y, _, _ = make("mlp_mse")
    for loss in (nn.L1Loss(), nn.MSELoss(reduction="sum"), nn.CrossEntropyLoss(label_smoothing=0.1)):
        obj = Objective(m, loss, (x, y if not isinstance(loss, nn.CrossEntropyLoss) else y.argmax(1)))
        for kind in ("fisher", "mc_fisher"):
            with pytest.raises(ValueError, match=rf"curvature: '{kind}' needs the loss .*curvature='ggn'"):
                curvature_operator(obj, kind)
    with pytest.raises(ValueError, match="mc_samples: expected a positive int"):
        MCFisherOperator(objective("mlp"), mc_samples=0)


def test_empirical_fisher_takes_any_mean_loss():
    m, _, x, y, _, _ = make("mlp_mse")
    obj = Objective(m, nn.L1Loss(), two_batches(x, y))
    t = Truth((m, nn.L1Loss(), x, y, "eval", None))
    assert rel(EmpiricalFisherOperator(obj).dense(), t.empirical_fisher(), "empirical Fisher, L1") <= TOL


def test_operator_at_another_theta_and_the_product_plumbing():
    obj, t = objective("mlp"), Truth(make("mlp"))
    theta = obj.theta0 + 0.3 * torch.randn(obj.space.numel, dtype=torch.float64)
    calls = []
    op = HessianOperator(obj, theta=theta, callback=calls.append)
    T = t.hessian(theta)
    V = torch.randn(op.shape[0], 3, dtype=torch.float64)
    assert rel(op.matmat(V), T @ V.numpy(), "Hessian at theta, matmat") <= TOL
    assert rel(op @ V[:, 0], T @ V[:, 0].numpy(), "Hessian at theta, matvec") <= TOL
    assert rel(op.to_scipy() @ V.numpy(), T @ V.numpy(), "Hessian at theta, to_scipy") <= TOL
    assert op.n_products == 3 + 1 + 3 and sum(calls) == op.n_products
    assert rel(t.hessian(), T, "(Hessian at theta0 vs theta)") > 1e-3  # theta matters


def test_a_bad_theta_is_refused_by_name():
    obj = objective("mlp")
    with pytest.raises(ValueError, match="theta:"):
        HessianOperator(obj, theta=obj.theta0[:-1])
    try:
        op = GGNOperator(obj, theta=obj.theta0.float())
    except ValueError as e:
        assert str(e).startswith("theta:")
        return
    assert rel(op.dense(), truth("mlp", "ggn"), "(float32 theta)") <= 1e-6


def test_bf16_model_products_are_float32_near_the_float64_truth():
    """A bf16 copy of the MLP: products computed in bf16, accumulated and returned in float32 (op.dtype), within
    5e-2 (relative, Frobenius) of the float64 Hessian of the same bf16-rounded weights and inputs."""
    m, lf, x, y, _, _ = make("mlp")
    m16 = m.to(torch.bfloat16)
    x16 = x.to(torch.bfloat16)
    T = Truth((m16.double(), lf, x16.double(), y, "eval", None)).hessian()
    m16 = m16.to(torch.bfloat16)
    obj = Objective(m16, lf, two_batches(x16, y))
    for engine in ("func", "double_backward"):
        op = HessianOperator(obj, engine=engine)
        assert op.dtype == torch.float32
        assert op.matvec(torch.ones(op.shape[0])).dtype == torch.float32
        assert rel(op.dense(), T, "bf16 Hessian (float32 products)") <= 5e-2


# -- choosing by name, parameter subsets, blocks ------------------------------------------------------------


def test_curvature_operator_by_name_and_its_errors():
    obj = objective("mlp")
    types = dict(hessian=HessianOperator, ggn=GGNOperator, fisher=FisherOperator, mc_fisher=MCFisherOperator)
    types["empirical_fisher"] = EmpiricalFisherOperator
    assert set(types) == set(CURVATURES)
    for kind, cls in types.items():
        op = curvature_operator(obj, kind, engine="double_backward", chunk=5, mc_samples=3)
        assert type(op) is cls and op.engine == "double_backward" and op.chunk == 5
    assert curvature_operator(obj, "mc_fisher", mc_samples=3).mc_samples == 3
    with pytest.raises(ValueError, match="curvature: expected one of 'hessian', 'ggn'.*got 'gauss_newton'"):
        curvature_operator(obj, "gauss_newton")
    with pytest.raises(ValueError, match="engine: expected 'auto', 'func' or 'double_backward', got 'jvp'"):
        curvature_operator(obj, "ggn", engine="jvp")
    with pytest.raises(TypeError, match="objective: expected a workbench.objective.Objective"):
        GGNOperator(nn.Linear(2, 1))


@pytest.mark.parametrize("kind", OPS)
@pytest.mark.parametrize(
    ("name", "blocks"), [("mlp", "layer"), ("cnn", "layer"), ("cnn_train", "module"), ("tied", "module")]
)
def test_blocks_are_the_diagonal_blocks_of_the_full_truth(name, blocks, kind):
    """Objective(params=block) gives the block's rows and columns of the full matrix (the tied weight counted
    once, through both of its uses)."""
    model = objective(name).model
    parts = parameter_blocks(model, blocks)
    assert [n for b in parts.values() for n in b] == [n for n, _ in model.named_parameters()]
    full = truth(name, kind)
    engine = "double_backward" if name == "cnn_train" else "func"
    for names in parts.values():
        D = curvature_operator(objective(name, tuple(names)), kind, engine=engine).dense()
        i = index(model, names)
        assert rel(D, full[np.ix_(i, i)], f"{kind} block") <= TOL


def test_parameter_blocks_and_their_errors():
    mlp, cnn, tied = objective("mlp").model, objective("cnn").model, objective("tied").model
    assert parameter_blocks(mlp, "layer") == {"0": ["0.weight", "0.bias"], "2": ["2.weight", "2.bias"]}
    assert list(parameter_blocks(cnn, "layer")) == ["0", "1", "4"]
    assert parameter_blocks(tied, "module") == {"emb": ["emb.weight"], "mix": ["mix.weight", "mix.bias"]}
    assert parameter_blocks(tied, "layer") == parameter_blocks(tied, "module")
    assert parameter_blocks(mlp, "layer", params="weight") == {"0": ["0.weight"], "2": ["2.weight"]}
    got = parameter_blocks(mlp, {"w": "weight", "first": ["0"]})
    assert got == {"w": ["0.weight", "2.weight"], "first": ["0.weight", "0.bias"]}
    assert parameter_blocks(mlp, {"b": "bias"}, params=["2"]) == {"b": ["2.bias"]}
    with pytest.raises(ValueError, match="blocks: expected 'layer', 'module' or a mapping.*got 'layers'"):
        parameter_blocks(mlp, "layers")
    for bad in ({}, ["0"], 3):
        with pytest.raises(TypeError, match="blocks: expected 'layer', 'module' or a non-empty mapping"):
            parameter_blocks(mlp, bad)
    with pytest.raises(ValueError, match=r"blocks: block names must be strings other than '\(all\)'"):
        parameter_blocks(mlp, {"(all)": "weight"})
    with pytest.raises(TypeError, match=r"blocks\['x'\]: expected a regex or a list"):
        parameter_blocks(mlp, {"x": 3})
    with pytest.raises(ValueError, match=r"blocks\['x'\]: the regex 'nope' matches no parameter"):
        parameter_blocks(mlp, {"x": "nope"})
    with pytest.raises(ValueError, match=r"blocks\['x'\]: selects no parameter within params='weight'"):
        parameter_blocks(mlp, {"x": "bias"}, params="weight")


# -- attention through sdpa -----------------------------------------------------------------------------------


def test_transformer_padding_mask_is_in_force():
    m, _, x, _, _, _ = make("transformer")
    ids = x["ids"].clone()
    ids[x["mask"]] = (ids[x["mask"]] + 1) % 6  # other tokens where padded: nothing may change
    with torch.no_grad():
        a, b = m(**x), m(ids, x["mask"])
        c = m(x["ids"], torch.zeros_like(x["mask"]))
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert float((a - c).abs().max()) > 1e-3


@pytest.mark.parametrize("kind", OPS)
def test_operators_run_inside_a_callers_fused_sdpa_backend_and_restore_it(kind):
    """The caller chose the fused flash kernel (no second derivative on CPU: a plain double backward fails);
    the products go through the math backend, equal the truth, and the caller's choice is in force again after
    every product."""
    obj, T = objective("transformer"), truth("transformer", kind)
    V = torch.randn(T.shape[0], 3, dtype=torch.float64)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        th = obj.theta0.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(obj.batch_fn(*next(iter(obj.batches()))[:2])(th), th, create_graph=True)
        with pytest.raises(RuntimeError, match="derivative for .*flash_attention.* is not implemented"):
            torch.autograd.grad(g.sum(), th)
        for engine in ENGINES:
            with warnings.catch_warnings():
                warnings.simplefilter("error", RuntimeWarning)  # no fallback: every engine runs
                op = curvature_operator(obj, kind, engine=engine)
                assert rel(op.matmat(V), T @ V.numpy(), f"{kind} under a flash caller") <= TOL
            assert torch.backends.cuda.flash_sdp_enabled() and not torch.backends.cuda.math_sdp_enabled()
            assert torch.backends.mha.get_fastpath_enabled()  # MHA's fused inference path: the caller's again
    assert torch.backends.cuda.math_sdp_enabled()
