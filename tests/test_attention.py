import math
import os

import numpy as np
import pytest
import torch
from torch import nn

from workbench import attention as A
from workbench.attention import reduction
from workbench.attention.capture import Capture
from workbench.testing import parametrize_with_probe_checks

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _ref_entropy(weights, valid):
    """Token-weighted float64 entropy per head from eager probabilities (B, H, T, S), valid (B, T)."""
    w = weights.double()
    H = -(torch.special.xlogy(w, w)).sum(-1)
    return np.array([H[:, h][valid].mean().item() for h in range(w.shape[1])])


pytestmark = pytest.mark.filterwarnings("ignore:Support for mismatched:UserWarning")


def _encoder(norm_first=False, seed=0):
    torch.manual_seed(seed)
    layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, dropout=0.0, batch_first=True, norm_first=norm_first)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()


def _eager_layers(enc, x, key_padding_mask=None, attn_mask=None):
    ws, h = [], x
    with torch.no_grad():
        for lyr in enc.layers:
            z = lyr.norm1(h) if lyr.norm_first else h
            _, w = lyr.self_attn(
                z,
                z,
                z,
                key_padding_mask=key_padding_mask,
                attn_mask=attn_mask,
                need_weights=True,
                average_attn_weights=False,
            )
            ws.append(w)
            h = lyr(h, src_key_padding_mask=key_padding_mask, src_mask=attn_mask)
    return ws


@pytest.mark.parametrize("fastpath", [True, False])
@pytest.mark.parametrize("causal", [False, True])
def test_torch_native_encoder_matches_eager_float64(fastpath, causal):
    enc = _encoder(norm_first=causal)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 8, 16, generator=g)
    pad = torch.zeros(3, 8, dtype=torch.bool)
    pad[1, 6:] = True
    pad[2, 3:] = True
    cm = nn.Transformer.generate_square_subsequent_mask(8) if causal else None
    torch.backends.mha.set_fastpath_enabled(fastpath)
    try:
        kw = dict(src_key_padding_mask=pad)
        if causal:
            kw.update(mask=cm, is_causal=True)
        ds = A.attention_stats(enc, x, **kw)
    finally:
        torch.backends.mha.set_fastpath_enabled(True)
    ws = _eager_layers(enc, x, pad, cm)
    for layer, w in enumerate(ws):
        np.testing.assert_allclose(ds.entropy[layer].values, _ref_entropy(w, ~pad), atol=1e-5)
    assert np.isnan(ds.max_logit.values).all()  # MHA hands out probabilities only: no logit is made up
    if causal:  # normalised by ln(i + 1) for the causal rows (padded keys also excluded)
        w = ws[0].double()
        Hrow = -(torch.special.xlogy(w, w)).sum(-1)
        n = (~pad).sum(1)
        nk = torch.stack([torch.clamp(torch.arange(1, 9), max=int(n[b])) for b in range(3)])  # allowed keys per row
        ok = (~pad) & (nk > 1)
        ref = [(Hrow[:, h] / torch.log(nk.double()))[ok].mean().item() for h in range(4)]
        np.testing.assert_allclose(ds.normalized_entropy[0].values, ref, atol=1e-5)


def _bert(impl, seed=0):
    from transformers import BertConfig, BertModel

    cfg = BertConfig(
        vocab_size=60,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        attn_implementation=impl,
    )
    torch.manual_seed(seed)
    return BertModel(cfg).eval()


def _bert_inputs():
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(5, 60, (3, 9), generator=g)
    am = torch.ones(3, 9, dtype=torch.long)
    am[1, 6:] = 0
    am[2, 4:] = 0
    return {"input_ids": ids, "attention_mask": am}


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_hf_bert_matches_eager_probabilities_and_config_is_untouched(impl):
    m = _bert(impl)
    inp = _bert_inputs()
    before = (m.config._attn_implementation, m.config.output_attentions)
    ds = A.attention_stats(m, inp)
    assert (m.config._attn_implementation, m.config.output_attentions) == before
    assert ds.attrs["capture"] == {"sdpa": "sdpa", "eager": "softmax"}[impl]
    ref_model = _bert("eager")
    ref_model.load_state_dict(m.state_dict())
    with torch.no_grad():
        out = ref_model(**inp, output_attentions=True)
    valid = inp["attention_mask"].bool()
    for layer, w in enumerate(out.attentions):
        np.testing.assert_allclose(ds.entropy[layer].values, _ref_entropy(w, valid), atol=1e-5)
        # sink mass: the probability on the first key, token-weighted over valid queries
        sink = [w[:, h, :, 0].double()[valid].mean().item() for h in range(4)]
        np.testing.assert_allclose(ds.sink_mass[layer].values, sink, atol=1e-6)
    # max logit: q.k / sqrt(d) recomputed in float64 from each layer's input and its query/key projections
    inputs = {}
    hooks = [
        lyr.attention.self.register_forward_pre_hook(
            lambda mod, args, kwargs, i=i: inputs.__setitem__(
                i, (args[0] if args else kwargs["hidden_states"]).detach()
            ),
            with_kwargs=True,
        )
        for i, lyr in enumerate(ref_model.encoder.layer)
    ]
    with torch.no_grad():
        ref_model(**inp)
    for h_ in hooks:
        h_.remove()
    for layer, lyr in enumerate(ref_model.encoder.layer):
        att = lyr.attention.self
        x = inputs[layer].double()
        q = (x @ att.query.weight.double().T + att.query.bias.double()).reshape(3, 9, 4, 8).transpose(1, 2)
        k = (x @ att.key.weight.double().T + att.key.bias.double()).reshape(3, 9, 4, 8).transpose(1, 2)
        z = (q @ k.transpose(-1, -2)) / math.sqrt(8)
        z = z.masked_fill(~valid[:, None, None, :], -math.inf)
        ref = [z[:, h].amax(-1)[valid].max().item() for h in range(4)]
        np.testing.assert_allclose(ds.max_logit[layer].values, ref, rtol=1e-5)
    assert np.all(ds.n_rows.values == int(valid.sum()))


def test_padding_invariance():
    m = _bert("sdpa")
    inp = _bert_inputs()
    batch = A.attention_stats(m, inp, resolution="example")
    for b in range(3):
        n = int(inp["attention_mask"][b].sum())
        alone = A.attention_stats(
            m,
            {"input_ids": inp["input_ids"][b : b + 1, :n], "attention_mask": inp["attention_mask"][b : b + 1, :n]},
            resolution="example",
        )
        np.testing.assert_allclose(batch.entropy.sel(example=b).values, alone.entropy.sel(example=0).values, atol=1e-5)


def test_per_query_resolution_and_query_chunks_agree():
    m = _bert("sdpa")
    inp = _bert_inputs()
    q = A.attention_stats(m, inp, resolution="query", query_chunk=2)
    h = A.attention_stats(m, inp)
    assert q.entropy.dims == ("layer", "head", "example", "query")
    assert np.isnan(q.entropy.sel(example=2, query=5)).all()  # padded query rows are excluded
    with np.errstate(all="ignore"):
        np.testing.assert_allclose(
            q.entropy.mean(("example", "query"), skipna=True).values, h.entropy.values, atol=1e-9
        )


def test_dataloader_of_inputs_accumulates_all_examples():
    from torch.utils.data import DataLoader, TensorDataset

    enc = _encoder()
    x = torch.randn(10, 5, 16)
    whole = A.attention_stats(enc, x)
    loader = DataLoader(TensorDataset(x, torch.zeros(10)), batch_size=4)
    parts = A.attention_stats(enc, loader)
    np.testing.assert_allclose(parts.entropy.values, whole.entropy.values, atol=1e-6)


def test_hand_written_attention_via_registration():
    class Mixer(nn.Module):  # attention-like softmax in a module not named "Attention"
        def __init__(self):
            super().__init__()
            self.q = nn.Linear(8, 8)
            self.k = nn.Linear(8, 8)

        def forward(self, x):
            s = self.q(x).reshape(2, 5, 2, 4).transpose(1, 2) @ self.k(x).reshape(2, 5, 2, 4).transpose(1, 2).transpose(
                -1, -2
            )
            return torch.softmax(s, dim=-1).sum()

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.mix = Mixer()

        def forward(self, x):
            return self.mix(x)

    torch.manual_seed(0)
    net, x = Net(), torch.randn(2, 5, 8)
    with pytest.raises(ValueError, match="attention_modules"):
        A.entropy(net, x)
    e = A.entropy(net, x, attention_modules=["mix"])
    with torch.no_grad():
        s = net.mix.q(x).reshape(2, 5, 2, 4).transpose(1, 2) @ net.mix.k(x).reshape(2, 5, 2, 4).transpose(
            1, 2
        ).transpose(-1, -2)
        p = torch.softmax(s.double(), -1)
    np.testing.assert_allclose(e.values[0], _ref_entropy(p, torch.ones(2, 5, dtype=torch.bool)), atol=1e-6)


def test_no_attention_gets_a_clear_error():
    with pytest.raises(ValueError, match="no attention was captured"):
        A.entropy(nn.Sequential(nn.Linear(4, 4)), torch.randn(2, 4))


def test_minilm_collapsed_head_and_its_logit_outlier():
    import workbench.zoo as zoo

    model, tok = zoo.minilm()
    enc = tok(
        ["The cat sat on the mat.", "A quick brown fox jumps over the lazy dog near the river bank.", "Hello"],
        padding=True,
        return_tensors="pt",
    )
    ds = A.attention_stats(model, dict(enc))
    assert ds.sizes == {"layer": 6, "head": 12}
    col = A.detect_collapse(ds)
    assert [(int(l), int(h)) for l, h in zip(*np.nonzero(col.values))] == [(0, 2)]
    assert float(ds.max_logit[0, 2]) > 3 * float(ds.max_logit[0].drop_sel(head=2).max())
    assert model.config._attn_implementation == "sdpa"


def test_zoo_vit_high_lr_collapses_and_sigma_reparam_does_not(zoo_built):
    zoo = zoo_built
    x, _ = zoo.data("test")
    ne = {n: float(A.entropy(zoo.load(n), x, normalized=True)[0].mean()) for n in zoo.names("attention")}
    assert ne["vit-high-lr"] < 0.2 < ne["vit-normal"] and ne["vit-sigma-reparam"] > 0.5
    assert A.detect_collapse(A.attention_stats(zoo.load("vit-high-lr"), x)).sel(layer=0).any()


def _row_entropy(z):
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return -(p * np.log(p)).sum(-1)


def test_entropy_lower_bound_box_holds_for_unit_inputs_and_is_attained():
    rng = np.random.default_rng(0)
    T, d = 6, 4
    for _ in range(200):
        W = rng.normal(size=(d, d)) * rng.uniform(0.1, 3)
        sigma = np.linalg.norm(W, 2)
        X = rng.normal(size=(T, d))
        X /= np.linalg.norm(X, axis=1, keepdims=True)
        assert _row_entropy(X @ W @ X.T).min() >= A.entropy_lower_bound(sigma, T, constraint="box") - 1e-9
    assert A.entropy_lower_bound(0.0, 10, constraint="box") == pytest.approx(math.log(10))
    sigma, T = 1.3, 7  # one logit at +sigma, the rest at -sigma
    z = np.r_[sigma, -sigma * np.ones(T - 1)]
    assert _row_entropy(z) == pytest.approx(float(A.entropy_lower_bound(sigma, T, constraint="box")), rel=1e-12)


def test_entropy_lower_bound_of_zhai_et_al_is_the_minimum_over_the_sigma_ball():
    """Thm 3.1 of Zhai et al. (2023): over logit rows with ||a||_2 <= sigma the entropy is at least the
    bound, and the bound is the minimum (found here by a constrained optimiser from many starts)."""
    from scipy.optimize import minimize

    rng = np.random.default_rng(1)
    for T in (2, 3, 5, 8):
        for sigma in (0.3, 1.0, 2.5, 6.0):
            bound = float(A.entropy_lower_bound(sigma, T))
            a = rng.normal(size=(2000, T))
            a *= sigma * rng.uniform(0, 1, size=(2000, 1)) ** (1 / T) / np.linalg.norm(a, axis=1, keepdims=True)
            assert _row_entropy(a).min() >= bound - 1e-12
            best = min(
                minimize(
                    _row_entropy,
                    x0,
                    method="SLSQP",
                    constraints=[{"type": "ineq", "fun": lambda x, sigma=sigma: sigma**2 - x @ x}],
                ).fun
                for x0 in sigma * rng.normal(size=(8, T)) / math.sqrt(T)
            )
            assert best == pytest.approx(bound, rel=1e-5, abs=1e-7)
    # the extreme row: one logit sigma sqrt((T-1)/T), the rest -sigma / sqrt(T (T-1))
    sigma, T = 2.0, 6
    z = np.r_[sigma * math.sqrt((T - 1) / T), -sigma / math.sqrt(T * (T - 1)) * np.ones(T - 1)]
    assert np.linalg.norm(z) == pytest.approx(sigma)
    assert _row_entropy(z) == pytest.approx(float(A.entropy_lower_bound(sigma, T)), rel=1e-12)
    # as a statement about weights: a_i = X W x_i with ||X||_2 <= 1
    for _ in range(200):
        W = rng.normal(size=(4, 4)) * rng.uniform(0.1, 5)
        X = rng.normal(size=(T, 4))
        X /= np.linalg.norm(X, 2)
        assert _row_entropy(X @ W @ X.T).min() >= A.entropy_lower_bound(np.linalg.norm(W, 2), T) - 1e-9
    assert A.entropy_lower_bound(0.0, 10) == pytest.approx(math.log(10))
    assert A.entropy_lower_bound(3.0, 10) > A.entropy_lower_bound(3.0, 10, constraint="box")  # the stronger assumption
    with pytest.raises(ValueError, match="constraint"):
        A.entropy_lower_bound(1.0, 4, constraint="l2")
    with pytest.raises(ValueError, match="sigma: expected a finite spectral norm >= 0"):
        A.entropy_lower_bound(-0.5, 4)
    with pytest.raises(ValueError, match="n_keys"):
        A.entropy_lower_bound(1.0, 0)
    with pytest.raises(ValueError, match="models: empty; pass a list or dict"):
        A.over_checkpoints([], torch.zeros(1, 2, 16))


def test_qk_spectral_norms_and_over_checkpoints(zoo_built):
    zoo = zoo_built
    s = A.qk_spectral_norms(zoo.load("vit-high-lr"))
    assert s.dims == ("layer", "head") and s.shape == (2, 4) and np.all(s.values > 0)
    cks = zoo.checkpoints("vit-high-lr")[::10]
    x, _ = zoo.data("test")
    ds = A.over_checkpoints(
        {c["step"]: c["model"] for c in cks}, x[:64], losses=[c["train_loss"] for c in cks], dim="step", progress=False
    )
    assert ds.entropy.dims == ("step", "layer", "head") and "loss" in ds
    assert float(ds.entropy.isel(step=-1, layer=0).mean()) < float(ds.entropy.isel(step=0, layer=0).mean())


def test_attention_map_rows_sum_to_one():
    m = _bert("sdpa")
    inp = _bert_inputs()
    a = A.attention_map(m, inp, layer=1, example=2)
    assert a.dims == ("head", "query", "key")
    np.testing.assert_allclose(a.sum("key").values, 1, atol=1e-5)
    assert float(a.isel(key=slice(4, None)).max()) == 0.0  # padded keys of example 2
    ref_model = _bert("eager")
    ref_model.load_state_dict(m.state_dict())
    with torch.no_grad():
        w = ref_model(**inp, output_attentions=True).attentions
    valid = inp["attention_mask"][2].bool()  # the real query rows of example 2
    np.testing.assert_allclose(a.values[:, valid], w[1][2][:, valid].numpy(), atol=1e-6)
    assert not np.allclose(a.values[:, valid], w[0][2][:, valid].numpy(), atol=1e-3)  # not another layer's map


def test_fused_outputs_match_the_kernel_and_exact_mode():
    m = _bert("sdpa")
    inp = _bert_inputs()
    with torch.no_grad():
        ref = m(**inp).last_hidden_state
    got = {}

    class Spy(nn.Module):
        pass

    for exact in (False, True):
        cap = Capture(m, inp["attention_mask"].bool(), 128, None, exact_outputs=exact)
        with torch.no_grad(), cap:
            got[exact] = m(**inp).last_hidden_state
    valid = inp["attention_mask"].bool()
    assert torch.equal(got[True], ref)  # the kernel itself ran
    torch.testing.assert_close(got[False][valid], ref[valid], rtol=1e-5, atol=1e-5)
    a = A.attention_stats(m, inp)
    b = A.attention_stats(m, inp, exact_outputs=True)
    np.testing.assert_allclose(a.entropy.values, b.entropy.values, atol=1e-6)


def test_bad_resolution_is_rejected_before_the_forward():
    calls = []
    enc = _encoder()
    h = enc.register_forward_pre_hook(lambda *a: calls.append(1))
    with pytest.raises(ValueError, match="resolution: expected"):
        A.attention_stats(enc, torch.randn(2, 5, 16), resolution="token")
    with pytest.raises(ValueError, match="query_chunk: .* must be >= 1"):
        A.attention_stats(enc, torch.randn(2, 5, 16), query_chunk=0)
    h.remove()
    assert calls == []


class _SDPA(nn.Module):
    """Calls F.scaled_dot_product_attention on given q, k, v with fixed keyword arguments."""

    def __init__(self, **kw):
        super().__init__()
        self.kw = kw

    def forward(self, q, k, v):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, **self.kw)


def _sdpa_reference(q, k, v, attn_mask=None, is_causal=False, enable_gqa=False):
    """float64 statistics per row (B, H, T) and the output, from the definitions."""
    q, k, v = q.double(), k.double(), v.double()
    if enable_gqa:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    z = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    allowed = torch.ones_like(z, dtype=torch.bool)
    bias = torch.zeros_like(z)
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        allowed = allowed & attn_mask
    elif attn_mask is not None:
        allowed = allowed & torch.isfinite(attn_mask)
        bias = bias + torch.where(torch.isfinite(attn_mask), attn_mask.double(), 0.0)
    if is_causal:
        allowed = allowed & torch.ones(z.shape[-2:], dtype=torch.bool).tril()
    neg = torch.tensor(-math.inf, dtype=torch.float64)
    p = torch.softmax(torch.where(allowed, z + bias, neg), -1)
    return {
        "entropy": -(torch.special.xlogy(p, p)).sum(-1),
        "max_logit": torch.where(allowed, z, neg).amax(-1),
        "sink_mass": p[..., 0],
        "rows": allowed.any(-1),
        "output": p @ v,
    }


@pytest.mark.parametrize("budget", [1 << 19, 4 * 37 * 3, 1])  # groups of examples; one example, 3 queries; 1 query
@pytest.mark.parametrize("case", ["bias", "causal", "gqa_self", "gqa_cross"])
def test_sdpa_blocks_match_float64_definitions(monkeypatch, case, budget):
    """Every way the reduction can be blocked gives the float64 values of the definitions: additive bias (the
    max logit is taken before it), causal mask, grouped-query self-attention with padding (output computed by
    the probe), grouped-query cross-attention with a fully masked row (output from the kernel)."""
    monkeypatch.setattr(reduction, "block_elements", lambda device: budget)
    g = torch.Generator().manual_seed(3)
    B, H, T, S, d = 5, 4, 37, 37, 8
    kw = {}
    if case.startswith("gqa"):
        kw = {"enable_gqa": True}
    if case == "gqa_cross":
        T = 7
    Hk = 2 if case.startswith("gqa") else H
    # q, k, v as HuggingFace hands them: (B, T, H, d) memory seen as (B, H, T, d)
    q = 2 * torch.randn(B, T, H, d, generator=g).transpose(1, 2)
    k = 2 * torch.randn(B, S, Hk, d, generator=g).transpose(1, 2)
    v = torch.randn(B, S, Hk, d, generator=g).transpose(1, 2)
    lengths = torch.tensor([37, 30, 12, 37, 5])
    keys_ok = torch.arange(S)[None, :] < lengths[:, None]  # (B, S)
    if case == "bias":  # ALiBi-like distance penalty, -inf on padded keys
        dist = (torch.arange(T)[:, None] - torch.arange(S)[None, :]).abs().float()
        slopes = torch.tensor([0.5, 0.25, 0.125, 0.0625])[None, :, None, None]
        kw["attn_mask"] = (-slopes * dist).masked_fill(~keys_ok[:, None, None, :], -math.inf)
    elif case == "causal":
        kw["is_causal"] = True
    elif case == "gqa_self":
        kw["attn_mask"] = keys_ok[:, None, None, :]
    else:
        mask = keys_ok[:, None, None, :].expand(B, 1, T, S).clone()
        mask[0, 0, 2] = False  # a fully masked query row: it counts nowhere
        kw["attn_mask"] = mask
    model = _SDPA(**kw)
    ds = A.attention_stats(model, (q, k, v), resolution="query")
    assert list(ds.module.values) == ["<model>"]  # attention in the root module's own forward
    ref = _sdpa_reference(q, k, v, **kw)
    rows = ref["rows"].clone()
    if T == S:  # self-attention: queries at padded positions are excluded
        rows &= (keys_ok if case != "causal" else torch.ones(B, S, dtype=torch.bool))[:, None, :]
    for key in ("entropy", "max_logit", "sink_mass"):
        got = torch.from_numpy(ds[key].isel(layer=0).values).permute(1, 0, 2)  # (B, H, T)
        assert torch.equal(torch.isfinite(got), rows), key
        np.testing.assert_allclose(got[rows].numpy(), ref[key][rows].numpy(), rtol=1e-5, atol=1e-5, err_msg=key)
    if case == "gqa_cross":
        assert ds.entropy.isel(layer=0, example=0, query=2).isnull().all()
    with torch.no_grad():  # the output handed back to the model: softmax(z) @ v, or the kernel's own
        cap = Capture(model, None, 128, None)
        with cap:
            out = model(q, k, v)
    ok = ref["rows"]
    np.testing.assert_allclose(out[ok].numpy(), ref["output"][ok].numpy(), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        kernel = model(q, k, v)
    assert out.shape == kernel.shape and out.stride() == kernel.stride()  # the layout the kernel gives
    # the probe computes the output itself unless a row is fully masked (then the kernel runs): rounding differs
    assert torch.equal(out, kernel) == (case == "gqa_cross")


def test_a_module_run_twice_in_one_forward_is_two_layers():
    """Shared weights (ALBERT-style): each call of the same attention module is its own layer."""

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.att = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x):
            h = self.att(x, x, x)[0]
            return self.att(h, h, h)[0]

    torch.manual_seed(0)
    net, x = Twice().eval(), 3 * torch.randn(2, 6, 8)
    ds = A.attention_stats(net, x)
    assert list(ds.module.values) == ["att", "att#1"]
    with torch.no_grad():
        h, w0 = net.att(x, x, x, average_attn_weights=False)
        _, w1 = net.att(h, h, h, average_attn_weights=False)
    valid = torch.ones(2, 6, dtype=torch.bool)
    for layer, w in enumerate((w0, w1)):
        np.testing.assert_allclose(ds.entropy[layer].values, _ref_entropy(w, valid), atol=1e-6)
    assert abs(float(ds.entropy[0].mean() - ds.entropy[1].mean())) > 1e-3  # two different layers, not one twice


@pytest.mark.parametrize("arch", ["gpt2", "llama-gqa"])
def test_hf_causal_decoders_match_eager_with_left_and_right_padding(arch):
    """Causal decoders (GPT-2; LLaMA with grouped-query attention and rotary embeddings) under sdpa and
    eager, with right and left padding, against float64 entropies of eager's own probabilities."""
    from transformers import GPT2Config, GPT2Model, LlamaConfig, LlamaModel

    def make(impl):
        torch.manual_seed(1)
        if arch == "gpt2":
            m = GPT2Model(
                GPT2Config(
                    vocab_size=50,
                    n_embd=32,
                    n_layer=2,
                    n_head=4,
                    attn_implementation=impl,
                    bos_token_id=0,
                    eos_token_id=0,
                )
            )
        else:
            m = LlamaModel(
                LlamaConfig(
                    vocab_size=50,
                    hidden_size=32,
                    intermediate_size=64,
                    num_hidden_layers=2,
                    num_attention_heads=4,
                    num_key_value_heads=2,
                    attn_implementation=impl,
                    bos_token_id=0,
                    eos_token_id=0,
                    pad_token_id=0,
                )
            )
        with torch.no_grad():  # near-collapsed heads with logits up to ~100: a precision test
            for name, p in m.named_parameters():
                if any(s in name for s in ("c_attn", "q_proj", "k_proj")):
                    p.mul_(40)
        return m.eval()

    g = torch.Generator().manual_seed(0)
    inp = {
        "input_ids": torch.randint(1, 50, (3, 11), generator=g),
        "attention_mask": torch.ones(3, 11, dtype=torch.long),
    }
    inp["attention_mask"][1, 7:] = 0  # right padding
    inp["attention_mask"][2, :3] = 0  # left padding
    valid = inp["attention_mask"].bool()
    with torch.no_grad():
        weights = make("eager")(**inp, output_attentions=True).attentions
    for impl, capture in (("sdpa", "sdpa"), ("eager", "softmax")):
        ds = A.attention_stats(make(impl), inp)
        assert ds.attrs["capture"] == capture
        for layer, w in enumerate(weights):
            ref = _ref_entropy(w, valid)
            np.testing.assert_allclose(ds.entropy[layer].values, ref, atol=1e-5)
        # normalised by ln(number of allowed keys): causal rows and padding both count
        w = weights[0].double()
        Hrow = -(torch.special.xlogy(w, w)).sum(-1)
        n_keys = (w > 0).sum(-1).double()
        ok = valid[:, None, :].expand_as(n_keys) & (n_keys > 1)
        want = [(Hrow / n_keys.clamp_min(2).log())[:, h][ok[:, h]].mean().item() for h in range(4)]
        np.testing.assert_allclose(ds.normalized_entropy[0].values, want, atol=1e-5)
        assert max(want) < 0.2  # far from uniform attention: the comparison has teeth


@parametrize_with_probe_checks([A.attention_stats, A.entropy, A.attention_map, A.qk_spectral_norms, A.over_checkpoints])
def test_probe_contract(probe, check):
    check(probe)


def test_progress_counts_batches_and_cancel_stops_at_the_next_attention_call():
    import threading

    from workbench.registry import Cancelled

    enc = _encoder()
    batches = [torch.randn(2, 5, 16), torch.randn(3, 5, 16)]
    seen = []
    A.attention_stats(enc, batches, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 2), (2, 2)]
    ev = threading.Event()
    calls = []

    def set_event(*args):
        calls.append(1)
        ev.set()

    h = enc.layers[1].register_forward_pre_hook(set_event)
    try:  # set during the first batch's forward: the second layer's attention call stops it
        with pytest.raises(Cancelled):
            A.attention_stats(enc, batches, cancel=ev)
    finally:
        h.remove()
    assert calls == [1]


# -- bad inputs: named, never dropped from the statistics ----------------------------------------------------


def test_nan_inputs_and_nan_weights_are_errors_never_dropped_rows():
    from workbench.testing import hostile_transformer

    m, x, mask = hostile_transformer()
    bad = x.clone()
    bad[1, 2, 0] = float("nan")
    with pytest.raises(ValueError, match="^inputs: inputs contain NaN or inf"):
        A.attention_stats(m, bad, src_key_padding_mask=mask, progress=False)
    with torch.no_grad():
        m.encoder.layers[1].self_attn.in_proj_weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="^model: the attention logits of 'encoder.layers.1.self_attn' are NaN"):
        A.entropy(m, x, src_key_padding_mask=mask, progress=False)
    with pytest.raises(ValueError, match="^model: the query / key weights of 'encoder.layers.1.self_attn'"):
        A.qk_spectral_norms(m, progress=False)


def test_inputs_of_another_dtype_are_cast_and_shapes_the_model_cannot_take_are_named():
    from workbench.testing import hostile_transformer

    m, x, mask = hostile_transformer()
    ref = A.attention_stats(m, x, src_key_padding_mask=mask, progress=False)
    for other in (x.double(), x.numpy(), [x], (x, torch.zeros(3, dtype=torch.long))):
        got = A.attention_stats(m, other, src_key_padding_mask=mask, progress=False)
        np.testing.assert_array_equal(got.entropy.values, ref.entropy.values)
    with pytest.raises(ValueError, match=r"^inputs: the model's forward failed on inputs float32 \(3, 7, 5\)") as ei:
        A.attention_stats(m, x[..., :5], src_key_padding_mask=mask, progress=False)
    assert isinstance(ei.value.__cause__, RuntimeError)
    with pytest.raises(ValueError, match="^inputs: batch 0 has no examples"):
        A.attention_stats(m, x[:0], progress=False)


@pytest.mark.parametrize(
    "kw, exc, msg",
    [
        (dict(layer=True), TypeError, "^layer: expected an int, got True"),
        (dict(layer=1.5), ValueError, "^layer: expected an int"),
        (dict(example=-1), ValueError, "^example: expected an int >= 0"),
        (dict(example=3), ValueError, "^example: the first batch of inputs has 3 examples"),
        (dict(attention_modules=["nonsense"]), ValueError, r"^attention_modules: unknown \['nonsense'\]"),
    ],
)
def test_bad_attention_map_arguments_are_named(kw, exc, msg):
    from workbench.testing import hostile_transformer

    m, x, mask = hostile_transformer()
    kw = {"layer": 0, **kw}
    with pytest.raises(exc, match=msg):
        A.attention_map(m, x, src_key_padding_mask=mask, progress=False, **kw)


def test_over_checkpoints_validates_losses_dim_and_models():
    from workbench.testing import hostile_transformer

    (a, x, mask), b = hostile_transformer(0), hostile_transformer(1)[0]
    with pytest.raises(ValueError, match="^losses: contains NaN or inf"):
        A.over_checkpoints([a, b], x, losses=[1.0, float("nan")], src_key_padding_mask=mask, progress=False)
    with pytest.raises(ValueError, match="^dim: expected a name for the new dimension"):
        A.over_checkpoints([a, b], x, dim="layer", src_key_padding_mask=mask, progress=False)
    with pytest.raises(TypeError, match="^models: expected a list or dict of models"):
        A.over_checkpoints(a, x, src_key_padding_mask=mask, progress=False)
