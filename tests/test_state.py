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
    assert all(saved.value is None for saved, *_ in s.params)
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


def test_the_original_parameter_and_buffer_objects_go_back_into_their_slots():
    m = hostile_model()
    s = snapshot(m)
    weight, bias, mean = m.fc1.weight, m.fc1.bias, m.bn.running_mean
    with pytest.raises(KeyboardInterrupt):
        with preserve(m):
            # what an interrupt in the middle of functional_call's swap leaves behind
            m.fc1._parameters["weight"] = weight.detach() * 2
            del m.fc1._parameters["bias"]
            m.bn._buffers["running_mean"] = torch.zeros(16)
            m.head._parameters["extra"] = torch.nn.Parameter(torch.ones(1))
            raise KeyboardInterrupt
    assert m.fc1._parameters["weight"] is weight and m.fc1.bias is bias and m.bn.running_mean is mean
    assert list(m.fc1._parameters) == ["weight", "bias"] and "extra" not in m.head._parameters
    assert diff_state(s, m) == []


def test_grad_mode_hooks_and_norm_settings_are_restored():
    m = hostile_model()
    s = snapshot(m)
    with pytest.raises(RuntimeError):
        with preserve(m):
            torch.set_grad_enabled(False)
            m.fc1.register_forward_hook(lambda *a: None)
            m.bn.momentum, m.bn.track_running_stats = None, False
            raise RuntimeError("planted")
    assert torch.is_grad_enabled() and not m.fc1._forward_hooks
    assert (m.bn.momentum, m.bn.track_running_stats) == (0.1, True) and diff_state(s, m) == []


def test_a_second_interrupt_during_the_restore_is_held_until_it_is_done(monkeypatch):
    import signal

    from workbench import state

    m = hostile_model()
    s = snapshot(m)
    real = state.restore

    def restore_hit_by_ctrl_c(st):
        signal.raise_signal(signal.SIGINT)  # a real SIGINT while the guard restores
        real(st)

    monkeypatch.setattr(state, "restore", restore_hit_by_ctrl_c)
    with pytest.raises(KeyboardInterrupt) as info:
        with preserve(m):
            m.eval()
            m.fc1._parameters["weight"] = m.fc1.weight.detach().clone()
            raise RuntimeError("the first failure")
    assert diff_state(s, m) == [] and torch.is_grad_enabled()
    assert isinstance(info.value.__context__, RuntimeError)


def test_run_shielded_reruns_after_an_early_interrupt_and_raises_it_after():
    from workbench.state import run_shielded

    calls = []

    def fn():
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt  # as if it arrived before the handler was swapped in
        return "done"

    with pytest.raises(KeyboardInterrupt):
        run_shielded(fn)
    assert len(calls) == 2  # run again from the start, to completion


def test_data_writes_on_large_models_are_caught_without_a_copy(monkeypatch):
    from workbench.state import ModelModifiedError

    monkeypatch.setenv("WORKBENCH_SNAPSHOT_MB", "0")
    m = hostile_model()
    with pytest.raises(ModelModifiedError, match="fc1.weight"):
        with preserve(m):
            m.fc1.weight.data.mul_(2)  # .data: the version counter does not move
    monkeypatch.setenv("WORKBENCH_SNAPSHOT_MB", "0.001")  # 1 KiB: the model (2 KiB) is not copied, its buffers are
    m = hostile_model()
    assert not snapshot(m).copied
    before = m.bn.running_mean.clone()
    with preserve(m):
        m.bn.running_mean.data.add_(1)
    assert torch.equal(m.bn.running_mean, before)


def test_train_mode_never_moves_running_statistics():
    from workbench.state import modes

    m = hostile_model()
    s = snapshot(m)
    objects = [m.bn.running_mean, m.bn.running_var, m.bn.num_batches_tracked]
    x = torch.randn(8, 8)
    with modes(m, "train"):
        torch.manual_seed(1)  # dropout
        out = m(x)
        assert m.bn.training and m.bn.running_mean is not objects[0]
    assert [m.bn.running_mean, m.bn.running_var, m.bn.num_batches_tracked] == objects
    assert diff_state(s, m) == []
    ref = hostile_model()
    ref.train()  # the same numbers as a plain train-mode forward, which moves the statistics
    torch.manual_seed(1)
    assert torch.equal(out, ref(x)) and not torch.equal(ref.bn.running_mean, m.bn.running_mean)


def test_an_interrupt_inside_torch_is_recognised():
    from workbench.validate import interrupt_in

    msg = "The following operation failed in the TorchScript interpreter.\nRuntimeError: KeyboardInterrupt: \n"
    assert isinstance(interrupt_in(RuntimeError(msg)), KeyboardInterrupt)
    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as e:
            raise RuntimeError("wrapped") from e
    except RuntimeError as e:
        assert isinstance(interrupt_in(e), KeyboardInterrupt)
    assert interrupt_in(RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None
