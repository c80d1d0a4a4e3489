"""Benchmark: attention entropy on MiniLM (all-MiniLM-L6-v2, 6 x 12 heads) at 16 sentences and at
8 x 512 tokens: wall time and peak memory of

  * a plain forward pass (sdpa, the model's default);
  * workbench.attention.entropy (sdpa intercepted, streaming reduction, nothing kept);
  * eager attention with output_attentions=True (the usual way), then the entropy from the returned tensors.

Time: the three modes interleaved in one process, median over rounds. Memory: each mode in fresh
processes (median of three); peak memory is the rise of the peak resident set size over the process's
resident memory just before the call (model and inputs loaded, each mode warmed up once on a
one-sentence input so that lazy imports do not count; the kernel's peak mark is reset first).
Targets: entropy <= 1.3x the plain forward's time and <= 1.5x its peak memory.
Run: .venv/bin/python benchmarks/attention.py
"""

import json
import os
import random
import statistics
import subprocess
import sys
import time

MEMORY_RUNS = 3


def setup(size, eager=False):
    import torch

    torch.set_num_threads(int(os.environ.get("WORKBENCH_THREADS", "1")))
    os.environ["HF_HUB_OFFLINE"] = "1"
    import workbench as wb
    from workbench import zoo

    wb.set_threads(torch.get_num_threads())
    model, tok = zoo.minilm()
    base = [
        "The cat sat on the mat while the dog slept by the fire.",
        "Stock markets fell sharply on Monday morning.",
        "Neural networks learn representations from data.",
        "The river flooded the low fields near the village.",
    ]
    if size == "short":
        texts = [base[i % 4] + f" Example {i}." for i in range(16)]
        enc = dict(tok(texts, padding=True, return_tensors="pt"))
    else:
        texts = [" ".join(base[(i + j) % 4] for j in range(60)) for i in range(8)]
        enc = dict(tok(texts, padding="max_length", truncation=True, max_length=512, return_tensors="pt"))
    eager_model = None
    if eager:
        eager_model, _ = zoo.minilm()
        eager_model.set_attn_implementation("eager")
    return model, eager_model, enc


def runner(mode, model, eager_model, enc):
    import torch

    from workbench import attention as A

    def run():
        with torch.no_grad():
            if mode == "plain":
                model(**enc)
            elif mode == "workbench":
                A.entropy(model, enc)
            else:
                out = eager_model(**enc, output_attentions=True)
                am = enc["attention_mask"].bool()
                ents = []
                for w in out.attentions:
                    H = -(torch.special.xlogy(w, w)).sum(-1)
                    ents.append(torch.stack([H[:, h][am].mean() for h in range(w.shape[1])]))
                return torch.stack(ents)

    return run


def _status_mb(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def current_rss_mb():
    return _status_mb("VmRSS")


def reset_peak():
    """Reset the kernel's peak-RSS mark (VmHWM) so that model loading does not mask the call's peak."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def child_memory(mode, size):
    """Peak resident memory of one call over the process's resident memory just before it (model and
    inputs loaded, nothing run yet): the call's own working memory."""
    import gc

    model, eager_model, enc = setup(size, eager=mode == "eager")
    # one-time costs (lazy imports, first-use allocations) are paid on a one-sentence input first, in every mode
    tiny = {k: v[:1, :8] for k, v in enc.items()}
    runner(mode, model, eager_model, tiny)()
    gc.collect()
    reset_peak()
    before = current_rss_mb()
    runner(mode, model, eager_model, enc)()
    print(json.dumps({"peak_rise_mb": _status_mb("VmHWM") - before, "peak_mb": _status_mb("VmHWM")}))


def timings(size, rounds):
    model, eager_model, enc = setup(size, eager=True)
    fns = {m: runner(m, model, eager_model, enc) for m in ("plain", "workbench", "eager")}
    for f in fns.values():
        f()
    times = {m: [] for m in fns}
    order = list(fns)
    rng = random.Random(0)
    for _ in range(rounds):  # interleaved, so machine load hits all modes alike; shuffled, so that no mode
        rng.shuffle(order)  # always runs just after eager's large allocations are freed
        for m in order:
            t0 = time.perf_counter()
            fns[m]()
            times[m].append(time.perf_counter() - t0)
    return {m: statistics.median(v) for m, v in times.items()}, int(enc["attention_mask"].sum())


def main():
    for size, label, rounds in (("short", "16 sentences", 21), ("long", "8 x 512 tokens", 9)):
        t, tokens = timings(size, rounds)
        mem = {}
        for mode in ("plain", "workbench", "eager"):
            rises = []
            for _ in range(MEMORY_RUNS):  # a rise of ~10 MiB moves by MiBs between processes: median of fresh ones
                out = subprocess.run(
                    [sys.executable, __file__, "--child", mode, size],
                    capture_output=True,
                    text=True,
                    env=dict(os.environ, TQDM_DISABLE="1"),
                )
                if out.returncode:
                    print(out.stderr[-2000:])
                    raise SystemExit(1)
                rises.append(json.loads(out.stdout.strip().splitlines()[-1])["peak_rise_mb"])
            mem[mode] = statistics.median(rises)
        print(
            f"MiniLM, {label} ({tokens} real tokens), {os.environ.get('WORKBENCH_THREADS', '1')} thread(s), "
            f"time: median of {rounds} interleaved rounds, memory: median of {MEMORY_RUNS} fresh processes:"
        )
        for mode, name in (
            ("plain", "plain forward (sdpa)"),
            ("workbench", "workbench entropy (sdpa captured)"),
            ("eager", "eager + output_attentions"),
        ):
            print(f"  {name:36s} {t[mode]:7.3f} s ({t[mode] / t['plain']:.2f}x)   peak +{mem[mode]:7.1f} MiB")
        print(
            f"  workbench / plain: time {t['workbench'] / t['plain']:.2f}x (target <= 1.3), peak memory of the call "
            f"{mem['workbench'] / max(mem['plain'], 1e-9):.2f}x (target <= 1.5)"
        )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_memory(sys.argv[2], sys.argv[3])
    else:
        main()
