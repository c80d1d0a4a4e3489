"""Permutation alignment, REPAIR/RESET and linear mode connectivity (issue #18, parts 1-2): planted permutations
recovered exactly on an MLP, a CNN, a ResNet with BatchNorm and transformer blocks (q/k/v/o Linear attention and
nn.MultiheadAttention), equivalence of the aligned model, barriers on the zoo's seed pairs, REPAIR's variance
repair, and the errors."""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import xarray as xr
from torch import nn

import workbench.weightspace as ws
from workbench.landscape import interpolate
from workbench.weightspace.graph import permutation_groups
from workbench.weightspace.matching import apply_entry


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.f1, self.f2, self.f3 = nn.Linear(6, 16), nn.Linear(16, 12), nn.Linear(12, 3)

    def forward(self, x):
        return self.f3(F.relu(self.f2(torch.relu(self.f1(x)))))


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.bn, self.c2 = nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.Conv2d(6, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 3)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.c2(F.relu(self.bn(self.c1(x))))), 2)
        return self.fc(x.flatten(1))


class Basic(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.c2, self.b2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        return F.relu(x + self.b2(self.c2(F.relu(self.b1(self.c1(x))))))


class ResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.l1, self.l2, self.pool, self.fc = Basic(8), Basic(8), nn.AdaptiveAvgPool2d(1), nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(self.pool(self.l2(self.l1(F.relu(self.bn(self.stem(x)))))).flatten(1))


class Attn(nn.Module):  # Hugging Face style: q, k, v, o Linear layers and a head split by reshape
    def __init__(self, d, h):
        super().__init__()
        self.h, self.q, self.k, self.v, self.o = h, nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x):
        b, t, d = x.shape

        def split(z):
            return z.reshape(b, t, self.h, d // self.h).transpose(1, 2)

        a = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(x)), split(self.v(x)))
        return self.o(a.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, mha, d=16, h=4):
        super().__init__()
        self.n1, self.n2, self.mha = nn.LayerNorm(d), nn.LayerNorm(d), mha
        self.attn = nn.MultiheadAttention(d, h, batch_first=True) if mha else Attn(d, h)
        self.mlp = nn.Sequential(nn.Linear(d, 32), nn.GELU(), nn.Linear(32, d))

    def forward(self, x):
        y = self.n1(x)
        x = x + (self.attn(y, y, y)[0] if self.mha else self.attn(y))
        return x + self.mlp(self.n2(x))


class Transformer(nn.Module):
    def __init__(self, mha=False):
        super().__init__()
        self.emb, self.pos = nn.Linear(5, 16), nn.Parameter(torch.randn(1, 6, 16) * 0.1)
        self.b1, self.b2, self.norm, self.head = Block(mha), Block(mha), nn.LayerNorm(16), nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.norm(self.b2(self.b1(self.emb(x) + self.pos))).mean(1))


class BertLikeAttention(nn.Module):  # Hugging Face BERT's pattern: view + permute, matmul, mask, softmax, dropout
    def __init__(self, d=16, h=4):
        super().__init__()
        self.h, self.dh = h, d // h
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.dropout, self.dense, self.LayerNorm = nn.Dropout(0.1), nn.Linear(d, d), nn.LayerNorm(d)

    def shape(self, x):
        return x.view(x.size(0), x.size(1), self.h, self.dh).permute(0, 2, 1, 3)

    def forward(self, hidden, mask):
        q, k, v = self.shape(self.query(hidden)), self.shape(self.key(hidden)), self.shape(self.value(hidden))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.dh) + mask
        probs = self.dropout(nn.functional.softmax(scores, dim=-1))
        ctx = torch.matmul(probs, v).permute(0, 2, 1, 3).contiguous()
        return self.LayerNorm(self.dense(ctx.view(ctx.size(0), ctx.size(1), -1)) + hidden)


class BertLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.att, self.ln = nn.Embedding(20, 16), BertLikeAttention(), nn.LayerNorm(16)
        self.inter, self.out, self.cls = nn.Linear(16, 32), nn.Linear(32, 16), nn.Linear(16, 3)

    def forward(self, ids):
        mask = torch.zeros_like(ids[:, None, None, :], dtype=torch.float)
        h = self.att(self.emb(ids), mask)
        return self.cls(self.ln(self.out(F.gelu(self.inter(h))) + h)[:, 0])


def _model(kind, seed=0):
    torch.manual_seed(seed)
    make = dict(mlp=MLP, cnn=CNN, resnet=ResNet, transformer=Transformer, mha=lambda: Transformer(True), bert=BertLike)
    m = make[kind]()
    if kind == "bert":
        return m.eval(), torch.randint(0, 20, (96, 7))
    shape = dict(mlp=(6,), cnn=(1, 8, 8), resnet=(1, 8, 8), transformer=(6, 5), mha=(6, 5))[kind]
    x = torch.randn((96,) + shape)
    if kind in ("cnn", "resnet"):  # BatchNorm statistics away from their defaults
        m.train()
        with torch.no_grad():
            m(x * 2 + 1)
    m.eval()
    return m, x


def _plant(m, x, seed=0):
    """A copy of m with every permutation group (heads as blocks) reordered at random: (copy, perms, head perms)."""
    spec = permutation_groups(m, x[:2])
    g = torch.Generator().manual_seed(seed)
    perms, heads = {}, {}
    for hg, members in spec.head_groups.items():
        h = spec.groups[members[0]].heads
        d = spec.groups[members[0]].size // h
        heads[hg] = torch.randperm(h, generator=g)
        for name in members:
            perms[name] = torch.cat([heads[hg][i] * d + torch.randperm(d, generator=g) for i in range(h)])
    for name, grp in spec.groups.items():
        perms.setdefault(name, torch.randperm(grp.size, generator=g))
    b = copy.deepcopy(m)
    sd = b.state_dict()
    with torch.no_grad():
        for key, ents in spec.by_param.items():
            for name, e in ents:
                sd[key].copy_(apply_entry(sd[key], e, perms[name]))
    return b, perms, heads


def _inverse(p):
    return torch.argsort(torch.as_tensor(p))


EXPECTED_GROUPS = dict(mlp=2, cnn=2, resnet=3, transformer=7, mha=7, bert=4)  # MHA: out_proj joins the residual


@pytest.mark.parametrize("kind", ["mlp", "cnn", "resnet", "transformer", "mha", "bert"])
@pytest.mark.parametrize("method", ["weight", "activation"])
def test_planted_permutation_recovered_exactly(kind, method):
    a, x = _model(kind)
    b, planted, heads = _plant(a, x)
    assert ws.equivalence_error(a, b, x) < 1e-5  # the planted copy is the same function
    assert any(not torch.equal(p, torch.arange(len(p))) for p in planted.values())
    aligned, perms = ws.align(a, b, x, method=method, progress=False)
    assert len(planted) == EXPECTED_GROUPS[kind] == perms.attrs["n_groups"]
    for name, p in planted.items():  # the recovered permutation undoes the planted one, unit for unit
        assert torch.equal(torch.as_tensor(perms[name].values), _inverse(p)), name
    for hg, hp in heads.items():  # and heads move as blocks
        assert torch.equal(torch.as_tensor(perms[hg].values), _inverse(hp)), hg
    for (k, va), vb in zip(a.state_dict().items(), aligned.state_dict().values()):
        assert torch.allclose(va.float(), vb.float(), atol=1e-6), k
    with torch.no_grad():
        assert float((aligned(x) - b(x)).abs().max()) < 1e-5  # the aligned model computes what B computes
    assert perms.attrs["equivalence_error"] < 1e-5


def test_zoo_vit_cls_token_and_shape_branches(zoo_built):
    """The zoo's ViT: a cls token concatenated and a position embedding added (parameters read directly), heads
    split by reshape, and a forward that branches on x.dim() (traced again with meta tensors)."""
    a = zoo_built.load("vit-normal")
    x, _ = zoo_built.data("train")
    spec = ws.permutation_groups(a, x[:2])
    stream = spec.groups["embed"]
    assert {"cls", "pos", "embed.weight", "head.weight"} <= {e.name for e in stream.entries}
    assert [e.axis for e in stream.entries if e.name in ("cls", "pos")] == [2, 2]
    want = {f"blocks.{i}.attn.q.heads": [f"blocks.{i}.attn.q", f"blocks.{i}.attn.v"] for i in (0, 1)}
    assert spec.head_groups == want
    b, planted, heads = _plant(a, x[:64])
    aligned, perms = ws.align(a, b, x[:64], method="activation", progress=False)
    assert all(torch.equal(torch.as_tensor(perms[g].values), _inverse(p)) for g, p in planted.items())
    assert all(torch.equal(torch.as_tensor(perms[g].values), _inverse(p)) for g, p in heads.items())
    with torch.no_grad():
        assert float((aligned(x[:64]) - b(x[:64])).abs().max()) < 1e-5


def test_barrier_of_a_planted_pair_drops_to_zero():
    a, x = _model("mlp")
    b, _, _ = _plant(a, x)
    with torch.no_grad():
        y = a(x).argmax(1)
    r = ws.connectivity(a, b, nn.CrossEntropyLoss(), (x, y), steps=5, methods=("none", "weight", "activation"),
                        progress=False)  # fmt: skip
    bar = dict(zip(r.path.values.tolist(), r.barrier.values))
    assert bar["none"] > 0.02
    assert abs(bar["weight"]) < 1e-5 and abs(bar["activation"]) < 1e-5
    assert np.allclose(r.loss.sel(path="weight"), r.loss_a.sel(path="weight"), atol=1e-5)  # flat path


@pytest.mark.parametrize("kind", ["mlp", "resnet", "mha"])
def test_two_random_inits_aligned_compute_the_same_function(kind):
    a, x = _model(kind, 0)
    b, _ = _model(kind, 1)
    for method in ("weight", "activation"):
        aligned, perms = ws.align(a, b, x, method=method, seed=3, progress=False)
        with torch.no_grad():
            assert float((aligned(x) - b(x)).abs().max()) < 1e-5
        assert perms.attrs["n_identity"] < perms.attrs["n_groups"]  # something moved
    assert all(torch.equal(p, q) for p, q in zip(b.state_dict().values(), _model(kind, 1)[0].state_dict().values()))


def test_weight_matching_objective_is_not_worse_than_identity():
    from workbench.weightspace.alignment import _state  # noqa: PLC2701 (a test may look inside)
    from workbench.weightspace.matching import objective

    a, x = _model("resnet", 0)
    b, _ = _model("resnet", 1)
    spec = permutation_groups(a, x[:2])
    perms = ws.match(a, b, None, x, progress=False)
    sa, sb = _state(a), _state(b)
    found = {g: torch.as_tensor(perms[g].values) for g in spec.groups}
    ident = {g: torch.arange(grp.size) for g, grp in spec.groups.items()}
    assert objective(spec, sa, sb, found) > objective(spec, sa, sb, ident) + 1e-3


def test_zoo_seed_pairs_barrier_lower_after_alignment(zoo_built):
    x, _ = zoo_built.data("train")
    xt, yt = zoo_built.data("test")
    lf = nn.CrossEntropyLoss()
    for arch in ("mlp", "cnn"):
        out = []
        for i, j in [(0, 1), (0, 2), (1, 2)]:
            a, b = zoo_built.load(f"{arch}-sgd-small-s{i}"), zoo_built.load(f"{arch}-sgd-small-s{j}")
            r = ws.connectivity(a, b, lf, (xt[:200], yt[:200]), steps=3, repair_data=x[:300],
                                methods=("none", "weight", "activation"), progress=False)  # fmt: skip
            out.append(r.barrier.values)
        out = np.array(out)  # (pair, method)
        assert (out[:, 1] < out[:, 0]).all() and (out[:, 2] < out[:, 0]).all(), (arch, out)
        assert out[:, 0].mean() > 0.3 and out[:, 1].mean() < 0.1 * out[:, 0].mean(), (arch, out)


def test_straight_through_estimator_lowers_the_midpoint_barrier(zoo_built):
    x, y = zoo_built.data("train")
    xt, yt = zoo_built.data("test")
    lf = nn.CrossEntropyLoss()
    a, b = zoo_built.load("mlp-sgd-small-s0"), zoo_built.load("mlp-sgd-small-s1")
    batches = [(x[i : i + 128], y[i : i + 128]) for i in range(0, len(x), 128)]
    r = ws.connectivity(a, b, lf, (xt, yt), steps=5, methods=("weight", "ste"), repair_data=batches, progress=False)
    bar = r.barrier.values
    assert bar[1] < bar[0] - 0.003, bar  # measured 0.0090 -> 0.0000
    aligned, _ = ws.align(a, b, batches, method="ste", loss_fn=lf, ste_steps=20, progress=False)
    with torch.no_grad():
        assert float((aligned(xt) - b(xt)).abs().max()) < 1e-5
    with pytest.raises(ValueError, match="loss_fn: method='ste'"):
        ws.match(a, b, None, batches, method="ste", progress=False)


def test_repair_reduces_the_barrier_and_undoes_variance_collapse(zoo_built):
    x, _ = zoo_built.data("train")
    xt, yt = zoo_built.data("test")
    lf = nn.CrossEntropyLoss()
    # BN-free MLP, unaligned: interpolation collapses the hidden variance; REPAIR restores it
    a, b = zoo_built.load("mlp-sgd-small-s0"), zoo_built.load("mlp-sgd-small-s1")
    pts = ws.repair_points(a, x[:2])
    assert [p[0] for p in pts] == ["features.0", "features.2"]
    plain = ws.interpolate_models(a, b, 0.5)
    fixed = ws.repair(a, b, x[:300], 0.5, points=pts)
    sa, sb, sp, sf = (ws.unit_statistics(m, x[:300], pts)["features.2"][1] for m in (a, b, plain, fixed))
    target = (sa + sb) / 2
    assert float((sp / target).mean()) < 0.8  # variance collapse, measured
    assert float((sf - target).abs().max()) < 1e-4 * float(target.max())  # repaired to the target exactly
    r = ws.connectivity(a, b, lf, (xt[:200], yt[:200]), steps=3, repair_data=x[:300],
                        methods=("none", "none+repair"), progress=False)  # fmt: skip
    assert r.barrier.sel(path="none+repair") < 0.6 * r.barrier.sel(path="none")
    # the CNN with BatchNorm, weight-matched: REPAIR at the BatchNorm outputs; RESET in between
    a, b = zoo_built.load("cnn-sgd-small-s0"), zoo_built.load("cnn-sgd-small-s1")
    r = ws.connectivity(a, b, lf, (xt[:200], yt[:200]), steps=3, repair_data=x[:300],
                        methods=("weight", "weight+reset", "weight+repair"), progress=False)  # fmt: skip
    bar = r.barrier.values
    assert bar[2] < 0.6 * bar[0] and bar[1] < bar[0], bar


def test_singular_directions_align_after_weight_matching(zoo_built):
    x, _ = zoo_built.data("train")
    a, b = zoo_built.load("mlp-sgd-small-s0"), zoo_built.load("mlp-sgd-small-s1")
    r = ws.singular_cosines(a, b, None, x[:64], k=1, progress=False).isel(k=0)
    hidden = r.sel(layer=["features.2.weight"])
    assert float(hidden.cos_after.mean()) > float(hidden.cos_before.mean()) + 0.3
    # head's output side and features.0's input side carry no permutation: unchanged
    same = r.cos_after - r.cos_before
    assert abs(float(same.sel(layer="head.weight", side="left"))) < 1e-9
    assert abs(float(same.sel(layer="features.0.weight", side="right"))) < 1e-9
    a2, x2 = _model("mlp")
    b2, _, _ = _plant(a2, x2)
    r2 = ws.singular_cosines(a2, b2, None, x2, k=2, progress=False)
    assert float(r2.cos_after.min()) > 1 - 1e-6 and float(r2.cos_before.min()) < 0.9


def test_unsupported_module_is_named():
    class WithGRU(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp, self.rnn, self.out = nn.Linear(4, 8), nn.GRU(8, 8, batch_first=True), nn.Linear(8, 2)

        def forward(self, x):
            return self.out(self.rnn(self.inp(x))[0])

    with pytest.raises(ValueError, match=r"'rnn'.*GRU.*not supported"):
        ws.permutation_groups(WithGRU(), torch.randn(2, 3, 4))
    grouped = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3, groups=2), nn.Flatten(), nn.Linear(16, 2))
    with pytest.raises(ValueError, match=r"'1'.*grouped convolution"):
        ws.permutation_groups(grouped, torch.randn(2, 1, 6, 6))

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.f = nn.Linear(2, 2)

        def forward(self, x):
            return self.f(x) if x.sum() > 0 else -self.f(x)

    with pytest.raises(ValueError, match="torch.fx cannot trace Branchy"):
        ws.permutation_groups(Branchy(), torch.randn(2, 2))

    class MaskFromShape(BertLike):  # torch.zeros(shape) cannot be traced; the meta-tensor retrace reads sizes wrong
        def forward(self, ids):
            h = self.att(self.emb(ids), torch.zeros(ids.shape[0], 1, 1, ids.shape[1]))
            return self.cls(h[:, 0])

    with pytest.raises(ValueError, match=r"graph of MaskFromShape does not run.*zeros_like"):
        ws.permutation_groups(MaskFromShape(), torch.randint(0, 20, (2, 7)))
    # a module with no units around it is fine (it sees only the fixed input)
    ok = nn.Sequential(nn.Upsample(scale_factor=1), nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 1))
    assert list(ws.permutation_groups(ok, torch.randn(2, 1, 2, 2)).groups) == ["2"]


def test_bad_arguments_are_named():
    a, x = _model("mlp")
    with pytest.raises(ValueError, match="method"):
        ws.match(a, a, None, x, method="magic", progress=False)
    with pytest.raises(ValueError, match="model_b"):
        ws.match(a, nn.Sequential(nn.Linear(6, 3)), None, x, progress=False)
    with pytest.raises(ValueError, match=r"methods: 'weight\+magic'"):
        ws.connectivity(a, a, nn.CrossEntropyLoss(), (x, torch.zeros(96, dtype=torch.long)), methods=["weight+magic"],
                        progress=False)  # fmt: skip
    perms = ws.match(a, a, None, x, progress=False)
    bad = perms.copy()
    bad["f1"] = bad["f1"] * 0
    with pytest.raises(ValueError, match="'f1' is not a permutation"):
        ws.permute(a, bad)
    with pytest.raises(TypeError, match="perms"):
        ws.permute(a, {"f1": [0]})


def test_landscape_bn_repair_is_reset_and_deprecated():
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2)).eval()
    b = copy.deepcopy(a)
    with torch.no_grad():
        b[0].weight.mul_(-1)
    data = (torch.randn(64, 3), torch.randint(0, 2, (64,)))
    new = interpolate(a, b, nn.CrossEntropyLoss(), data, coords=[0.5], bn_reset=True, progress=False)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        old = interpolate(a, b, nn.CrossEntropyLoss(), data, coords=[0.5], bn_repair=True, progress=False)
    assert any(issubclass(x.category, DeprecationWarning) and "RESET" in str(x.message) for x in w)
    assert float(new.loss[0]) == float(old.loss[0])
    # the same as weightspace's RESET of the interpolated model
    m = ws.reset_batchnorm(ws.interpolate_models(a, b, 0.5), data[0])
    with torch.no_grad():
        ref = float(nn.CrossEntropyLoss()(m(data[0]), data[1]))
    assert abs(ref - float(new.loss[0])) < 1e-5
    with pytest.raises(TypeError, match="bn_repair"):
        interpolate(a, b, nn.CrossEntropyLoss(), data, bn_reset=True, bn_repair=True, progress=False)


def test_plots_and_explorer_draw_the_results(zoo_built):
    from workbench.plots import weightspace as wplots
    from workbench.widgets.weightspace import WeightspaceExplorer

    x, _ = zoo_built.data("train")
    xt, yt = zoo_built.data("test")
    a, b = zoo_built.load("mlp-sgd-small-s0"), zoo_built.load("mlp-sgd-small-s1")
    lf = nn.CrossEntropyLoss()
    ex = WeightspaceExplorer(a, b, lf, (xt[:150], yt[:150]), repair_data=x[:200], steps=3,
                             methods=("none", "weight"), background=False)  # fmt: skip
    assert ex.last_error is None, ex.last_error
    r = ex.result
    assert list(ex.paths.data[1].y) == pytest.approx(r.loss.sel(path="weight").values.tolist())
    assert list(ex.barriers.data[0].y) == pytest.approx(r.barrier.values.tolist())
    assert ex.spectra_fig.data[0].name == "model A" and len(ex.spectra_fig.data[0].y) == 3  # per-layer alpha
    assert ex.paths.layout.title.text.startswith("loss")
    ex.metric.value = "accuracy"  # redraws only: same result object, new title and values
    assert ex.paths.layout.title.text.startswith("accuracy") and ex.result is r
    assert list(ex.paths.data[0].y) == pytest.approx(r.accuracy.sel(path="none").values.tolist())
    ex.spectrum.value = "stable_rank"
    assert list(ex.spectra_fig.data[1].y) == pytest.approx(ex.spectra["model B"].stable_rank.values.tolist())
    both = xr.concat([r, r], "pair").assign_coords(pair=["p", "q"])
    fig = wplots.lmc_barriers(both)
    assert fig.data[0].y.tolist() == pytest.approx(r.barrier.values.tolist())
    assert fig.data[0].error_y.array.tolist() == pytest.approx([0.0, 0.0])
    with pytest.raises(ValueError, match="connectivity"):
        wplots.lmc_paths(xr.Dataset({"x": ("t", [1.0])}))


def test_report_writes_barriers_with_spread(tmp_path, zoo_built):
    import json

    import workbench as wb
    from workbench import reports

    small = dict(steps=3, n_samples=150, n_repair=200, methods=["none", "weight"])
    r = reports.run_report("weightspace", small, tmp_path)
    html = open(r["html"], encoding="utf-8").read()
    assert html.count('class="plotly-graph-div"') >= 4 and "Traceback" not in html and "results: " in html
    ds = wb.load(r["nc"])
    assert ds.attrs["report"] == "weightspace" and ds.barrier.dims == ("pair", "path")
    assert ds.sizes["pair"] == 3 and (ds.barrier.sel(path="weight") < ds.barrier.sel(path="none")).all()
    assert json.loads(ds.attrs["report_params"]) == reports.effective_params("weightspace", small)
    # the stored number is the probe's number
    xt, yt = zoo_built.data("test")
    one = ws.connectivity(zoo_built.load("mlp-sgd-small-s0"), zoo_built.load("mlp-sgd-small-s1"), nn.CrossEntropyLoss(),
                          (xt[:150], yt[:150]), steps=3, methods=["none"], progress=False)  # fmt: skip
    assert float(ds.barrier.sel(pair="s0-s1", path="none")) == float(one.barrier.sel(path="none"))
