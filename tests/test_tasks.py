"""Task adapters (workbench.tasks) against Hugging Face's own losses: tiny random GPT-2, LLaMA and BERT models built
from configs, saved to a temporary directory with a word-level tokenizer built offline, loaded back with
``local_files_only``. The causal-LM, masked-LM, classification and regression losses of padded batches equal
``model(**inputs, labels=labels).loss``; probes of each family run with a task; over batches of different token
counts, ``evaluate`` gives the mean over all counted tokens, computed by hand."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import workbench
from workbench import tasks
from workbench.curvature import hessian_trace
from workbench.landscape import slice_1d
from workbench.sharpness import sam_sharpness

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

WORDS = "the a cat dog sat ran on under mat log big small red blue and then it was very quiet".split()
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TEXTS = [
    "the cat sat on the mat",
    "a dog ran",
    "the big red dog sat under a small blue log and then it was quiet",
    "it was very quiet",
    "the cat ran on the log then sat",
    "a small cat",
    "the dog and the cat sat on a big mat",
]


def make_tokenizer():
    vocab = {w: i for i, w in enumerate(SPECIAL + WORDS)}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_max_length=16,
    )  # fmt: skip


V = len(SPECIAL) + len(WORDS)
SMALL = dict(num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, hidden_size=16)


def build(name, path, **kw):
    """A tiny random model of ``name`` saved with the tokenizer to ``path`` and loaded back from it."""
    t = transformers
    if name == "gpt2":
        cls, cfg = t.GPT2LMHeadModel, t.GPT2Config(vocab_size=V, n_embd=16, n_layer=1, n_head=2, n_positions=32)
    elif name == "llama":
        cls, cfg = t.LlamaForCausalLM, t.LlamaConfig(vocab_size=V, num_key_value_heads=1, **SMALL)
    elif name == "bert-mlm":
        cls, cfg = t.BertForMaskedLM, t.BertConfig(vocab_size=V, max_position_embeddings=32, **SMALL)
    else:
        cls, cfg = (
            t.BertForSequenceClassification,
            t.BertConfig(vocab_size=V, max_position_embeddings=32, **SMALL, **kw),
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        cls(cfg).save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return cls.from_pretrained(path, local_files_only=True).eval()


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_causal_lm_loss_equals_hf_labels_loss_on_padded_batches(name, tmp_path):
    """Per batch, the task's loss (logits shifted, padding -100) is HF's own ``labels=`` loss to 1e-6; padding is
    really there, carries -100 and is excluded; unshifted or padding-counting variants differ."""
    model = build(name, tmp_path)
    batches = tasks.causal_lm.batches(TEXTS, tmp_path, batch_size=3)  # the tokenizer from the model's directory
    assert [len(y["labels"]) for _, y in batches] == [3, 3, 1]
    x, y = batches[0]
    assert set(x) == {"input_ids", "attention_mask"} and bool((x["attention_mask"] == 0).any())
    assert bool((y["labels"][x["attention_mask"] == 0] == -100).all())
    assert torch.equal(y["labels"][x["attention_mask"] == 1], x["input_ids"][x["attention_mask"] == 1])
    for x, y in batches:
        with torch.no_grad():
            out = model(**x)
            ref = float(model(**x, labels=y["labels"]).loss)
            mine = float(tasks.causal_lm.loss_fn(out, y["labels"]))
            assert abs(mine - ref) <= 1e-6 * max(1.0, abs(ref))
            assert float(tasks.causal_lm(out.logits, y["labels"])) == pytest.approx(ref, rel=1e-6)  # a plain tensor
    x, y = batches[0]
    with torch.no_grad():
        logits = model(**x).logits
        ref = float(model(**x, labels=y["labels"]).loss)
    unshifted = F.cross_entropy(logits.reshape(-1, V), y["labels"].reshape(-1), ignore_index=-100)
    padded = F.cross_entropy(logits[:, :-1].reshape(-1, V), x["input_ids"][:, 1:].reshape(-1))
    assert abs(float(unshifted) - ref) > 1e-3 and abs(float(padded) - ref) > 1e-3


def test_masked_lm_loss_equals_hf_and_masks_like_bert(tmp_path):
    model = build("bert-mlm", tmp_path)
    tok = make_tokenizer()
    batches = tasks.masked_lm.batches(TEXTS, tok, batch_size=4, seed=3)
    again = tasks.masked_lm.batches(TEXTS, tok, batch_size=4, seed=3)
    for (x, y), (x2, y2) in zip(batches, again):  # seeded: the same masks
        assert torch.equal(x["input_ids"], x2["input_ids"]) and torch.equal(y["labels"], y2["labels"])
        counted = y["labels"] != -100
        assert bool(counted.any(1).all())  # at least one masked token per sequence
        assert not bool((counted & (x["attention_mask"] == 0)).any())  # never padding
        assert int((x["input_ids"][counted] == tok.mask_token_id).sum()) >= 1
        with torch.no_grad():
            ref = float(model(**x, labels=y["labels"]).loss)
            mine = float(tasks.masked_lm.loss_fn(model(**x), y["labels"]))
        assert abs(mine - ref) <= 1e-6 * max(1.0, abs(ref))
    assert not torch.equal(batches[0][1]["labels"], tasks.masked_lm.batches(TEXTS, tok, batch_size=4)[0][1]["labels"])


def test_classification_and_regression_losses_equal_hf(tmp_path):
    labels = [0, 2, 1, 1, 0, 2, 1]
    model = build("cls", tmp_path / "c", num_labels=3)
    batches = tasks.classification.batches((TEXTS, labels), tmp_path / "c", batch_size=3)
    assert [b[1].tolist() for b in batches] == [[0, 2, 1], [1, 0, 2], [1]]
    for x, y in batches:
        with torch.no_grad():
            ref = float(model(**x, labels=y).loss)
            assert float(tasks.classification.loss_fn(model(**x), y)) == pytest.approx(ref, rel=1e-6)
    targets = [0.5, -1.0, 2.0, 0.0, 1.5, 3.0, -0.5]
    model = build("reg", tmp_path / "r", num_labels=1, problem_type="regression")
    batches = tasks.regression.batches({"text": TEXTS, "label": targets}, make_tokenizer(), batch_size=4)
    assert batches[0][1].dtype == torch.float32 and batches[1][1].tolist() == [1.5, 3.0, -0.5]
    for x, y in batches:
        with torch.no_grad():
            ref = float(model(**x, labels=y).loss)
            assert float(tasks.regression.loss_fn(model(**x), y)) == pytest.approx(ref, rel=1e-6)


def test_evaluate_is_the_mean_over_all_counted_tokens(tmp_path):
    """Two batches of different token counts per sequence: evaluate's loss is sum(token losses) / tokens over
    both, by hand, not the sequence-weighted mean of the batch means (which differs here)."""
    model = build("gpt2", tmp_path)
    batches = tasks.causal_lm.batches([TEXTS[2], TEXTS[1], TEXTS[3], TEXTS[5]], tmp_path, batch_size=2)
    sums, counts, means = [], [], []
    with torch.no_grad():
        for x, y in batches:
            logits, labels = model(**x).logits[:, :-1], y["labels"][:, 1:]
            tok = F.cross_entropy(logits.reshape(-1, V), labels.reshape(-1), ignore_index=-100, reduction="sum")
            sums.append(float(tok))
            counts.append(int((labels != -100).sum()))
            means.append(float(model(**x, labels=y["labels"]).loss))
    assert counts == [14 + 2, 3 + 2]  # 15 + 3 words, then 4 + 3: every sequence loses its first token
    by_hand = sum(sums) / sum(counts)
    r = workbench.evaluate(model, tasks.causal_lm.loss_fn, batches, progress=False)
    assert float(r.loss) == pytest.approx(by_hand, rel=1e-6)
    assert abs(by_hand - np.mean(means)) > 1e-3  # sequence weighting would be wrong here
    params = ["transformer.h.0.ln_1.weight", "transformer.h.0.attn.c_attn.bias"]
    obj = workbench.Objective(model, tasks.causal_lm.loss_fn, batches, params=params)
    value, g = obj.loss_and_grad()
    theta = obj.theta0.clone().requires_grad_(True)
    total = sum(  # the token sum over both batches, differentiated by hand
        F.cross_entropy(
            obj.call(x, {**obj.base(), **obj.space.unflatten(theta)}).logits[:, :-1].reshape(-1, V),
            y["labels"][:, 1:].reshape(-1), ignore_index=-100, reduction="sum",
        )
        for x, y in batches
    )  # fmt: skip
    (want,) = torch.autograd.grad(total / sum(counts), theta)
    assert value == pytest.approx(by_hand, rel=1e-6)
    torch.testing.assert_close(g, want, rtol=1e-5, atol=1e-7)
    for (x, y), s in zip(batches, sums):  # each batch's loss times its sequences sums to the token total
        assert float(tasks.causal_lm.loss_fn(model(**x), y).detach()) * len(y["labels"]) / 4 == pytest.approx(
            s / sum(counts)
        )


@pytest.mark.parametrize("name", ["gpt2", "llama", "bert-mlm", "cls"])
def test_probes_of_each_family_run_with_a_task(name, tmp_path):
    kw = {"num_labels": 3} if name == "cls" else {}
    model = build(name, tmp_path, **kw)
    task = {"gpt2": tasks.causal_lm, "llama": tasks.causal_lm, "bert-mlm": tasks.masked_lm}.get(
        name, tasks.classification
    )
    data = (TEXTS[:5], [0, 1, 2, 1, 0]) if name == "cls" else TEXTS[:5]
    batches = task.batches(data, model, batch_size=3)  # the tokenizer of the model's own directory
    lf = task.loss_fn
    ev = workbench.evaluate(model, lf, batches, progress=False)
    assert math.isfinite(float(ev.loss)) and float(ev.loss) > 0
    params = [n for n, p in model.named_parameters() if p.dim() == 2][-2:]  # a small subset
    for curvature in ("hessian", "ggn", "empirical_fisher"):
        tr = hessian_trace(model, lf, batches, n_hvp=4, params=params, curvature=curvature, progress=False)
        assert math.isfinite(float(tr)) and (curvature == "hessian" or float(tr) > 0)
    s = slice_1d(model, lf, batches, steps=5, params=params, progress=False)
    assert np.all(np.isfinite(s.loss.values)) and float(s.loss.sel(alpha=0)) == pytest.approx(float(ev.loss))
    sam = sam_sharpness(model, lf, batches, params=params, progress=False)
    assert np.all(np.isfinite(np.asarray(sam)))


class TinyLM(nn.Module):
    """A plain module: token ids to next-token logits (a tensor, no ModelOutput)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(V, 8)
        self.head = nn.Linear(8, V)

    def forward(self, input_ids, attention_mask):
        return self.head(torch.tanh(self.emb(input_ids)))


def test_plain_modules_and_every_data_form(tmp_path):
    """A plain module with tensor outputs; texts, a tokenized mapping, a list of examples, already padded batches
    and a Dataset-like object (column_names, columns by name) give the same batches."""
    tok = make_tokenizer()
    torch.manual_seed(0)
    lm = TinyLM()
    ref = tasks.causal_lm.batches(TEXTS, tok, batch_size=4)
    enc = tok(TEXTS)
    rows = [{"input_ids": i, "attention_mask": m} for i, m in zip(enc["input_ids"], enc["attention_mask"])]
    padded = [{k: v for k, v in x.items()} for x, _ in ref]

    class FakeDataset:  # the part of datasets.Dataset that batches uses
        column_names = ["text", "id"]

        def __getitem__(self, c):
            return TEXTS if c == "text" else list(range(len(TEXTS)))

    for other in (
        tasks.causal_lm.batches(dict(enc), batch_size=4),
        tasks.causal_lm.batches(rows, batch_size=4),
        tasks.causal_lm.batches(padded),
        tasks.causal_lm.batches(FakeDataset(), tok, batch_size=4),
    ):
        assert len(other) == 2
        for (x, y), (x2, y2) in zip(ref, other):
            assert torch.equal(x["input_ids"], x2["input_ids"]) and torch.equal(y["labels"], y2["labels"])
            assert torch.equal(y["total_tokens"], y2["total_tokens"])
    ragged = [{"input_ids": [[5, 6, 7], [8]]}, {"input_ids": [[9, 10]]}]  # unpadded batches, kept as batched
    got = tasks.causal_lm.batches(ragged)
    assert [x["input_ids"].tolist() for x, _ in got] == [[[5, 6, 7], [8, 0, 0]], [[9, 10]]]
    assert got[0][1]["labels"].tolist() == [[5, 6, 7], [8, -100, -100]] and got[1][1]["total_tokens"].tolist() == [3]
    own = {"input_ids": [[5, 6, 7], [8]], "labels": [[-100, 6, -100], [8]]}  # a masked LM's own labels
    ((x, y),) = tasks.masked_lm.batches(own)
    assert y["labels"].tolist() == [[-100, 6, -100], [8, -100, -100]] and x["input_ids"].tolist()[1] == [8, 0, 0]
    examples = [{"text": t, "label": i % 3} for i, t in enumerate(TEXTS)]
    ((x, y),) = tasks.classification.batches(examples, tok)
    assert y.tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert torch.equal(x["input_ids"], tok(TEXTS, padding=True, return_tensors="pt")["input_ids"])
    r = workbench.evaluate(lm, tasks.causal_lm, ref, progress=False)
    with torch.no_grad():
        logits = torch.cat([lm(**x)[:, :-1].reshape(-1, V) for x, _ in ref])
        labels = torch.cat([y["labels"][:, 1:].reshape(-1) for _, y in ref])
    assert float(r.loss) == pytest.approx(float(F.cross_entropy(logits, labels, ignore_index=-100)), rel=1e-6)
    clf = nn.Sequential(nn.Linear(4, 3))
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    r = workbench.evaluate(clf, tasks.classification.loss_fn, (x, y), progress=False)
    assert float(r.loss) == pytest.approx(float(F.cross_entropy(clf(x), y).detach()), rel=1e-6)


def test_real_datasets_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"text": TEXTS, "label": [0, 1, 2, 0, 1, 2, 0]})
    tok = make_tokenizer()
    got = tasks.classification.batches(ds, tok, batch_size=4)
    ref = tasks.classification.batches((TEXTS, [0, 1, 2, 0, 1, 2, 0]), tok, batch_size=4)
    for (x, y), (x2, y2) in zip(got, ref):
        assert torch.equal(x["input_ids"], x2["input_ids"]) and torch.equal(y, y2)


def test_clear_errors(tmp_path):
    tok = make_tokenizer()
    with pytest.raises(ValueError, match="tokenizer: texts need a tokenizer"):
        tasks.causal_lm.batches(TEXTS)
    with pytest.raises(ValueError, match="tokenizer: 'gpt2' is not a local directory; workbench never downloads"):
        tasks.causal_lm.batches(TEXTS, "gpt2")
    with pytest.raises(ValueError, match="tokenizer: the model was not loaded from a local directory"):
        tasks.causal_lm.batches(TEXTS, TinyLM())
    with pytest.raises(ValueError, match="tokenizer: no tokenizer could be loaded"):
        tasks.causal_lm.batches(TEXTS, tmp_path)
    with pytest.raises(ValueError, match="data: the classification task needs one label per sequence"):
        tasks.classification.batches(TEXTS, tok)
    with pytest.raises(ValueError, match="data: 7 sequences but 2 labels"):
        tasks.classification.batches((TEXTS, [0, 1]), tok)
    with pytest.raises(ValueError, match="tokenizer: masking for the masked_lm task needs"):
        tasks.masked_lm.batches({"input_ids": [[5, 6, 7]]})
    with pytest.raises(TypeError, match="data: expected a list of texts"):
        tasks.causal_lm.batches(42, tok)
    with pytest.raises(ValueError, match="batch_size: expected a positive int"):
        tasks.causal_lm.batches(TEXTS, tok, batch_size=0)
    with pytest.raises(ValueError, match="data: no counted tokens"):
        tasks.causal_lm.batches({"input_ids": [[5], [6]]})
    with pytest.raises(ValueError, match="data: the column 'labels' holds one value per sequence"):
        tasks.causal_lm.batches({"text": TEXTS, "labels": list(range(7))}, tok)
    with pytest.raises(ValueError, match=r"data: per-token labels of shape \(1, 2\) do not match input_ids"):
        tasks.causal_lm.batches({"input_ids": [[5, 6, 7]], "labels": [[5, 6]]})
    assert len(tasks.causal_lm.batches({"text": TEXTS, "label": list(range(7))}, tok)) == 1  # a class column: unused
    with pytest.raises(ValueError, match="data: 'input_ids' must hold one sequence of token ids per row"):
        tasks.causal_lm.batches({"input_ids": [5, 6, 7]})
    with pytest.raises(ValueError, match="task: unknown task 'lm'"):
        tasks.get("lm")
    with pytest.raises(TypeError, match="loss_fn: cannot find logits"):
        tasks.causal_lm.loss_fn(object(), torch.zeros(1, 2, dtype=torch.long))
    assert tasks.get("masked-lm") is tasks.masked_lm and tasks.get(tasks.regression) is tasks.regression
    assert repr(tasks.causal_lm) == "workbench.tasks.causal_lm"
