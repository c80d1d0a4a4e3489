"""Probes take a task in place of the loss: ``probe(hf_model, task="causal-lm", data=texts)`` (or the task's
name / object as ``loss_fn``) tokenizes with the model's own tokenizer and gives the same numbers as the explicit
``(model, task.loss_fn, task.batches(texts, model))``."""

import pytest
import torch

import workbench as wb
from workbench import tasks
from workbench.curvature import hessian_trace

pytest.importorskip("transformers")
from test_tasks import TEXTS, build  # noqa: E402


def test_a_probe_takes_a_task_name_and_texts(tmp_path):
    model = build("gpt2", tmp_path)
    explicit = wb.evaluate(model, tasks.causal_lm, tasks.causal_lm.batches(TEXTS, model))
    by_name = wb.evaluate(model, task="causal-lm", data=TEXTS)
    positional = wb.evaluate(model, "causal_lm", TEXTS)
    assert float(by_name.loss) == float(explicit.loss) == float(positional.loss)
    # by hand: the mean of HF's own per-token cross-entropy over every predicted (non-padding) token
    enc = tasks.causal_lm.batches(TEXTS, model, batch_size=len(TEXTS))
    (x, y) = enc[0]
    with torch.no_grad():
        logits = model(**x).logits[:, :-1]
    labels = y["labels"][:, 1:]
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="sum")
    assert float(by_name.loss) == pytest.approx(float(ce) / int(labels.ne(-100).sum()), rel=1e-6)


def test_a_curvature_probe_with_a_task_and_tokenized_data(tmp_path):
    model = build("gpt2", tmp_path)
    data = {"input_ids": [[5, 6, 7, 8], [9, 10, 11]]}
    kw = dict(n_hvp=6, params="ln_f", progress=False)
    a = hessian_trace(model, task=tasks.causal_lm, data=data, **kw)
    b = hessian_trace(model, tasks.causal_lm, tasks.causal_lm.batches(data), **kw)
    assert float(a) == float(b) and float(a) != 0.0


def test_an_unknown_task_name_is_a_loss_fn_error(tmp_path):
    model = build("gpt2", tmp_path)
    with pytest.raises(ValueError, match=r"loss_fn: 'causal' is neither a callable loss_fn\(outputs, targets\) nor"):
        wb.evaluate(model, "causal", TEXTS)


def test_task_and_loss_fn_together_are_refused_by_name(tmp_path):
    model = build("gpt2", tmp_path)
    with pytest.raises(TypeError, match="task: evaluate got both task= and loss_fn"):
        wb.evaluate(model, tasks.causal_lm, task="causal-lm", data=TEXTS)
