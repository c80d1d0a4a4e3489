"""The training monitor: exact statistics, a training run it does not change, alarms, a store that survives
SIGKILL and resumes, and the Lightning / Hugging Face Trainer integrations (tiny real runs)."""

import math
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import workbench as wb
from workbench.curvature import exact_hessian
from workbench.monitor import AlarmWarning, Monitor, at, every, log_spaced, never
from workbench.monitor.alarms import Alarms
from workbench.monitor.streaming import SharpnessTracker, edge
from workbench.results.store import StepStore, read_store, to_zarr
from workbench.testing import hostile_transformer

F = nn.functional


def _mlp(seed=0, dropout=0.0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Dropout(dropout), nn.Linear(8, 3)).double()


def _data(n=24, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def _train(model, x, y, steps, monitor=None, opt_cls=torch.optim.SGD, **opt_kw):
    opt = opt_cls(model.parameters(), **({"lr": 0.1} | opt_kw))
    model.train()
    alarms = []
    for t in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        if monitor is not None:
            monitor.before_step(model, t)
        opt.step()
        if monitor is not None:
            alarms += monitor.step(model, t, loss=loss, optimizer=opt)
    return opt, alarms


def test_monitored_training_is_bitwise_the_unmonitored_one():
    """Dropout in train mode draws from the global RNG: the monitor (which also runs dropout-free eval
    forwards, Lanczos with its own seeded vectors, attention capture) must not shift the training stream."""
    x, y = _data()
    runs = []
    for monitored in (False, True):
        torch.manual_seed(5)
        m = _mlp(dropout=0.3)
        mon = Monitor(None, F.cross_entropy, (x, y), schedule=every(2)) if monitored else None
        _train(m, x, y, 7, mon, momentum=0.9)
        runs.append(([p.detach().clone() for p in m.parameters()], torch.get_rng_state(), m.training))
    (p0, r0, t0), (p1, r1, t1) = runs
    assert all(torch.equal(a, b) for a, b in zip(p0, p1))
    assert torch.equal(r0, r1) and t0 and t1


def test_statistics_equal_their_formulas():
    x, y = _data()
    m = _mlp()
    mon = Monitor(None, F.cross_entropy, (x, y), schedule=every(1), n_iter=75)  # 75 = P: Lanczos is exact
    init = [p.detach().clone() for p in m.parameters()]
    opt = torch.optim.SGD(m.parameters(), lr=0.2)
    logp_prev = None
    for t in range(3):
        opt.zero_grad()
        loss = F.cross_entropy(m(x), y)
        loss.backward()
        before = [p.detach().clone() for p in m.parameters()]
        mon.before_step(m, t)
        opt.step()
        grads_before = [p.grad.clone() for p in m.parameters()]
        mon.step(m, t, loss=loss, optimizer=opt)
        assert all(torch.equal(p.grad, g) for p, g in zip(m.parameters(), grads_before))  # .grad untouched
        assert m.training and torch.is_grad_enabled()
        row = mon.dataset().sel(step=t)
        grads = [p.grad for p in m.parameters()]
        # layers "0" and "3": weight and bias of each Linear
        g0 = math.sqrt(float(grads[0].pow(2).sum() + grads[1].pow(2).sum()))
        assert row.grad_norm.sel(layer="0").item() == pytest.approx(g0, rel=1e-12)
        w3 = math.sqrt(sum(float(p.detach().pow(2).sum()) for p in list(m.parameters())[2:]))
        assert row.weight_norm.sel(layer="3").item() == pytest.approx(w3, rel=1e-12)
        d3 = math.sqrt(sum(float((p.detach() - b).pow(2).sum()) for p, b in zip(list(m.parameters())[2:], before[2:])))
        assert row.update_ratio.sel(layer="3").item() == pytest.approx(d3 / w3, rel=1e-9)
        dist = math.sqrt(sum(float((p.detach() - i).pow(2).sum()) for p, i in zip(m.parameters(), init)))
        assert row.dist_init.item() == pytest.approx(dist, rel=1e-9)
        with torch.no_grad():
            z = m.eval()(x)
            m.train()
        assert row.log_z.item() == pytest.approx(float(torch.logsumexp(z, -1).mean()), rel=1e-12)
        assert row.logit_norm.item() == pytest.approx(float(z.norm(dim=-1).mean()), rel=1e-12)
        logp = F.log_softmax(z, -1)
        if logp_prev is None:
            assert math.isnan(row.traj_kl.item())
        else:
            kl = float((logp_prev.exp() * (logp_prev - logp)).sum(-1).mean())
            assert row.traj_kl.item() == pytest.approx(kl, rel=1e-9)
        logp_prev = logp
        H = exact_hessian(m, F.cross_entropy, (x, y), progress=False).values
        assert row.lambda_max.item() == pytest.approx(float(np.linalg.eigvalsh(H)[-1]), rel=1e-6)
        assert row.edge.item() == pytest.approx(2 / 0.2) and row.lr.item() == 0.2
        assert row.preconditioned.item() == 0.0
        assert row.loss.item() == pytest.approx(float(loss))


def test_warm_start_tracks_a_slowly_moving_top_eigenvalue_with_few_products():
    """During training the model moves a little between monitored steps: Lanczos started from the previous
    top Ritz vector gets lambda_max to a small error in 3 products, where a cold start of 3 does not."""
    x, y = _data(64)
    m = _mlp(3)
    tr = SharpnessTracker(n_iter=75)
    tr.update(m, F.cross_entropy, (x, y))  # converged once
    opt, _ = _train(m, x, y, 2, None, lr=0.05)  # two training steps later
    H = exact_hessian(m, F.cross_entropy, (x, y), progress=False).values
    top = float(np.linalg.eigvalsh(H)[-1])
    tr.n_iter = 3
    warm = tr.update(m, F.cross_entropy, (x, y))
    cold = SharpnessTracker(n_iter=3).update(m, F.cross_entropy, (x, y))
    assert warm["n_products"] == cold["n_products"] == 3
    assert abs(warm["lambda_max"] - top) < 1e-3 * top < abs(cold["lambda_max"] - top)


def test_adam_preconditioned_sharpness_and_edges():
    x, y = _data()
    m = _mlp(2)
    opt, _ = _train(m, x, y, 3, None, torch.optim.Adam, lr=1e-2)
    r = SharpnessTracker(n_iter=80).update(m, F.cross_entropy, (x, y), opt)
    H = torch.as_tensor(exact_hessian(m, F.cross_entropy, (x, y), progress=False).values)
    b1, b2 = opt.param_groups[0]["betas"]
    P = []
    for p in m.parameters():
        st = opt.state[p]
        t = float(st["step"])
        P.append(((1 - b1**t) * ((st["exp_avg_sq"] / (1 - b2**t)).sqrt() + 1e-8)).reshape(-1))
    s = torch.cat(P).rsqrt()
    want = float(torch.linalg.eigvalsh(s[:, None] * H * s[None, :])[-1])
    assert r["kind"] == "adam-preconditioned" and r["lambda_max"] == pytest.approx(want, rel=1e-6)
    assert r["edge"] == pytest.approx(38 / 1e-2)
    w = torch.zeros(1, requires_grad=True)
    assert edge(torch.optim.SGD([w], lr=0.5))[0] == pytest.approx(4.0)
    assert edge(torch.optim.SGD([w], lr=0.5, momentum=0.5, nesterov=True))[0] == pytest.approx(3 / (2 * 0.5))


def test_edge_of_stability_alarm_fires_once_on_gradient_descent_past_2_over_lr():
    """Full-batch GD on a quadratic 0.5 * a * w^2 with a = 3: lambda_max = 3 >= 2/lr exactly when lr >= 2/3."""
    x = torch.ones(4, 1, dtype=torch.float64)

    def loss_fn(out, y):
        return 1.5 * out.pow(2).mean()  # Hessian in w: 3 x^2 = 3

    seen = []
    for lr, fires in ((0.5, False), (0.7, True)):
        m = nn.Linear(1, 1, bias=False).double()
        opt = torch.optim.SGD(m.parameters(), lr=lr)
        mon = Monitor(None, loss_fn, (x, torch.zeros(4)), schedule=every(1), on_alarm=seen.append)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            for t in range(4):
                opt.zero_grad()
                loss_fn(m(x), None).backward()
                opt.step()
                mon.step(m, t, optimizer=opt)
        kinds = [a.kind for a in mon.raised]
        assert kinds.count("sharpness_edge") == int(fires)  # re-armed only when it drops below again
        assert sum(issubclass(i.category, AlarmWarning) for i in w) == int(fires)
        np.testing.assert_allclose(mon.dataset().lambda_max.values, 3.0, rtol=1e-10)
    assert seen[0].step == 0 and seen[0].value == pytest.approx(3.0) and seen[0].threshold == pytest.approx(2 / 0.7)


def test_alarm_conditions_and_rearming():
    a = Alarms({"log_z_drift": 1.0, "entropy_collapse": 0.2})
    heads = ["l0 head 0", "l0 head 1"]
    assert a.check(0, {"attn_normalized_entropy": np.array([[0.9, 0.5]]), "heads": heads, "log_z": 0.0}) == []
    r = a.check(50, {"attn_normalized_entropy": np.array([[0.1, 0.5]]), "heads": heads, "log_z": 1.5})
    assert sorted((x.kind, x.where) for x in r) == [("entropy_collapse", "l0 head 0"), ("log_z_drift", "output")]
    assert a.check(100, {"attn_normalized_entropy": np.array([[0.1, 0.5]]), "heads": heads}) == []  # still on
    a.check(150, {"attn_normalized_entropy": np.array([[0.5, 0.5]]), "heads": heads})  # re-armed
    assert [x.kind for x in a.check(200, {"attn_normalized_entropy": np.array([[0.1, 0.5]]), "heads": heads})] == [
        "entropy_collapse"
    ]
    g = Alarms()
    assert g.check(0, {"attn_max_logit": np.array([[8.0, 12.0]])}) == []
    assert [x.value for x in g.check(50, {"attn_max_logit": np.array([[8.0, 20.0]])})] == []  # 1.67x
    assert [round(x.value, 3) for x in g.check(100, {"attn_max_logit": np.array([[30.0, 1.0]])})] == [2.5]
    assert [x.kind for x in g.check(101, {"loss": math.nan})] == ["nonfinite"]
    with pytest.raises(ValueError, match="alarms: unknown alarm 'entropy'"):
        Alarms({"entropy": 0.1})
    with pytest.raises(ValueError, match="alarms: 'log_z_drift' must be a positive number"):
        Alarms({"log_z_drift": -1})


def test_attention_statistics_and_entropy_collapse_alarm_on_a_transformer():
    model, xs, mask = hostile_transformer()
    model.encoder.layers[0].requires_grad_(True)
    x = xs.double()
    model = model.double()
    mon = Monitor(None, probe_data=(x, torch.zeros(3)), probes=("attention", "logits"), schedule=every(1),
                  alarms={"entropy_collapse": 0.99}, forward_kwargs={"src_key_padding_mask": mask})  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AlarmWarning)
        mon.step(model, 0)
    row = mon.dataset().sel(step=0)
    ref = wb.attention.attention_stats(model, x, src_key_padding_mask=mask, progress=False)
    np.testing.assert_allclose(row.attn_entropy.values, ref.entropy.values, rtol=1e-12)
    assert row.attn_entropy.dims == ("attn_layer", "head")
    below = int((ref.normalized_entropy.values < 0.99).sum())
    assert below > 0 and [a.kind for a in mon.raised].count("entropy_collapse") == below


def test_attention_is_dropped_only_for_a_model_without_attention():
    x, y = _data()
    mlp = Monitor(None, F.cross_entropy, (x, y), schedule=every(1))
    assert "attention" in mlp.probes
    mlp.step(_mlp(), 0)
    assert "attention" not in mlp.probes and "log_z" in mlp.dataset()  # an MLP: the default probe is dropped
    model, xs, mask = hostile_transformer()
    only = {"attention": every(1), "logits": never(), "trajectory": never(), "sharpness": never()}
    bad = Monitor(None, lambda out, t: out.pow(2).mean(), (xs, torch.zeros(3)), schedule=only,
                  forward_kwargs={"src_key_padding_mask": mask[:, :3]})  # fmt: skip
    with pytest.raises((ValueError, RuntimeError)):  # a mask of the wrong shape: the user's error surfaces
        bad.step(model, 0)
    assert "attention" in bad.probes  # and the attention probe is not silently dropped


def test_store_survives_sigkill_and_resumes(tmp_path):
    store = tmp_path / "run"
    script = textwrap.dedent(f"""
        import sys, time, torch
        from workbench.monitor import Monitor, every
        torch.manual_seed(0)
        m = torch.nn.Linear(3, 2)
        x, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        mon = Monitor({str(store)!r}, torch.nn.functional.cross_entropy, (x, y), schedule=every(1), flush_every=7)
        for t in range(100000):
            opt.zero_grad(); loss = torch.nn.functional.cross_entropy(m(x), y); loss.backward(); opt.step()
            mon.step(m, t, loss=loss, optimizer=opt)
            print(t, flush=True)
            time.sleep(0.01)
    """)
    env = dict(os.environ, WORKBENCH_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    last, deadline = -1, time.time() + 120
    while last < 30 and time.time() < deadline:
        last = int(proc.stdout.readline())
    proc.send_signal(signal.SIGKILL)  # mid-run: between or during writes of the journal and the segments
    proc.wait()
    ds = wb.load(store)  # the segments and the journal's whole lines
    steps = ds.step.values.tolist()
    assert steps[: last + 1] == list(range(last + 1)) and len(steps) <= last + 2
    assert np.isfinite(ds.loss.values).all() and np.isfinite(ds.lambda_max.values).all()
    # resume from step 20 (an earlier checkpoint): appended, the latest value of a repeated step kept
    s = StepStore(store)
    import xarray as xr

    s.log(xr.Dataset({"loss": ((), -1.0)}, coords={"step": 20}))
    s.close()
    ds2 = wb.load(store)
    assert ds2.step.values.tolist() == steps and ds2.loss.sel(step=20).item() == -1.0
    assert ds2.attrs["resumed"] == 1 and ds2.attrs["probe"] == "monitor.Monitor"
    z = to_zarr(store, tmp_path / "run.zarr")
    assert float(xr.open_dataset(z, engine="zarr").loss.sel(step=20)) == -1.0


def test_store_refuses_foreign_folders(tmp_path):
    (tmp_path / "x.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a workbench store"):
        StepStore(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a workbench store"):
        read_store(tmp_path)


def test_schedules():
    assert [t for t in range(12) if t in every(4, start=2)] == [2, 6, 10]
    assert [t for t in range(40) if t in log_spaced(per_decade=3)] == [0, 1, 2, 5, 10, 22]
    assert [t for t in range(9) if t in at([3, 7]) | every(5)] == [0, 3, 5, 7]
    assert not any(t in never() for t in range(100))
    with pytest.raises(ValueError, match="n: expected an integer >= 1"):
        every(0)


def test_bad_arguments_are_named():
    x, y = _data()
    with pytest.raises(ValueError, match="probes: unknown"):
        Monitor(None, F.cross_entropy, (x, y), probes=("loss", "hessian"))
    with pytest.raises(ValueError, match="probe_data: the probes"):
        Monitor(None, probes=("sharpness",))
    with pytest.raises(ValueError, match="schedule: entries"):
        Monitor(None, F.cross_entropy, (x, y), schedule={"loss": 3})
    mon = Monitor(None, F.cross_entropy, (x, y))
    with pytest.raises(ValueError, match="step: expected the training step"):
        mon.step(_mlp(), -1)
    with pytest.raises(TypeError, match="model: expected a torch.nn.Module"):
        mon.step("model", 0)


def test_lightning_callback_runs_in_a_real_trainer(tmp_path):
    L = pytest.importorskip("lightning.pytorch")
    x, y = _data(32)
    x = x.float()

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, i):
            return F.cross_entropy(self(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    mon = Monitor(tmp_path / "pl", F.cross_entropy, (x, y), schedule=every(2))
    cb = wb.monitor.lightning_callback(mon)
    trainer = L.Trainer(max_steps=8, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[cb], accelerator="cpu")  # fmt: skip
    trainer.fit(Module(), loader)
    ds = wb.load(tmp_path / "pl")
    assert ds.step.values.tolist() == [2, 4, 6, 8] and np.isfinite(ds.loss.values).all()
    assert np.isfinite(ds.update_ratio.values).all() and ds.lr.values.tolist() == [0.1] * 4


def test_hf_trainer_callback_runs_a_real_bert(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=16, num_labels=2)  # fmt: skip
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(cfg)
    ids = torch.randint(1, 50, (16, 8))
    labels = torch.randint(0, 2, (16,))
    ds_train = [{"input_ids": i, "attention_mask": torch.ones(8, dtype=torch.long), "labels": lab}
                for i, lab in zip(ids, labels)]  # fmt: skip
    probe = {"input_ids": ids[:4], "attention_mask": torch.ones(4, 8, dtype=torch.long), "labels": labels[:4]}
    mon = Monitor(tmp_path / "hf", "classification", probe, schedule=every(2))  # a task: HF outputs -> logits
    args = transformers.TrainingArguments(str(tmp_path / "out"), max_steps=4, per_device_train_batch_size=4,
                                          logging_steps=2, report_to=[], save_strategy="no", use_cpu=True)  # fmt: skip
    trainer = transformers.Trainer(model=model, args=args, train_dataset=ds_train,
                                   callbacks=[wb.monitor.hf_callback(mon)])  # fmt: skip
    trainer.train()
    ds = wb.load(tmp_path / "hf")
    assert ds.step.values.tolist() == [2, 4]
    assert ds.attn_entropy.sizes == {"step": 2, "attn_layer": 2, "head": 2}
    assert np.isfinite(ds.loss.values).all() and np.isfinite(ds.lambda_max.values).all()
    assert ds.preconditioned.values.tolist() == [1.0, 1.0]  # the Trainer's AdamW (inside accelerate's wrapper)
    # the linear schedule's lr (5e-5 decayed over 4 steps) and Adam's edge 38 / lr; at lr 0 nothing is unstable
    assert ds.lr.values.tolist() == pytest.approx([2.5e-5, 0.0])
    assert ds.edge.values[0] == pytest.approx(38 / 2.5e-5) and ds.edge.values[1] == np.inf


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_the_monitor_matches_the_cpu_and_leaves_the_cuda_rng_alone():
    x, y = _data()
    rows = []
    for dev in ("cpu", "cuda"):  # no dropout: the same trajectory on both devices
        m = _mlp().to(dev)
        mon = Monitor(None, F.cross_entropy, (x.to(dev), y.to(dev)), schedule=every(2), n_iter=75)
        _train(m, x.to(dev), y.to(dev), 5, mon, momentum=0.9)
        rows.append(mon.dataset())
    for k in ("lambda_max", "log_z", "dist_init", "traj_kl"):
        np.testing.assert_allclose(rows[1][k].values, rows[0][k].values, rtol=1e-6, atol=1e-9)
    finals = []
    for monitored in (False, True):  # CUDA dropout draws from the CUDA generator: the monitor must not shift it
        torch.manual_seed(5)
        m = _mlp(dropout=0.3).cuda()
        mon = Monitor(None, F.cross_entropy, (x.cuda(), y.cuda()), schedule=every(2)) if monitored else None
        _train(m, x.cuda(), y.cuda(), 5, mon, momentum=0.9)
        finals.append([p.detach().clone() for p in m.parameters()] + [torch.cuda.get_rng_state()])
    assert all(torch.equal(a.cpu(), b.cpu()) for a, b in zip(*finals))
