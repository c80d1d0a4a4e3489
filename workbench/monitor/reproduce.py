"""Reproductions of the training-instability findings that the monitor is for, at a size that runs on a laptop.

* :func:`attention_instability` (Zhai et al. 2023; Wortsman et al. 2023): a tiny causal transformer trained
  with Adam at a stable and an unstable learning rate; in the unstable run the attention logits grow and the
  attention entropy collapses *before* the loss spikes; qk-LayerNorm or sigmaReparam at the same learning rate
  prevents both. Per-step statistics come from a :class:`~workbench.monitor.Monitor` attached to each run.
* :func:`edge_of_stability` and :func:`width_sharpness` (:mod:`.reproduce_gd`).
* :func:`train_demo` (:mod:`.reproduce_runs`): one monitored run of the tiny transformer into a store, for the
  dashboard and the monitor report.
* :func:`lr_sensitivity` (Wortsman et al. 2023's small-scale proxies): final loss against learning rate for
  three widths, with and without qk-LayerNorm or z-loss; the LR sensitivity is the mean excess of the final
  loss over the best one across the learning-rate range (each loss capped at the loss at initialisation).

Each takes a ``preset`` (``"tiny"``: seconds, for tests; ``"default"``: minutes on two cores, for the report
and the CLI) whose entries keyword arguments override, and returns an ``xarray.Dataset`` with a ``seed``
dimension (the seed spread) and, where the claim is an ordering, the event steps it orders.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import xarray as xr
from numpy.typing import ArrayLike

from ..config import threads
from ..results import provenance
from ..validate import positive
from .reproduce_gd import edge_of_stability, mse_onehot, width_sharpness
from .reproduce_models import TinyLM, lm_loss, topic_sequences, z_loss
from .reproduce_runs import first_alarm, monitored_run, preset_config, seeded, train_demo

__all__ = [
    "attention_instability",
    "edge_of_stability",
    "width_sharpness",
    "lr_sensitivity",
    "spike_step",
    "collapse_step",
    "growth_step",
    "first_step",
    "mse_onehot",
    "train_demo",
]

PRESETS = {
    "attention_instability": {
        "tiny": dict(steps=90, every=5, seeds=(0, 1), stable_lr=3e-3, unstable_lr=0.3, warmup=50, d=32),
        "default": dict(steps=300, every=5, seeds=(0, 1, 2), stable_lr=3e-3, unstable_lr=0.3, warmup=50, d=32),
    },
    "lr_sensitivity": {
        "tiny": dict(steps=40, widths=(8, 16, 32), lrs=(3e-3, 3e-2, 0.3), seeds=(0,), warmup=10, batch=32),
        "default": dict(
            steps=200, widths=(8, 16, 32), lrs=(1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3), seeds=(0, 1), warmup=20, batch=32
        ),
    },
}

#: normalised attention entropy below which a run counts as collapsed (mean over layers and heads)
COLLAPSE = 0.2
#: rise of the probe loss above its running minimum (nats) that counts as a spike
SPIKE = 0.1
#: growth of the largest attention logit over its first value that counts as logit growth
LOGIT_GROWTH = 30.0


def first_step(steps: ArrayLike, condition: ArrayLike) -> float:
    """The first entry of ``steps`` where ``condition`` holds, NaN if it never does.

    >>> first_step([0, 5, 10], [False, True, True]), first_step([0, 5], [False, False])
    (5.0, nan)
    """
    c = np.asarray(condition, dtype=bool)
    return float(np.asarray(steps)[np.argmax(c)]) if c.any() else float("nan")


def spike_step(steps: ArrayLike, loss: ArrayLike, margin: float = SPIKE) -> float:
    """The first step at which ``loss`` exceeds its running minimum by more than ``margin`` (a loss spike),
    NaN if it never does (non-finite losses count as spikes).

    >>> spike_step([0, 1, 2, 3], [2.0, 1.0, 1.05, 1.4])
    3.0
    """
    loss = np.asarray(loss, float)
    if loss.ndim != 1 or loss.size == 0:
        raise ValueError(f"loss: expected a 1-D array of losses, one per step, got shape {loss.shape}")
    margin = positive("margin", margin)
    run_min = np.minimum.accumulate(np.where(np.isfinite(loss), loss, np.inf))
    return first_step(steps, ~(loss <= run_min + margin))


def collapse_step(steps: ArrayLike, entropy: ArrayLike, threshold: float = COLLAPSE) -> float:
    """The first step at which the (normalised) attention ``entropy`` falls below ``threshold``, NaN if never.

    >>> collapse_step([0, 10, 20], [0.9, 0.5, 0.1])
    20.0
    """
    return first_step(steps, np.asarray(entropy, float) < positive("threshold", threshold))


def growth_step(steps: ArrayLike, max_logit: ArrayLike, factor: float = LOGIT_GROWTH) -> float:
    """The first step at which ``max_logit`` exceeds ``factor`` times its first value, NaN if never.

    >>> growth_step([0, 10, 20], [1.0, 20.0, 40.0])
    20.0
    """
    v = np.asarray(max_logit, float)
    return first_step(steps, v > positive("factor", factor) * abs(v[0]))


def _lm_run(cfg, seed, lr, *, qk_norm=False, sigma_reparam=False, z_weight=0.0, every=None, store=None):
    """Train one TinyLM with Adam (linear warm-up) on the topic task: the monitored trace when ``every`` is
    given, else ``(initial probe loss, final probe loss)``."""
    x, y = topic_sequences(cfg.get("n_train", 2048), length=cfg.get("length", 16), seed=1000 + seed)
    xp, yp = topic_sequences(cfg.get("n_probe", 128), length=cfg.get("length", 16), seed=99)
    with seeded(seed):
        model = TinyLM(d=cfg["d"], heads=cfg.get("heads", 4), depth=cfg.get("depth", 2), qk_norm=qk_norm,
                       sigma_reparam=sigma_reparam, length=cfg.get("length", 16))  # fmt: skip
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    warm = cfg["warmup"]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
    g = torch.Generator().manual_seed(seed)
    batch = cfg.get("batch", 64)

    def step_fn(step):
        idx = torch.randint(len(x), (batch,), generator=g)
        logits = model(x[idx])
        loss = lm_loss(logits, y[idx])
        total = loss + z_weight * z_loss(logits) if z_weight else loss
        opt.zero_grad()
        total.backward()
        opt.step()
        sched.step()
        return loss

    def probe_loss(m):
        with torch.no_grad():
            return float(lm_loss(m(xp), yp))

    if every is None:
        with torch.no_grad():
            l0 = probe_loss(model)
        for s in range(cfg["steps"]):
            step_fn(s)
        return l0, probe_loss(model)
    n_attn = cfg.get("n_attention", 32)  # the monitor's probe batch; the probe loss uses all n_probe sequences
    r = monitored_run(model, opt, step_fn, cfg["steps"], every, lm_loss, (xp[:n_attn], yp[:n_attn]),
                      ("loss", "attention", "logits"),
                      extra=lambda m: {"probe_loss": probe_loss(m)}, store=store)  # fmt: skip
    ds = r["monitor"]
    r["entropy"] = ds.attn_normalized_entropy.mean(("attn_layer", "head")).values
    r["max_logit"] = ds.attn_max_logit.max(("attn_layer", "head")).values
    r["log_z"] = ds.log_z.values
    return r


def attention_instability(preset: str = "tiny", *, store_dir: str | Path | None = None, **overrides) -> xr.Dataset:
    """Entropy collapse and attention-logit growth before the loss spike (Zhai et al. 2023, Wortsman et al. 2023).

    A :class:`TinyLM` (2 pre-LN layers, 4 heads, width ``d``) learns the topic task of
    :func:`~workbench.monitor.reproduce_models.topic_sequences` (whose Bayes-optimal attention is diffuse) with
    Adam after a linear warm-up, four ways: ``stable`` (``stable_lr``), ``unstable`` (``unstable_lr``),
    ``qk-layernorm`` and ``sigma-reparam`` (``unstable_lr`` with the fix). A monitor records, every ``every``
    steps on a fixed probe batch, the probe loss, the attention entropy normalised by ``ln`` of the number of
    keys (mean over layers and heads) and the largest attention logit. Event steps per run and seed:
    ``collapse_step`` (mean normalised entropy < :data:`COLLAPSE`), ``growth_step`` (max logit >
    :data:`LOGIT_GROWTH` x its first value) and ``spike_step`` (probe loss > running minimum + :data:`SPIKE`
    nats); NaN where the event never happens. The claim: in ``unstable``, growth <= collapse < spike; in the
    other three runs none of them happens. ``store_dir``: keep each run's monitor store there.

    The monitor's own alarms are kept too: ``collapse_alarm_step`` (first ``entropy_collapse`` alarm: some head's
    normalised entropy < 0.1) and ``growth_alarm_step`` (first ``logit_growth`` alarm).

    Returns a Dataset over (run, seed, step): ``loss`` (probe loss), ``entropy``, ``max_logit``, ``log_z``; over
    (run, seed) the event and alarm steps; ``lr`` over run.

    >>> ds = attention_instability("tiny", steps=10, every=5, seeds=(0,), n_train=64)
    >>> dict(ds.entropy.sizes), ds.run.values.tolist()
    ({'run': 4, 'seed': 1, 'step': 3}, ['stable', 'unstable', 'qk-layernorm', 'sigma-reparam'])
    """
    cfg = preset_config(PRESETS["attention_instability"], preset, overrides)
    runs = {
        "stable": dict(lr=cfg["stable_lr"]),
        "unstable": dict(lr=cfg["unstable_lr"]),
        "qk-layernorm": dict(lr=cfg["unstable_lr"], qk_norm=True),
        "sigma-reparam": dict(lr=cfg["unstable_lr"], sigma_reparam=True),
    }
    traces = {}
    with threads():
        for name, kw in runs.items():
            for seed in cfg["seeds"]:
                extra = {k: v for k, v in kw.items() if k != "lr"}
                store = None if store_dir is None else f"{store_dir}/{name}-s{seed}.wbmon"
                traces[name, seed] = _lm_run(cfg, seed, kw["lr"], every=cfg["every"], store=store, **extra)
    steps = traces["stable", cfg["seeds"][0]]["step"]
    names, seeds = list(runs), list(cfg["seeds"])

    def stack(var):
        return np.array([[traces[r, s][var] for s in seeds] for r in names])

    ds = xr.Dataset(
        {
            "loss": (("run", "seed", "step"), stack("probe_loss"), {"long_name": "probe loss", "units": "nats"}),
            "log_z": (("run", "seed", "step"), stack("log_z"), {"long_name": "mean output log Z", "units": "nats"}),
            "entropy": (("run", "seed", "step"), stack("entropy"), {"long_name": "normalised attention entropy"}),
            "max_logit": (("run", "seed", "step"), stack("max_logit"), {"long_name": "largest attention logit"}),
        },
        coords={"run": names, "seed": seeds, "step": steps, "lr": ("run", [runs[r]["lr"] for r in names])},
    )
    ds["collapse_step"] = xr.apply_ufunc(
        lambda e: collapse_step(steps, e), ds.entropy, input_core_dims=[["step"]], vectorize=True
    )
    ds["growth_step"] = xr.apply_ufunc(
        lambda v: growth_step(steps, v), ds.max_logit, input_core_dims=[["step"]], vectorize=True
    )
    ds["spike_step"] = xr.apply_ufunc(
        lambda v: spike_step(steps, v), ds.loss, input_core_dims=[["step"]], vectorize=True
    )
    for kind, var in (("entropy_collapse", "collapse_alarm_step"), ("logit_growth", "growth_alarm_step")):
        alarm = [[first_alarm(traces[r, s]["alarms"], kind) for s in seeds] for r in names]
        ds[var] = (("run", "seed"), np.array(alarm), {"long_name": f"first monitor alarm {kind}"})
    ds.attrs.update(provenance("monitor.attention_instability", dict(cfg, preset=preset)))
    return ds


def lr_sensitivity(preset: str = "tiny", **overrides) -> xr.Dataset:
    """Final loss against learning rate for several widths, standard vs qk-LayerNorm vs z-loss (Wortsman et al.
    2023, "Small-scale proxies for large-scale Transformer training instabilities").

    Each (variant, width, lr, seed) trains a :class:`TinyLM` of width ``d = width`` for ``steps`` Adam steps
    (linear warm-up) on the topic task; ``z-loss`` adds ``1e-4 mean(log Z^2)`` to the loss. The LR sensitivity
    of a (variant, width) is ``mean_lr [min(L(lr), L0) - min_lr L(lr)]`` with ``L0`` the loss at initialisation
    (Wortsman et al., eq. 1). The claim: qk-LayerNorm lowers the sensitivity at every width.

    Returns a Dataset with ``final_loss`` over (variant, width, lr, seed), ``initial_loss`` over (variant,
    width, seed) and ``sensitivity`` over (variant, width, seed).

    >>> ds = lr_sensitivity("tiny", steps=5, widths=(8,), lrs=(1e-2, 0.1))
    >>> dict(ds.final_loss.sizes)
    {'variant': 3, 'width': 1, 'lr': 2, 'seed': 1}
    """
    cfg = preset_config(PRESETS["lr_sensitivity"], preset, overrides)
    variants = {"standard": {}, "qk-layernorm": dict(qk_norm=True), "z-loss": dict(z_weight=1e-4)}
    widths, lrs, seeds = list(cfg["widths"]), [float(v) for v in cfg["lrs"]], list(cfg["seeds"])
    final = np.zeros((len(variants), len(widths), len(lrs), len(seeds)))
    init = np.zeros((len(variants), len(widths), len(seeds)))
    with threads():
        for i, kw in enumerate(variants.values()):
            for j, w in enumerate(widths):
                for k, lr in enumerate(lrs):
                    for s, seed in enumerate(seeds):
                        c = dict(cfg, d=w, heads=max(1, min(4, w // 8)))
                        init[i, j, s], final[i, j, k, s] = _lm_run(c, seed, lr, **kw)
    final = np.where(np.isfinite(final), final, np.inf)
    capped = np.minimum(final, init[:, :, None, :])
    sens = (capped - capped.min(axis=2, keepdims=True)).mean(axis=2)
    coords = {"variant": list(variants), "width": widths, "lr": lrs, "seed": seeds}
    return xr.Dataset(
        {
            "final_loss": (
                ("variant", "width", "lr", "seed"),
                final,
                {"long_name": "final probe loss", "units": "nats"},
            ),
            "initial_loss": (("variant", "width", "seed"), init, {"units": "nats"}),
            "sensitivity": (("variant", "width", "seed"), sens, {"long_name": "LR sensitivity", "units": "nats"}),
        },
        coords=coords,
        attrs=provenance("monitor.lr_sensitivity", dict(cfg, preset=preset)),
    )
