import pytest
import torch

from workbench.state import diff_state, preserve, snapshot
from workbench.testing import hostile_model


def test_diff_state_detects_every_kind_of_change():
    m = hostile_model()
    s = snapshot(m)
    assert diff_state(s, m) == []
    with torch.no_grad():
        m.fc1.weight[0, 0] += 1e-7
    m.bn.running_mean[0] += 1
    m.head.weight.requires_grad_(False)
    m.fc1.weight.grad = None
    m.drop.train()
    d = " | ".join(diff_state(s, m))
    for what in [
        "values changed",
        "buffer BatchNorm1d.running_mean",
        "requires_grad",
        ".grad presence",
        "Dropout.training",
    ]:
        assert what in d


def test_bitwise_includes_negative_zero_and_nan_payload():
    m = torch.nn.Linear(2, 1)
    with torch.no_grad():
        m.bias.fill_(0.0)
    s = snapshot(m)
    with torch.no_grad():
        m.bias.fill_(-0.0)  # equal as numbers, different bits
    assert diff_state(s, m)


@pytest.mark.parametrize("exc", [RuntimeError("planted"), KeyboardInterrupt()])
def test_preserve_restores_after_raise_and_interrupt(exc):
    m = hostile_model()
    s = snapshot(m)
    grad_obj = m.fc1.weight.grad
    with pytest.raises(type(exc)):
        with preserve(m):
            m.eval()
            with torch.no_grad():
                for p in m.parameters():
                    p.mul_(3)
            m.bn.running_var.zero_()
            m.fc1.weight.grad.add_(1)
            m.head.bias.grad = None
            m.fc1.requires_grad_(False)
            m(torch.randn(4, 8))
            raise exc
    assert diff_state(s, m) == []
    assert m.fc1.weight.grad is grad_obj  # the same .grad tensor object, not a copy


def test_large_models_are_verified_by_version_counters_not_copied(monkeypatch):
    from workbench.state import ModelModifiedError

    monkeypatch.setenv("WORKBENCH_SNAPSHOT_MB", "0")
    m = hostile_model()
    s = snapshot(m)
    assert not s.copied
    assert all(entry[3] is None for entry in s.params)
    with preserve(m):  # untouched: nothing to restore, flags still restored
        m.eval()
    assert m.training and diff_state(s, m) == []
    with pytest.raises(ModelModifiedError, match="fc1.weight"):
        with preserve(m):
            with torch.no_grad():
                m.fc1.weight.mul_(2)
    assert m.training


def test_version_counters_skip_the_bitwise_compare():
    m = hostile_model()
    s = snapshot(m)
    assert diff_state(s, m) == []
    with torch.no_grad():
        m.fc1.weight.add_(0.0)  # bumps the version, values bitwise equal
    assert diff_state(s, m) == []  # falls back to the bitwise compare, which passes
