"""Run directories: checkpoints ordered by step and stacked along ``step`` by the over-checkpoint probes."""

import pytest
import torch

from workbench import attention, sharpness, tasks
from workbench.runs import load_run, run_checkpoints

transformers = pytest.importorskip("transformers")


def hf_run(tmp_path, steps=(100, 5, 20)):
    """A tiny BERT classifier saved as Trainer-style checkpoint-<step> folders, each with other weights."""
    cfg = transformers.BertConfig(
        vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=16, num_labels=2,
    )  # fmt: skip
    run = tmp_path / "run"
    for i, s in enumerate(steps):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(i)
            transformers.BertForSequenceClassification(cfg).save_pretrained(run / f"checkpoint-{s}")
    (run / "trainer_state.json").write_text("{}")
    return run


def test_checkpoints_are_ordered_by_step_and_strays_are_left_out(tmp_path):
    run = hf_run(tmp_path)
    (run / "checkpoint-7").mkdir()  # no config.json: not a checkpoint
    assert list(run_checkpoints(run)) == [5, 20, 100]
    models = load_run(run)
    assert list(models) == [5, 20, 100] and all(not m.training for m in models.values())
    w = [m.classifier.weight.detach().clone() for m in models.values()]
    assert not torch.equal(w[0], w[1])


def test_state_dict_runs_need_their_builder_and_duplicates_are_refused(tmp_path):
    for s in (300, 20):
        torch.save(torch.nn.Linear(2, 1).state_dict(), tmp_path / f"step_{s}.pt")
    assert list(load_run(tmp_path, builder=lambda: torch.nn.Linear(2, 1))) == [20, 300]
    with pytest.raises(ValueError, match="builder"):
        load_run(tmp_path)
    torch.save(torch.nn.Linear(2, 1).state_dict(), tmp_path / "model-20.pth")
    with pytest.raises(ValueError, match="run_dir: two checkpoints for step 20"):
        run_checkpoints(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="run_dir: no checkpoint in"):
        run_checkpoints(tmp_path / "empty")


def test_probes_take_a_run_directory_and_stack_along_step(tmp_path):
    run = hf_run(tmp_path)
    ids = torch.tensor([[2, 5, 7, 9, 3], [2, 6, 8, 3, 0]])
    inputs = {"input_ids": ids, "attention_mask": (ids != 0).long()}
    by_dir = attention.over_checkpoints(str(run), inputs, progress=False)
    by_dict = attention.over_checkpoints(load_run(run), inputs, dim="step", progress=False)
    assert by_dir.step.values.tolist() == [5, 20, 100]
    torch.testing.assert_close(torch.as_tensor(by_dir.entropy.values), torch.as_tensor(by_dict.entropy.values))
    data = tasks.classification.batches({"input_ids": ids.tolist(), "labels": [0, 1]}, batch_size=2)
    s = sharpness.summary(run, tasks.classification, data, k=1, n_hvp=4, n_draws=2, params="classifier",
                          progress=False)  # fmt: skip
    assert s.step.values.tolist() == [5, 20, 100] and s.lambda_max.dims == ("step",)
    assert len(set(s.loss.values.tolist())) == 3  # three different checkpoints
