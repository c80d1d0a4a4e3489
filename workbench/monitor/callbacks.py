"""The monitor inside trainers: a PyTorch Lightning ``Callback`` and a Hugging Face ``TrainerCallback``.

Both wrap a :class:`~workbench.monitor.Monitor` and call it after every optimizer step with the trainer's
global step, the training loss where the trainer exposes it, and the optimizer; ``before_step`` runs
before the optimizer step (exact per-step update ratios); the store is flushed when training ends.
Lightning and transformers are imported when a callback is made, never by ``import workbench``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["lightning_callback", "hf_callback"]


def lightning_callback(monitor: Any) -> Any:
    """A ``lightning.pytorch.Callback`` (or ``pytorch_lightning``'s) driving ``monitor``."""
    try:
        from lightning.pytorch import Callback
    except ImportError:  # the older package name
        from pytorch_lightning import Callback

    class LightningMonitor(Callback):
        def __init__(self):
            self.monitor = monitor

        def on_train_start(self, trainer, pl_module):
            monitor.start(pl_module)

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            monitor.before_step(pl_module, trainer.global_step + 1)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
            opt = trainer.optimizers[0] if trainer.optimizers else None
            monitor.step(pl_module, trainer.global_step, loss=loss, optimizer=opt)

        def on_train_end(self, trainer, pl_module):
            monitor.close()

    return LightningMonitor()


def hf_callback(monitor: Any) -> Any:
    """A ``transformers.TrainerCallback`` driving ``monitor``. The Trainer hands no step's loss to callbacks: the
    ``loss`` recorded is the one it logs (the mean since the previous log, every ``logging_steps``);
    ``probe_loss`` is the loss on the probe batch at each monitored step."""
    from transformers import TrainerCallback

    class HFMonitor(TrainerCallback):
        def __init__(self):
            self.monitor = monitor

        def on_train_begin(self, args, state, control, model=None, **kw):
            if model is not None:
                monitor.start(model)

        def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
            if model is not None:
                monitor.before_step(model, state.global_step + 1)

        def on_step_end(self, args, state, control, model=None, optimizer=None, **kw):
            monitor.step(model, state.global_step, optimizer=optimizer)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:  # the mean training loss since the last log, known after on_step_end
                monitor.record(state.global_step, loss=logs["loss"])

        def on_train_end(self, args, state, control, **kw):
            monitor.close()

    return HFMonitor()
