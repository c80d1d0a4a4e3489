"""Benchmark: the cost of watching a run. Training time with and without a ``workbench.monitor.Monitor`` at its
default schedule (``DEFAULT_SCHEDULE``: loss every 10 steps, norms, distance, attention, logits and
trajectory every 100, lambda_max at steps 1, 10, 100 and every 1000), writing to a store on disk, on

  * the reproductions' tiny causal transformer (TinyLM, width 32, 2 layers x 4 heads, Adam, batch 64 x 16 tokens);
  * the digits MLP (workbench.zoo.models.MLP, 64-64-64-10, SGD, minibatch 64).

The two variants run interleaved (so machine load hits both alike), median over rounds, one torch thread.
Overhead = (time with monitor - time without) / time without; target <= 5 %.
Run: .venv/bin/python benchmarks/monitor.py [--steps N] [--rounds R] [--breakdown] [--schedule light]
"""

import argparse
import statistics
import tempfile
import time
import warnings

import torch

import workbench as wb
from workbench.monitor import PROBES, AlarmWarning, Monitor, every
from workbench.monitor.reproduce_gd import mse_onehot
from workbench.monitor.reproduce_models import TinyLM, lm_loss, topic_sequences
from workbench.zoo.datasets import digits
from workbench.zoo.models import MLP


def transformer():
    x, y = topic_sequences(4096, seed=1)
    probe = topic_sequences(32, seed=99)
    torch.manual_seed(0)
    model = TinyLM(d=32, heads=4, depth=2)
    return model, torch.optim.Adam(model.parameters(), lr=1e-3), lm_loss, (x, y), probe


def mlp():
    x, y = digits("train")
    torch.manual_seed(0)
    model = MLP(width=64)
    return model, torch.optim.SGD(model.parameters(), lr=0.05), mse_onehot, (x, y), (x[:256], y[:256])


#: a lighter schedule for comparison (``--schedule light``): every statistic 10x sparser than the default
LIGHT = {
    "loss": every(100),
    "norms": every(1000),
    "distance": every(1000),
    "attention": every(1000),
    "logits": every(1000),
    "trajectory": every(1000),
    "sharpness": every(10000),
}
SCHEDULE = None


def train(setup, steps, monitored, probes=None):
    model, opt, loss_fn, (x, y), probe = setup()
    g = torch.Generator().manual_seed(0)
    path = tempfile.mkdtemp() + "/bench.wbmon"
    mon = Monitor(path, loss_fn, probe, probes=probes, schedule=SCHEDULE) if monitored else None
    t0 = time.perf_counter()
    for step in range(steps):
        idx = torch.randint(len(x), (64,), generator=g)
        loss = loss_fn(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if mon is not None:
            mon.step(model, step, loss=loss, optimizer=opt)
    if mon is not None:
        mon.close()
    return time.perf_counter() - t0, (mon.seconds if mon is not None else 0.0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--schedule", choices=("default", "light"), default="default")
    ap.add_argument("--breakdown", action="store_true", help="also the seconds in the monitor of each probe alone")
    args = ap.parse_args()
    global SCHEDULE
    SCHEDULE = LIGHT if args.schedule == "light" else None
    wb.set_threads(1)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", AlarmWarning)
    print(f"{args.steps} training steps, {args.rounds} interleaved rounds, 1 thread, {args.schedule} schedule")
    print(f"{'model':<12} {'plain s':>9} {'monitored s':>12} {'in monitor s':>13} {'overhead':>9}")
    for name, setup in (("transformer", transformer), ("digits MLP", mlp)):
        train(setup, 20, True)  # warm-up: lazy imports, first allocations
        plain, watched, inside = [], [], []
        for _ in range(args.rounds):
            plain.append(train(setup, args.steps, False)[0])
            t, s = train(setup, args.steps, True)
            watched.append(t)
            inside.append(s)
        p, w, s = statistics.median(plain), statistics.median(watched), statistics.median(inside)
        flag = "" if (w - p) / p <= 0.05 else "  (above the 5 % target)"
        print(f"{name:<12} {p:9.2f} {w:12.2f} {s:13.2f} {100 * (w - p) / p:8.1f}%{flag}")
        if args.breakdown:
            alone = {}
            for probe in PROBES:
                if not (probe == "attention" and setup is mlp):  # the MLP has no attention
                    alone[probe] = train(setup, args.steps, True, probes=(probe,))[1]
            print("   seconds in the monitor, each probe alone at its default schedule (% of plain training): "
                  + ", ".join(f"{k} {v:.2f} ({100 * v / p:.0f}%)" for k, v in alone.items()))  # fmt: skip


if __name__ == "__main__":
    main()
