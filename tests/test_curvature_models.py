"""Curvature probes on the transformers users load: Hugging Face BERT, GPT-2, ViT and LLaMA built from tiny random
configs, saved to a temporary directory and read back with ``from_pretrained`` (attention left at its default, sdpa,
whose fused CPU kernel has no second derivative), and a plain model with ``nn.MultiheadAttention``.

Ground truth: the eager twin (the same weights with ``attn_implementation="eager"``; for nn.MultiheadAttention the
``need_weights=True`` path, which does not call sdpa) in float64, differentiated by ``torch.func`` directly
(``jacrev(grad(.))``; ``torch.func.hessian`` is wrong through layer_norm's weight in torch 2.13): its
Hessian on a parameter subset, its GGN ``J^T H_out J`` from the Jacobian of the logits and the Hessian of the loss in
the logits, its empirical Fisher from per-sample gradients. Also: second-order probes switch attention to the math
kernel and put the caller's backend flags back (also after an error); first-order probes keep the caller's kernel.
"""

import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, jacrev
from torch.nn.attention import SDPBackend, sdpa_kernel

import workbench.sharpness as S
from workbench.landscape import slice_1d

transformers = pytest.importorskip("transformers")

V, T, N, C = 50, 8, 6, 3  # vocabulary, sequence length, samples, classes


class MHAClassifier(nn.Module):
    """Embedding, one nn.MultiheadAttention block with a key padding mask, masked mean pooling, linear head.
    ``need_weights=False`` runs attention through sdpa; True through the explicit softmax (the eager twin)."""

    def __init__(self, need_weights=False):
        super().__init__()
        self.emb = nn.Embedding(V, 16)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, C)
        self.need_weights = need_weights

    def forward(self, input_ids, attention_mask):
        h = self.emb(input_ids)
        a, _ = self.attn(h, h, h, key_padding_mask=attention_mask == 0, need_weights=self.need_weights)
        h = self.norm(h + a)
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return self.head((h * m).sum(1) / m.sum(1))


class Logits(nn.Module):
    """A Hugging Face classifier returning its logits tensor (so Fisher can tell the likelihood)."""

    def __init__(self, hf):
        super().__init__()
        self.hf = hf

    def forward(self, **inputs):
        return self.hf(**inputs).logits


def class_ce(out, y):
    return F.cross_entropy(out.logits, y)


def token_ce(out, y):
    """Next-token cross-entropy over the unpadded positions (labels -100 at padding)."""
    logits = out.logits[:, :-1]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y[:, 1:].reshape(-1))


def hf_config(name):
    t = transformers
    small = dict(num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, hidden_size=16)
    if name == "bert":
        cfg = t.BertConfig(vocab_size=V, max_position_embeddings=16, num_labels=C, **small)
        return t.BertForSequenceClassification, cfg
    if name == "gpt2":
        cfg = t.GPT2Config(vocab_size=V, n_embd=16, n_layer=1, n_head=2, n_positions=16, bos_token_id=1, eos_token_id=2)
        return t.GPT2LMHeadModel, cfg
    if name == "vit":
        cfg = t.ViTConfig(image_size=8, patch_size=4, num_channels=3, num_labels=C, **small)
        return t.ViTForImageClassification, cfg
    cfg = t.LlamaConfig(vocab_size=V, num_key_value_heads=1, max_position_embeddings=16, **small)  # grouped-query
    return t.LlamaForCausalLM, cfg


def build(name, path, dtype=torch.float32, twin=False):
    """(model as loaded with the default attention, its eager twin or None): same weights, ``dtype``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if name == "mha":
            m = MHAClassifier()
            e = MHAClassifier(need_weights=True)
            e.load_state_dict(m.state_dict())
            return m.to(dtype).eval(), (e.to(dtype).eval().requires_grad_(False) if twin else None)
        cls, cfg = hf_config(name)
        cls(cfg).save_pretrained(path)
    m = cls.from_pretrained(path).to(dtype)
    assert m.config._attn_implementation == "sdpa"
    eager = cls.from_pretrained(path, attn_implementation="eager").to(dtype).requires_grad_(False) if twin else None
    return m, eager


def batch(name, dtype=torch.float32):
    """(inputs dict, targets): padded token ids (two samples padded) or images, with their labels."""
    g = torch.Generator().manual_seed(1)
    if name == "vit":
        images = torch.randn(N, 3, 8, 8, generator=g, dtype=dtype)
        return {"pixel_values": images}, torch.randint(0, C, (N,), generator=g)
    ids, mask = torch.randint(3, V, (N, T), generator=g), torch.ones(N, T, dtype=torch.long)
    mask[2, 5:] = 0
    mask[4, 6:] = 0
    if name in ("gpt2", "llama"):
        return {"input_ids": ids, "attention_mask": mask}, ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask}, torch.randint(0, C, (N,), generator=g)


LOSS = {"bert": class_ce, "gpt2": token_ce, "vit": class_ce, "llama": token_ce, "mha": nn.CrossEntropyLoss()}
#: small parameter subsets through the attention (query side and the norms feeding q, k, v), in parameters() order
SUBSET = {
    "bert": ["bert.embeddings.LayerNorm.weight", "bert.encoder.layer.0.attention.self.query.bias"],
    "gpt2": ["transformer.h.0.ln_1.weight", "transformer.h.0.attn.c_attn.bias"],
    "vit": ["vit.layers.0.attention.q_proj.bias", "vit.layers.0.layernorm_before.weight"],
    "llama": ["model.layers.0.input_layernorm.weight", "model.layers.0.post_attention_layernorm.weight"],
    "mha": ["attn.in_proj_bias", "norm.weight"],
}
LAYERS = {
    "bert": ["bert.embeddings.word_embeddings", "bert.embeddings.position_embeddings",
             "bert.embeddings.token_type_embeddings", "bert.embeddings.LayerNorm", "bert.encoder.layer.0",
             "bert.pooler.dense", "classifier"],
    "gpt2": ["transformer.wte", "transformer.wpe", "transformer.h.0", "transformer.ln_f"],
    "vit": ["vit.embeddings", "vit.embeddings.patch_embeddings.projection", "vit.layers.0", "vit.layernorm",
            "classifier"],
    "llama": ["model.embed_tokens", "model.layers.0", "model.norm", "lm_head"],
    "mha": ["emb", "attn", "attn.out_proj", "norm", "head"],
}  # fmt: skip
MODELS = list(SUBSET)
#: HF's eager ViT and LLaMA attention take the softmax in float32 even for float64 models
EAGER_RTOL = {"vit": 1e-6, "llama": 1e-6}


def quiet(fn, *args, fallback=False, **kw):
    """``fn(...)`` with progress off; unconverged-eigenvalue warnings (small max_hvp) ignored, and, unless
    ``fallback``, no fallback from torch.func to double backward (the fast engine works on these models)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn(*args, progress=False, **kw)
    fell_back = [str(w.message) for w in caught if "torch.func products failed" in str(w.message)]
    assert fallback or not fell_back, fell_back
    return out


@pytest.mark.parametrize("name", MODELS)
def test_every_curvature_probe_runs_on_an_sdpa_model(name, tmp_path):
    """Eigenvalues of the Hessian, GGN and empirical Fisher, Hutch++ trace, SLQ density and per-layer spectra of
    the whole float32 model run and are finite; GGN and empirical Fisher (PSD) have no negative Ritz value; the
    blocks partition the parameters and their '(all)' entry repeats the plain call; a loss on a ModelOutput
    cannot be sampled from, so Fisher is a clear error naming curvature."""
    model, _ = build(name, tmp_path)
    lf, data = LOSS[name], batch(name)
    P = sum(p.numel() for p in model.parameters())
    for curvature in ("hessian", "ggn", "empirical_fisher"):
        kw = dict(k=2, max_hvp=6, curvature=curvature, seed=0)
        r = quiet(S.hessian_eigenvalues, model, lf, data, **kw)
        ev = r.eigenvalue.values
        assert len(ev) == 2 and np.all(np.isfinite(ev)) and ev[0] >= ev[1] and ev[0] > 0
        if curvature != "hessian":
            assert ev[1] >= -1e-5 * ev[0]
    tr = quiet(S.hessian_trace, model, lf, data, n_hvp=6, seed=0)
    assert np.isfinite(float(tr)) and np.isfinite(tr.attrs["stderr"]) and tr.attrs["n_hvp"] == 6
    kw = dict(n_runs=1, n_lanczos=4, curvature="ggn", seed=0)
    d = quiet(S.spectral_density, model, lf, data, **kw)
    nodes = np.asarray(d.attrs["slq_nodes"])
    assert np.all(np.isfinite(d.values)) and np.isclose(np.trapezoid(d.values, d.eigenvalue.values), 1, atol=1e-3)
    assert nodes.min() >= -1e-5 * nodes.max()
    b = quiet(S.hessian_eigenvalues, model, lf, data, k=1, max_hvp=3, blocks="layer", seed=0)
    assert list(b.block.values) == ["(all)", *LAYERS[name]]
    assert int(b.n_params[0]) == P == int(b.n_params[1:].sum())
    assert np.all(np.isfinite(b.eigenvalue.values))
    whole = quiet(S.hessian_eigenvalues, model, lf, data, k=1, max_hvp=3, seed=0)
    np.testing.assert_allclose(b.eigenvalue.sel(block="(all)").values, whole.eigenvalue.values, rtol=1e-6)
    if name != "mha":
        for curvature in ("fisher", "mc_fisher"):
            with pytest.raises(ValueError, match=f"curvature: '{curvature}' needs the loss"):
                S.hessian_eigenvalues(model, lf, data, k=1, max_hvp=3, curvature=curvature, progress=False)


def subset_fn(model, names, inputs):
    """``theta -> model(theta on the named parameters)`` with the flat subset vector theta and its value."""
    params = dict(model.named_parameters())
    shapes = [params[n].shape for n in names]
    theta0 = torch.cat([params[n].detach().reshape(-1) for n in names])

    def f(theta):
        parts = torch.split(theta, [s.numel() for s in shapes])
        return functional_call(model, {n: p.reshape(s) for n, p, s in zip(names, parts, shapes)}, (), dict(inputs))

    return f, theta0


def logits_of(out):
    return out if isinstance(out, torch.Tensor) else out.logits


@pytest.mark.parametrize("name", MODELS)
def test_sdpa_curvature_equals_the_eager_twins_ground_truth(name, tmp_path):
    """float64: the Hessian, GGN and (classifiers) empirical Fisher on a parameter subset through the attention,
    computed by workbench on the sdpa model, equal those of the eager twin computed by torch.func directly:
    ``H = d^2 L / d theta^2``, ``G = J^T (d^2 L / d z^2) J`` (J the Jacobian of the logits z), ``EF = (1/N)
    sum_i g_i g_i^T``; the top eigenvalue by Lanczos equals the eager Hessian's. G differs from H (a real test)."""
    model, eager = build(name, tmp_path, torch.float64, twin=True)
    lf, (x, y) = LOSS[name], batch(name, torch.float64)
    names = SUBSET[name]
    f, theta0 = subset_fn(eager, names, x)
    # jacrev(grad(.)), not torch.func.hessian: in torch 2.13, hessian and jacrev(jacrev(.)) differentiate
    # layer_norm's weight gradient wrong (asymmetric, O(1) off: the MHA subset here hits it); jacrev(grad) is exact
    with sdpa_kernel(SDPBackend.MATH):  # the eager twins call no sdpa; the math kernel in case a library does
        H = jacrev(grad(lambda th: lf(f(th), y)))(theta0)
        z = logits_of(f(theta0)).detach()
        J = torch.autograd.functional.jacobian(lambda th: logits_of(f(th)), theta0, vectorize=True)
        J = J.reshape(-1, theta0.numel())
        rebuild = (lambda z: z) if name == "mha" else (lambda z: SimpleNamespace(logits=z))
        Hz = jacrev(grad(lambda z: lf(rebuild(z), y)))(z).reshape(z.numel(), z.numel())
    assert torch.allclose(H, H.T, rtol=0, atol=EAGER_RTOL.get(name, 1e-9) * H.abs().max())
    G = (J.T @ Hz @ J).numpy()
    H = H.numpy()
    scale = np.abs(H).max()
    rel = EAGER_RTOL.get(name, 1e-9)
    assert np.abs(G - H).max() > 1e-3 * scale  # the subset is not linear in the logits: GGN != Hessian
    kw = dict(params=names)
    Hw = quiet(S.exact_hessian, model, lf, (x, y), **kw).values
    np.testing.assert_allclose(Hw, H, rtol=0, atol=rel * scale)
    Gw = quiet(S.exact_hessian, model, lf, (x, y), curvature="ggn", **kw).values
    np.testing.assert_allclose(Gw, G, rtol=0, atol=rel * np.abs(G).max())
    top = quiet(S.hessian_eigenvalues, model, lf, (x, y), k=1, tol=1e-8, seed=0, **kw).eigenvalue.values
    np.testing.assert_allclose(top, np.linalg.eigvalsh(H)[-1:], rtol=max(rel, 1e-7))
    if name in ("bert", "vit", "mha"):  # the loss is a mean of per-sample losses

        def sample_loss(th, i):
            return lf(rebuild(logits_of(f(th))[i : i + 1]), y[i : i + 1])

        grads = torch.stack([grad(sample_loss)(theta0, i) for i in range(N)])
        EF = (grads.T @ grads / N).numpy()
        EFw = quiet(S.exact_hessian, model, lf, (x, y), curvature="empirical_fisher", **kw).values
        np.testing.assert_allclose(EFw, EF, rtol=0, atol=rel * np.abs(EF).max())


@pytest.mark.parametrize("name", ["bert", "vit", "mha"])
def test_fisher_equals_ggn_on_a_logits_model(name, tmp_path):
    """With a model returning its logits and nn.CrossEntropyLoss, the Fisher (closed form) equals the GGN on a
    subset through the attention (Martens 2020, softmax cross-entropy), and the MC Fisher with many labels is
    close to it."""
    model, _ = build(name, tmp_path, torch.float64)
    model = model if name == "mha" else Logits(model)
    names = SUBSET[name] if name == "mha" else ["hf." + n for n in SUBSET[name]]
    lf, data = nn.CrossEntropyLoss(), batch(name, torch.float64)
    kw = dict(params=names)
    G = quiet(S.exact_hessian, model, lf, data, curvature="ggn", **kw).values
    Fi = quiet(S.exact_hessian, model, lf, data, curvature="fisher", **kw).values
    np.testing.assert_allclose(Fi, G, rtol=0, atol=1e-10 * np.abs(G).max())
    mc = quiet(S.exact_hessian, model, lf, data, curvature="mc_fisher", mc_samples=2000, seed=0, **kw).values
    assert np.abs(np.trace(mc) / np.trace(G) - 1) < 0.1


def test_output_curvature_of_multihead_attention_keeps_the_func_engine():
    """The GGN of nn.MultiheadAttention by the vectorised func engine (forward-mode J v), without fallback: the
    products switch MHA's fused inference path off (it has no forward-mode derivative) and back on."""
    assert torch.backends.mha.get_fastpath_enabled()
    torch.manual_seed(0)
    model, lf, data = MHAClassifier().eval(), nn.CrossEntropyLoss(), batch("mha")
    r = S.hessian_eigenvalues(model, lf, data, k=1, max_hvp=3, curvature="ggn", engine="func", progress=False)
    assert np.isfinite(r.eigenvalue.values).all() and torch.backends.mha.get_fastpath_enabled()


def sdpa_flags():
    b = torch.backends.cuda
    return (b.flash_sdp_enabled(), b.math_sdp_enabled(), b.mem_efficient_sdp_enabled(), b.cudnn_sdp_enabled())


FLASH_ONLY, MATH_ONLY = (True, False, False, False), (False, True, False, False)


class Recording(MHAClassifier):
    """Records the sdpa backend flags each forward pass runs under; raises in a math-only forward when told."""

    def __init__(self):
        super().__init__()
        self.seen, self.fail_on_math = [], False

    def forward(self, input_ids, attention_mask):
        self.seen.append(sdpa_flags())
        if self.fail_on_math and sdpa_flags() == MATH_ONLY:
            raise RuntimeError("boom in a second-order forward")
        return super().forward(input_ids, attention_mask)


def test_second_order_probes_use_math_attention_and_restore_the_callers_backend():
    """Under the caller's ``sdpa_kernel(FLASH_ATTENTION)`` (the fused CPU kernel only): second-order probes run
    their products with the math kernel only and put the flash-only flags back, also when the model raises
    inside a product; first-order probes (SAM, gradient norm, a 1-D slice) run every forward pass under the
    caller's flash-only flags, so they keep the fused kernel."""
    torch.manual_seed(0)
    model, lf, data = Recording().eval(), nn.CrossEntropyLoss(), batch("mha")
    default = sdpa_flags()
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        assert sdpa_flags() == FLASH_ONLY
        for probe, kw in [
            (S.hessian_eigenvalues, dict(k=1, max_hvp=3)),
            (S.hessian_eigenvalues, dict(k=1, max_hvp=3, curvature="ggn")),
            (S.hessian_trace, dict(n_hvp=4, curvature="empirical_fisher")),
            (S.spectral_density, dict(n_runs=1, n_lanczos=3, curvature="fisher")),
            (S.exact_hessian, dict(params=["head.bias"])),
        ]:
            model.seen.clear()
            quiet(probe, model, lf, data, **kw)
            assert MATH_ONLY in model.seen and set(model.seen) <= {MATH_ONLY, FLASH_ONLY}, probe.__name__
            assert sdpa_flags() == FLASH_ONLY, probe.__name__
        for probe, kw in [
            (S.sam_sharpness, dict(rho=0.05)),
            (S.gradient_norm, {}),
            (slice_1d, dict(steps=3, seeds=[0])),
        ]:
            model.seen.clear()
            quiet(probe, model, lf, data, **kw)
            assert model.seen and set(model.seen) == {FLASH_ONLY}, probe.__name__
            assert sdpa_flags() == FLASH_ONLY
        model.fail_on_math = True
        with pytest.raises(RuntimeError, match="boom in a second-order forward"):
            S.hessian_eigenvalues(model, lf, data, k=1, max_hvp=3, engine="func", progress=False)
        assert sdpa_flags() == FLASH_ONLY
    assert sdpa_flags() == default
